"""What holds a pending job back before the policy sees it: its dependencies, the running
limit of its array (`--array 0-99%4`), and `singleton`.

`Gates` follows every job change (a listener on `ClusterState`): it keeps the jobs that
have a gate, how many tasks of each limited array are running, and the outcome of every
ended job a live job waits on. Each cycle, `Gates.check` says which pending jobs are held
back (with the reason, which the job shows), and which wait on something that can never
happen (a job that `afterok` waits on failed): the cycle cancels those, or leaves them
pending with the reason when `[scheduler] kill_invalid_depend = false`.

A dependency names only jobs that existed when it was submitted, so dependencies never
form a cycle. It is kept as the user wrote it (`afterok:12_3` stays one task of array
12; `afterok:12` is the whole array when 12 is one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from gshare.arrays import ArraySpec, Dependency, Target, Term, parse_array, parse_dependency
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord

log = logging.getLogger(__name__)

_ACTIVE = frozenset(
    {
        JobState.STARTING,
        JobState.RUNNING,
        JobState.PREEMPTING,
        JobState.HANDED_OFF,
        JobState.RUNNING_REMOTE,
    }
)


class Met(Enum):
    YES = "met"
    WAIT = "wait"
    NEVER = "never"


@dataclass(slots=True)
class _Counts:
    total: int = 0
    ended: int = 0
    completed: int = 0
    started: int = 0  # started or ended
    failed_example: str = ""  # one that ended otherwise, for the reason


@dataclass
class Verdict:
    held: dict[int, str] = field(default_factory=dict)  # job id -> why it waits
    doomed: dict[int, str] = field(default_factory=dict)  # job id -> why it never can run


class Gates:
    def __init__(self) -> None:
        self.gated: set[int] = set()  # live jobs with a dependency, an array limit or singleton
        self.deps: dict[int, Dependency] = {}  # parsed, by job id
        self.arrays: dict[int, ArraySpec] = {}  # limited arrays, by array id
        self.array_live: dict[int, set[int]] = {}  # array id -> its live tasks
        self.array_active: dict[int, set[int]] = {}  # array id -> its tasks on a node / in Slurm
        self.ended: dict[int, JobState] = {}  # outcomes of ended jobs that someone waited on
        # watched arrays: their ended tasks, job id -> (task id, outcome)
        self.array_ended: dict[int, dict[int, tuple[int, JobState]]] = {}
        self.watched: set[int] = set()  # job and array ids live dependencies name
        self._live: Mapping[int, JobRecord] = {}
        self._checks = 0

    # ------------------------------------------------------------ following the jobs

    def bind(self, live: Mapping[int, JobRecord]) -> None:
        self._live = live

    def watch(self, ids: Iterable[int]) -> None:
        """Ids a dependency about to be admitted names: their ends are kept from now on."""
        self.watched.update(ids)

    def outcomes(self, records: Iterable[JobRecord]) -> None:
        """Ended jobs loaded from the store (at start-up, or for a new dependency)."""
        for job in records:
            self._ended(job)

    def job_changed(self, job: JobRecord) -> None:
        """A listener of ClusterState: every change of every job comes here. What it
        stores was checked at submit, but a record it cannot read (a hand-edited
        database) is logged and left ungated rather than stopping the scheduler."""
        try:
            self._job_changed(job)
        except ValueError as exc:
            log.error("job %d: its array or dependency cannot be read: %s", job.job_id, exc)

    def _job_changed(self, job: JobRecord) -> None:
        job_id = job.job_id
        array = job.array_job_id
        if job.state.final:
            self.gated.discard(job_id)
            self.deps.pop(job_id, None)
            if array:
                live = self.array_live.get(array)
                if live is not None:
                    live.discard(job_id)
                    if not live:  # the array's last task ended
                        del self.array_live[array]
                        self.array_active.pop(array, None)
                        self.arrays.pop(array, None)
                active = self.array_active.get(array)
                if active is not None:
                    active.discard(job_id)
            self._ended(job)
            return
        if array:
            self.array_live.setdefault(array, set()).add(job_id)
            if array not in self.arrays and "%" in job.array_spec:
                self.arrays[array] = parse_array(job.array_spec, 1 << 30)
            if job.state in _ACTIVE:
                self.array_active.setdefault(array, set()).add(job_id)
            else:
                active = self.array_active.get(array)
                if active is not None:
                    active.discard(job_id)
        if job_id not in self.gated and (
            job.dependency or (array and array in self.arrays and self.arrays[array].limit)
        ):
            if job.dependency:
                dep = parse_dependency(job.dependency)
                self.deps[job_id] = dep
                self.watched.update(t.job_id for t in dep.targets)
            self.gated.add(job_id)

    def _ended(self, job: JobRecord) -> None:
        if job.job_id in self.watched:
            self.ended[job.job_id] = job.state
        if job.array_job_id and job.array_job_id in self.watched:
            self.array_ended.setdefault(job.array_job_id, {})[job.job_id] = (
                job.array_task_id,
                job.state,
            )

    def _prune(self) -> None:
        """Forget the outcomes no live dependency needs any more."""
        needed = {t.job_id for dep in self.deps.values() for t in dep.targets}
        self.watched &= needed
        for job_id in [j for j in self.ended if j not in needed]:
            del self.ended[job_id]
        for array in [a for a in self.array_ended if a not in needed]:
            del self.array_ended[array]

    # ------------------------------------------------------------ each cycle

    def check(self) -> Verdict:
        verdict = Verdict()
        self._checks += 1
        if self._checks % 100 == 0:
            self._prune()
        live = self._live
        pending = JobState.PENDING
        limited: dict[int, list[JobRecord]] = {}
        singles: list[JobRecord] = []
        counts: dict[Target, _Counts] = {}  # each target counted once per check
        for job_id in list(self.gated):
            job = live.get(job_id)
            if job is None:
                self.gated.discard(job_id)
                continue
            if job.state is not pending:
                continue
            dep = self.deps.get(job_id)
            if dep is not None:
                met, why = self._dependency(dep, counts)
                if met is Met.NEVER:
                    verdict.doomed[job_id] = why
                    continue
                if met is Met.WAIT:
                    verdict.held[job_id] = why
                    continue
                if any(t.kind == "singleton" for t in dep.terms):
                    singles.append(job)
            array = self.arrays.get(job.array_job_id) if job.array_job_id else None
            if array is not None and array.limit:
                limited.setdefault(job.array_job_id, []).append(job)
        for array_id, waiting in limited.items():
            limit = self.arrays[array_id].limit
            room = limit - len(self.array_active.get(array_id, ()))
            waiting.sort(key=lambda j: j.array_task_id)
            for job in waiting[max(room, 0) :]:
                verdict.held[job.job_id] = (
                    f"array {array_id} has {limit} tasks running, its limit (%{limit})"
                )
        if singles:
            self._singletons(singles, verdict)
        return verdict

    def _singletons(self, singles: list[JobRecord], verdict: Verdict) -> None:
        """As Slurm's singleton: a job waits while any other job of its name and user
        that is running, or was submitted before it, has not ended."""
        groups = {(j.user, j.name) for j in singles}
        others: dict[tuple[str, str], list[JobRecord]] = {}
        for job in self._live.values():
            key = (job.user, job.name)
            if key in groups:
                others.setdefault(key, []).append(job)
        for job in singles:
            if job.job_id in verdict.held:
                continue
            for other in others[(job.user, job.name)]:
                if other.job_id == job.job_id:
                    continue
                if other.state in _ACTIVE:
                    verdict.held[job.job_id] = (
                        f"singleton: job {other.job_id} of {job.user} named {job.name!r} is running"
                    )
                    break
                if other.job_id < job.job_id:
                    verdict.held[job.job_id] = (
                        f"singleton: job {other.job_id} of {job.user} named {job.name!r} "
                        "was submitted first"
                    )
                    break

    def _dependency(self, dep: Dependency, counts: dict[Target, _Counts]) -> tuple[Met, str]:
        results = [self._term(t, counts) for t in dep.terms]
        if dep.any_of:
            if any(m is Met.YES for m, _ in results):
                return Met.YES, ""
            if all(m is Met.NEVER for m, _ in results):
                return Met.NEVER, "; ".join(w for _, w in results)
        else:
            never = [w for m, w in results if m is Met.NEVER]
            if never:
                return Met.NEVER, never[0]
            if all(m is Met.YES for m, _ in results):
                return Met.YES, ""
        return Met.WAIT, f"waiting for dependency {dep}"

    def _term(self, term: Term, counts: dict[Target, _Counts]) -> tuple[Met, str]:
        if term.kind == "singleton":
            return Met.YES, ""  # checked with the others of its name, after the rest
        worst = Met.YES
        for target in term.targets:
            c = counts.get(target)
            if c is None:
                c = counts[target] = self._counts(target)
            met = _judge(term.kind, c)
            if met is Met.NEVER:
                return met, (
                    f"dependency {term.kind}:{target} can never be met: {c.failed_example}"
                )
            if met is Met.WAIT:
                worst = Met.WAIT
        return worst, ""

    def _counts(self, target: Target) -> _Counts:
        if target.task is not None:
            return self._task_counts(target.job_id, target.task)
        c = _Counts()
        job_id = target.job_id
        live = self._live.get(job_id)
        # a whole array: every task of it (its id is its first task's)
        array = job_id if (live is not None and live.array_job_id == job_id) else 0
        if not array and live is None and job_id in self.array_ended:
            array = job_id
        if array:
            tasks = self.array_live.get(array, set())
            ended = self.array_ended.get(array, {})
            c.total = len(tasks) + len(ended)
            for task_id in tasks:
                task = self._live.get(task_id)
                if task is not None and (task.start_time or task.state in _ACTIVE):
                    c.started += 1
            for task_id, (_, state) in ended.items():
                _count_end(c, task_id, state)
            return c
        return self._one(job_id, live, self.ended.get(job_id))

    def _task_counts(self, array: int, task: int) -> _Counts:
        """One task of an array (`afterok:12_3`), found among its live or ended tasks."""
        for job_id in self.array_live.get(array, ()):
            job = self._live.get(job_id)
            if job is not None and job.array_task_id == task:
                return self._one(job_id, job, None)
        for job_id, (task_id, state) in self.array_ended.get(array, {}).items():
            if task_id == task:
                return self._one(job_id, None, state)
        return _Counts(total=1, ended=1, started=1, failed_example=f"{array}_{task} is gone")

    def _one(self, job_id: int, live: JobRecord | None, outcome: JobState | None) -> _Counts:
        c = _Counts(total=1)
        if live is not None:
            if live.start_time or live.state in _ACTIVE:
                c.started = 1
            return c
        if outcome is None:  # neither live nor ended: removed from the store by hand
            c.ended, c.started, c.failed_example = 1, 1, f"job {job_id} is gone"
            return c
        _count_end(c, job_id, outcome)
        return c


def _count_end(c: _Counts, job_id: int, state: JobState) -> None:
    c.ended += 1
    c.started += 1
    if state is JobState.COMPLETED:
        c.completed += 1
        if not c.failed_example:
            c.failed_example = f"job {job_id} COMPLETED"
    else:
        c.failed_example = f"job {job_id} ended {state}"


def _judge(kind: str, c: _Counts) -> Met:
    if kind == "after":
        return Met.YES if c.started >= c.total else Met.WAIT
    if kind == "afterany":
        return Met.YES if c.ended >= c.total else Met.WAIT
    if kind == "afterok":
        if c.ended > c.completed:
            return Met.NEVER
        return Met.YES if c.completed >= c.total else Met.WAIT
    if kind == "afternotok":
        if c.ended < c.total:
            return Met.WAIT
        return Met.NEVER if c.completed == c.total else Met.YES
    raise ValueError(f"unknown dependency kind {kind!r}")
