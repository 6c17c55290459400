"""What holds a pending job back before the policy sees it: its dependencies, the running
limit of its array (`--array 0-99%4`), and `singleton`.

`Gates` follows every job change (a listener on `ClusterState`): it keeps the jobs that
have a gate, how many tasks of each limited array are running, and the outcome of every
ended job a live job waits on. Each cycle, `Gates.check` says which pending jobs are held
back (with the reason, which the job shows), and which wait on something that can never
happen (a job that `afterok` waits on failed): the cycle cancels those, or leaves them
pending with the reason when `[scheduler] kill_invalid_depend = false`.

A dependency names only jobs that existed when it was submitted, so dependencies never
form a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from gshare.arrays import ArraySpec, Dependency, Term, parse_array, parse_dependency
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord

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
        self.arrays: dict[int, ArraySpec] = {}  # limited arrays (and targeted ones), by array id
        self.array_live: dict[int, set[int]] = {}  # array id -> its live tasks
        self.array_active: dict[int, set[int]] = {}  # array id -> its tasks on a node / in Slurm
        self.ended: dict[int, JobState] = {}  # outcomes of ended jobs that someone waited on
        self.array_ended: dict[int, dict[int, JobState]] = {}
        self.watched: set[int] = set()  # job and array ids live dependencies name
        self._live: Mapping[int, JobRecord] = {}

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
        job_id = job.job_id
        array = job.array_job_id
        if job.state.final:
            self.gated.discard(job_id)
            self.deps.pop(job_id, None)
            if array:
                self.array_live.get(array, set()).discard(job_id)
                self.array_active.get(array, set()).discard(job_id)
            self._ended(job)
            return
        if array:
            self.array_live.setdefault(array, set()).add(job_id)
            if array not in self.arrays and "%" in job.array_spec:
                self.arrays[array] = parse_array(job.array_spec, 1 << 30)
            active = self.array_active.setdefault(array, set())
            if job.state in _ACTIVE:
                active.add(job_id)
            else:
                active.discard(job_id)
        if job_id not in self.gated and (
            job.dependency or (array and array in self.arrays and self.arrays[array].limit)
        ):
            self.gated.add(job_id)
            if job.dependency:
                dep = parse_dependency(job.dependency)
                self.deps[job_id] = dep
                self.watched.update(t.job_id for t in dep.targets)

    def _ended(self, job: JobRecord) -> None:
        if job.job_id in self.watched:
            self.ended[job.job_id] = job.state
        if job.array_job_id and job.array_job_id in self.watched:
            self.array_ended.setdefault(job.array_job_id, {})[job.job_id] = job.state

    # ------------------------------------------------------------ each cycle

    def check(self) -> Verdict:
        verdict = Verdict()
        live = self._live
        pending = JobState.PENDING
        limited: dict[int, list[JobRecord]] = {}
        singles: list[JobRecord] = []
        for job_id in list(self.gated):
            job = live.get(job_id)
            if job is None:
                self.gated.discard(job_id)
                continue
            if job.state is not pending:
                continue
            dep = self.deps.get(job_id)
            if dep is not None:
                met, why = self._dependency(job, dep)
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
        """One job of a name and user at a time: a singleton waits while another of them
        runs, or while an older singleton of them waits."""
        groups = {(j.user, j.name) for j in singles}
        busy: dict[tuple[str, str], int] = {}
        for job in self._live.values():
            key = (job.user, job.name)
            if key in groups and job.state in _ACTIVE:
                busy.setdefault(key, job.job_id)
        first: dict[tuple[str, str], int] = {}
        for job in sorted(singles, key=lambda j: j.job_id):
            key = (job.user, job.name)
            if job.job_id in verdict.held:
                continue
            if key in busy:
                verdict.held[job.job_id] = (
                    f"singleton: job {busy[key]} of {job.user} named {job.name!r} is running"
                )
            elif key in first:
                verdict.held[job.job_id] = (
                    f"singleton: job {first[key]} of {job.user} named {job.name!r} goes first"
                )
            else:
                first[key] = job.job_id

    def _dependency(self, job: JobRecord, dep: Dependency) -> tuple[Met, str]:
        results = [self._term(t) for t in dep.terms]
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

    def _term(self, term: Term) -> tuple[Met, str]:
        if term.kind == "singleton":
            return Met.YES, ""  # checked with the others of its name, after the rest
        worst = Met.YES
        for target in term.targets:
            c = self._counts(target.job_id)
            met = _judge(term.kind, c)
            if met is Met.NEVER:
                return met, (
                    f"dependency {term.kind}:{target} can never be met: {c.failed_example}"
                )
            if met is Met.WAIT:
                worst = Met.WAIT
        return worst, ""

    def _counts(self, target: int) -> _Counts:
        c = _Counts()
        live = self._live.get(target)
        # a whole array: every task of it (its id is its first task's)
        array = target if (live is not None and live.array_job_id == target) else 0
        if not array and live is None and target in self.array_ended:
            array = target
        if array:
            tasks = self.array_live.get(array, set())
            ended = self.array_ended.get(array, {})
            c.total = len(tasks) + len(ended)
            for job_id in tasks:
                task = self._live.get(job_id)
                if task is not None and (task.start_time or task.state in _ACTIVE):
                    c.started += 1
            for job_id, state in ended.items():
                _count_end(c, job_id, state)
            return c
        c.total = 1
        if live is not None:
            if live.start_time or live.state in _ACTIVE:
                c.started = 1
            return c
        outcome = self.ended.get(target)
        if outcome is None:  # neither live nor ended: removed from the store by hand
            c.ended, c.started, c.failed_example = 1, 1, f"job {target} is gone"
            return c
        _count_end(c, target, outcome)
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
