"""Each account's standing against its quotas, and warnings about the quotas themselves,
for `gshare usage`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from policies.quota import ANY, Quotas, type_matches
from policies.quotabook import QuotaBook

if TYPE_CHECKING:
    from policies.snapshot import ClusterSnapshot, PendingJob


@dataclass(frozen=True, slots=True)
class AccountStanding:
    """One account's quota standing, for `gshare usage`."""

    account: str
    guaranteed: Mapping[str, int]
    limit: Mapping[str, int]
    lend: bool
    holds: int
    borrowing: int
    borrows_from: tuple[str, ...]  # accounts whose idle guarantee it may be using
    reclaim_in_s: float  # -1: no reclaim due; 0: reclaiming now
    reclaim_from: tuple[str, ...]


def quota_report(
    snapshot: ClusterSnapshot, quotas: Quotas, min_runtime_s: float = 0.0
) -> tuple[list[AccountStanding], list[str]]:
    """Each account's standing against its quotas, and warnings about the quotas
    (`min_runtime_s`: the policy's, before which no job is taken)."""
    book = QuotaBook(snapshot, quotas)
    book.min_runtime_s = min_runtime_s
    rows = []
    waiting: dict[str, tuple[float, str, PendingJob]] = {}  # team -> its longest waiting job
    for job in snapshot.pending:
        under = book._under(job)
        if under is not None:
            team = book.team_of(job.user)
            if team not in waiting or job.submit_time < waiting[team][0]:
                waiting[team] = (job.submit_time, under[0], job)
    teams = sorted(set(quotas.accounts) | set(book.held))
    for team in teams:
        quota = book.quota(team)
        borrowing = book.borrowing(team)
        reclaim_in = -1.0
        reclaim_from: tuple[str, ...] = ()
        if team in waiting:  # a reclaim only from borrowers it can take a job from
            _, key, job = waiting[team]
            borrowers = book._borrowers(team, key)
            if borrowers:
                reclaim_in = book._reclaim_wait(job, key, borrowers)
                reclaim_from = tuple(borrowers)
        rows.append(
            AccountStanding(
                team,
                quota.guaranteed,
                quota.limit,
                quota.lend,
                book.holds(team),
                borrowing,
                tuple(t for t in book.lenders() if t != team) if borrowing else (),
                reclaim_in,
                reclaim_from,
            )
        )
    warnings = []
    total = sum(n.gpu_count for n in snapshot.nodes)
    # an account's GPUs guaranteed in all: its any-type guarantee, or its typed ones
    # together if they are more (they are GPUs too, which no one else can then count on)
    promised = sum(
        max(q.guaranteed.get(ANY, 0), sum(n for k, n in q.guaranteed.items() if k != ANY))
        for q in quotas.accounts.values()
    )
    if promised > total:
        warnings.append(
            f"guarantees add up to {promised} GPUs, more than the {total} the registered nodes hold"
        )
    keys = sorted({k for q in quotas.accounts.values() for k in q.guaranteed if k != ANY})
    models = Counter(g.model for n in snapshot.nodes for g in n.gpus)
    for key in keys:
        have = sum(c for m, c in models.items() if type_matches(key, m))
        want = sum(q.guaranteed.get(key, 0) for q in quotas.accounts.values())
        if want > have:
            warnings.append(
                f"{key} guarantees add up to {want} GPUs, more than the {have} {key} GPUs "
                "the registered nodes hold"
            )
    return rows, warnings
