"""fairshare (the default): max-min over the GPUs held, Fair Tree between equals.

Jobs rank by priority class (--priority) first, then as a progressive filling of the
GPUs would start them, team first, then user, with the Fair Tree factor (fairtree.py)
between those who hold the same, and a team's key halving for every `aging_s` a job
waits (fairorder.py). Two jobs go to the head of their class whatever their team holds:
one whose time limit outlasts all the known work (ends_last_first) and the oldest job
across nodes that cannot start now (oldest_wide_first).
A blocked job may preempt a running one when it
has a higher priority class, or when its team is under its fair share of the GPUs, the
victim's team is over, and the claimant's team is still within its share once the job
runs. That last condition is the hysteresis that keeps two jobs from preempting each
other in a loop: for the victim's team to take the GPUs back it would have to be under
its share and the claimant's team over, and the claimant's team never is after a swap.
"""

from __future__ import annotations

import bisect
import functools
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from policies.accounts import AccountTree
from policies.engine import Knobs, decide
from policies.fairtree import FairTree, fair_tree
from policies.memo import CycleMemo
from policies.placement import FreeMap
from policies.preemption import ClaimRule
from policies.priority import (
    ParameterError,
    check_params,
    check_victim_order,
    priority_class_claim,
)
from policies.snapshot import ClusterSnapshot, PendingJob, Plan, RunningJob

_USER = operator.attrgetter("user")
_GPUS = operator.attrgetter("gpus")
_NODES = operator.attrgetter("nodes")
_LIMIT = operator.attrgetter("time_limit_s")
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
MAX_WIDE_LOOKED_AT = 16  # the oldest waiting jobs across nodes looked at each cycle
INF = float("inf")
MAX_PROMOTED = 16  # the longest jobs moved forward each cycle (few are ever that long)


@dataclass(frozen=True)
class FairShare:
    name: str = "fairshare"
    backfill: bool = True
    preemption: bool = True
    min_runtime_s: float = 600.0
    fairshare_preemption: bool = True  # False: only a higher priority class preempts
    # a victim's team must hold more than (1 + margin) x its share of the GPUs
    fairshare_margin: float = 0.25
    explain: bool = True
    # a waiting job's team key halves for every aging_s it has waited (fairorder.py)
    aging_s: float = 3 * 86400.0
    victim_order: str = "least_work_lost"  # or youngest, lowest_priority (preemption.py)
    # what it keeps from one cycle to the next (policies/memo.py); not a parameter
    memo: CycleMemo = field(default_factory=CycleMemo, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_victim_order(self.victim_order)
        aging = self.aging_s
        if isinstance(aging, int | float) and not 0 < aging < float("inf"):
            raise ParameterError("aging_s must be a positive number of seconds")
        check_params(self)
        if self.min_runtime_s < 0:
            raise ParameterError("min_runtime_s must not be negative")
        if self.fairshare_margin < 0:
            raise ParameterError("fairshare_margin must not be negative")

    def decide(self, snapshot: ClusterSnapshot) -> Plan:
        memo = self.memo
        memo.update(snapshot)
        index = memo.running
        users = set(map(_USER, snapshot.pending)) | index.held_user.keys()
        tree = snapshot.accounts.with_users(users)
        ft = fair_tree(tree, snapshot.usage)
        ranked = memo.order.order(
            snapshot.pending, index.held_user, tree, ft, snapshot.now, self.aging_s
        )
        ranked = ends_last_first(oldest_wide_first(ranked, snapshot, memo), snapshot, memo)
        context = _TeamContext(tree, ft) if self.explain else None
        claim: ClaimRule = (
            _Claims(snapshot, tree.team_of, ft, self.fairshare_margin, index.held_user)
            if self.fairshare_preemption
            else priority_class_claim
        )
        knobs = Knobs(
            self.backfill,
            self.preemption,
            self.min_runtime_s,
            explain=self.explain,
            victim_order=self.victim_order,
        )
        return decide(snapshot, ranked, knobs, claim, context, memo)


def oldest_wide_first(
    ranked: list[PendingJob], snapshot: ClusterSnapshot, memo: CycleMemo | None = None
) -> list[PendingJob]:
    """The oldest waiting job across nodes that cannot start now goes first in line, so
    that it holds the reservation (engine.py) until it starts.

    Whole nodes drain for such a job's reservation. In fair order the first blocked job
    changes as usage moves: a job ranked ahead of it takes the drained nodes, and the
    reservation moves on to drain others. Held by the oldest, it stays where it is."""
    if not snapshot.multi_node or not ranked:
        return ranked
    base = memo.nodes.free if memo is not None else None
    if base is not None:
        widest, total = base.widest(), base.total
    else:
        up = [len(n.gpus) for n in snapshot.nodes if n.schedulable]
        widest, total = max(up, default=0), sum(up)
    if max(map(_NODES, ranked)) == 1 and max(map(_GPUS, ranked)) <= widest:
        return ranked  # (most queues: no job wider than a node, found at C speed)
    wide = sorted(  # those that could ever start here
        (j for j in ranked if (j.nodes > 1 or j.gpus > widest) and j.gpus <= total),
        key=lambda j: (j.submit_time, j.job_id),
    )
    if not wide:
        return ranked
    free = FreeMap(snapshot.nodes, base)
    for job in wide[:MAX_WIDE_LOOKED_AT]:
        if free.find(job) is None:
            return _promoted(ranked, [job])
    return ranked


def ends_last_first(
    ranked: list[PendingJob], snapshot: ClusterSnapshot, memo: CycleMemo | None = None
) -> list[PendingJob]:
    """Jobs whose time limit alone is longer than the horizon (all the known work, running
    and waiting, spread over every GPU) go first in line, the longest first.

    Such a job ends after everything else whenever it starts: each hour it waits behind
    jobs of teams with less usage is an hour added to when the cluster's work is done,
    with the cluster mostly idle around it at the end. Few jobs are ever that long."""
    if not ranked:
        return ranked
    horizon = horizon_s(snapshot, memo)
    if max(map(_LIMIT, ranked)) <= horizon:
        return ranked  # (nearly always, found at C speed)
    longest = sorted(
        (j for j in ranked if j.time_limit_s > horizon), key=lambda j: (-j.time_limit_s, j.job_id)
    )
    return _promoted(ranked, longest[:MAX_PROMOTED]) if longest else ranked


def horizon_s(snapshot: ClusterSnapshot, memo: CycleMemo | None = None) -> float:
    """How long the known work (running jobs' time left, waiting jobs' time limits) would
    take spread over every schedulable GPU; jobs with no time limit count for nothing.
    `memo`: the snapshot's running jobs and nodes, indexed (the same figure, sooner)."""
    now = snapshot.now
    if memo is not None:
        gpus = memo.nodes.free.total
        parts = memo.running.by_end
    else:
        gpus = sum(len(n.gpus) for n in snapshot.nodes if n.schedulable)
        parts = sorted(
            (r.expected_end(), len(held), where, r.job_id)
            for r in snapshot.running
            for where, held in r.parts
        )
    if not gpus:
        return INF
    # the parts still to run (in order of their end), each for its time left: the sum of
    # GPUs x end less now x GPUs, summed exactly at C speed (tens of thousands of parts)
    ahead = parts[bisect.bisect_right(parts, (now, INF)) : bisect.bisect_left(parts, (INF,))]
    counts = list(map(_SECOND, ahead))
    work: float = math.fsum(map(operator.mul, counts, map(_FIRST, ahead))) - now * sum(counts)
    pending = snapshot.pending
    work += sum(map(operator.mul, map(_GPUS, pending), map(_LIMIT, pending)))
    return work / gpus


def _promoted(ranked: list[PendingJob], jobs: list[PendingJob]) -> list[PendingJob]:
    """`jobs` (the first first) moved forward in `ranked` to the head of their priority
    class: never ahead of a job of a higher class."""
    out = list(ranked)
    for job in reversed(jobs):
        at = next(i for i, j in enumerate(out) if j is job)  # `is`: no field compares
        head = at
        while head > 0 and out[head - 1].priority <= job.priority:
            head -= 1
        out.insert(head, out.pop(at))
    return out


class _TeamContext:
    """'team vision at 1.8x its share' for each waiting job, worded once per team a cycle.
    (Its place in line and in its team are not in the words: they move whenever a job
    ahead starts or leaves, and `gshare why` shows them beside the reason.)"""

    def __init__(self, tree: AccountTree, ft: FairTree) -> None:
        self.tree = tree
        self.ft = ft
        self.words: dict[str, str] = {}  # by user

    def __call__(self, job: PendingJob) -> str:
        return self.of_user(job.user)

    def of_user(self, user: str) -> str:
        """The words depend on the job's user alone (engine.py asks once per user)."""
        text = self.words.get(user)
        if text is None:
            team = self.tree.team_of(user)
            share = self.ft.ratio((team,))
            text = self.words[user] = f"team {team} at {share:.1f}x its share"
        return text


class _Claims:
    """Who may displace whom, from the GPUs each team holds against its entitlement."""

    def __init__(
        self,
        snapshot: ClusterSnapshot,
        team_of: Callable[[str], str],
        ft: FairTree,
        margin: float,
        held_user: Mapping[str, int],
    ) -> None:
        self.team_of = functools.lru_cache(maxsize=None)(team_of)  # per user, once a cycle
        self.margin = margin
        total = sum(len(n.gpus) for n in snapshot.nodes if n.schedulable) or 1
        shares = {path[0]: s.share for path, s in ft.standings.items() if len(path) == 1}
        self.entitled = {team: share * total for team, share in shares.items()}
        self.held: dict[str, float] = {}
        for user, gpus in held_user.items():
            team = self.team_of(user)
            self.held[team] = self.held.get(team, 0.0) + gpus
        # victim_key's answers depend on the configured account tree alone (a user it
        # does not name is in the default account either way): kinds of victims can be
        # kept from one cycle to the next while it is the same (engine.py)
        self.kinds_of = snapshot.accounts

    def _ratio(self, team: str, delta: float = 0.0) -> float:
        entitled = self.entitled.get(team, 0.0)
        held = self.held.get(team, 0.0) + delta
        return held / entitled if entitled > 0 else float("inf")

    def victim_key(self, victim: RunningJob) -> tuple[str, int]:
        """Victims of one team and priority class get the same answer from __call__."""
        return (self.team_of(victim.user), victim.priority)

    def could_claim(self, job: PendingJob) -> bool:
        """Whether this job could displace anyone on fair share grounds (cheap, per job)."""
        mine = self.team_of(job.user)
        return self._ratio(mine) < 1.0 and self._ratio(mine, job.gpus) <= 1.0 + 1e-9

    def __call__(self, job: PendingJob, victim: RunningJob) -> str | None:
        by_class = priority_class_claim(job, victim)
        if by_class is not None or job.priority < victim.priority:
            return by_class
        mine, theirs = self.team_of(job.user), self.team_of(victim.user)
        if mine == theirs or self._ratio(mine) >= 1.0 or self._ratio(theirs) <= 1.0 + self.margin:
            return None
        if self._ratio(mine, job.gpus) > 1.0 + 1e-9:
            return None  # the claimant's team would go over its share: that could swing back
        return (
            f"team {mine} is at {self._ratio(mine):.2f}x its share of GPUs, "
            f"team {theirs} at {self._ratio(theirs):.2f}x"
        )
