"""The claim rule quotas add to a policy's: reclaiming guarantees, and never taking a job
that runs within its account's guarantee but for a higher priority class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from policies.quotabook import QuotaBook

if TYPE_CHECKING:
    from policies.preemption import ClaimRule
    from policies.snapshot import PendingJob, RunningJob


class _QuotaClaim:
    """The policy's claim rule, plus reclaiming guarantees, minus taking jobs that run
    within their account's guarantee on any ground but a higher priority class."""

    def __init__(self, book: QuotaBook, base: ClaimRule | None) -> None:
        self.book = book
        self.base = base
        self._could = getattr(base, "could_claim", None)

    def could_claim(self, job: PendingJob) -> bool:
        if self.book.could_reclaim(job):
            return True
        if self.base is None:
            return False
        return self._could(job) if self._could is not None else True

    def set_ok(self, job: PendingJob, victims: Sequence[RunningJob]) -> bool:
        """Whether `job` may take all of `victims` together: no account is taken below a
        guarantee (a reclaim down to its last job at most), but by a higher class."""
        book = self.book
        mine = book.team_of(job.user)
        by_team: dict[str, list[RunningJob]] = {}
        for v in victims:
            by_team.setdefault(book.team_of(v.user), []).append(v)
        for team, theirs in by_team.items():
            if team == mine:
                continue
            if all(book.reclaim(job, v) is not None for v in theirs):
                if not book.leaves_guarantees(team, theirs, reclaim=True):
                    return False
            elif all(job.priority > v.priority for v in theirs):
                continue
            elif not book.leaves_guarantees(team, theirs):
                return False
        return True

    def __call__(self, job: PendingJob, victim: RunningJob) -> str | None:
        why = self.book.reclaim(job, victim)
        if why is not None or self.base is None:
            return why
        book = self.book
        if book.team_of(job.user) != book.team_of(victim.user) and book.protected(victim):
            if job.priority > victim.priority:
                classes = f"{job.priority} > {victim.priority}"
                return f"job {job.job_id} has a higher priority class ({classes})"
            return None
        return self.base(job, victim)


def quota_claim(book: QuotaBook, base: ClaimRule | None) -> ClaimRule:
    return _QuotaClaim(book, base)
