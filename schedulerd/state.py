"""The live state of the cluster, and the one way to change a job.

`ClusterState` holds the live jobs and the known nodes. A job changes only through
`change()`: the journal (the SQL store in the daemon, memory in the simulator) writes each
change with its event row, dated by the injected clock, in one transaction; then the live
view follows and the listeners hear of it. The caller holds `lock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from schedulerd.model import JobRecord, NodeRecord
from schedulerd.store import Change, NewJob

T = TypeVar("T")

log = logging.getLogger(__name__)


class Journal(Protocol):
    """Where changes are made durable: `schedulerd.store.Store`, or `MemoryJournal`."""

    def apply(self, changes: Iterable[Change], now: float | None = None) -> list[JobRecord]: ...

    def submit_many(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[tuple[int, bool]]: ...

    def set_fields(self, job_id: int, values: dict[str, Any]) -> None: ...

    def save_node(self, node: NodeRecord) -> None: ...


Runner = Callable[..., Awaitable[Any]]


async def run_inline(fn: Callable[..., T], *args: Any) -> T:
    """Run a journal call on the event loop itself (the simulator's in-memory journal)."""
    return fn(*args)


class ClusterState:
    def __init__(
        self, journal: Journal, clock: Callable[[], float], run: Runner = run_inline
    ) -> None:
        self.journal = journal
        self.clock = clock
        self.run = run  # how journal calls are made: on the store's thread, or inline
        self.jobs: dict[int, JobRecord] = {}  # live jobs (not ended)
        self.nodes: dict[str, NodeRecord] = {}
        self.lock = asyncio.Lock()
        # told before GPUs are freed (the ledger charges them up to that moment)
        self.before_freeing: Callable[[float], None] = lambda now: None
        self.job_listeners: list[Callable[[JobRecord], None]] = []
        self.node_listeners: list[Callable[[NodeRecord], None]] = []
        # told, after the view follows, of each job that has left its node
        self.left_node: list[Callable[[int], Awaitable[None]]] = []

    async def change(self, changes: list[Change]) -> list[JobRecord]:
        """Persist changes with their events, then update the live view. Caller holds the lock."""
        if not changes:
            return []
        now = self.clock()
        if any(
            (job := self.jobs.get(c.job_id)) is not None
            and job.state.on_node
            and not c.to_state.on_node
            for c in changes
        ):
            self.before_freeing(now)
        records: list[JobRecord] = await self.run(self.journal.apply, changes, now)
        left: list[int] = []
        for record in records:
            old = self.jobs.get(record.job_id)
            if old is not None and record.array_job_id not in (0, record.job_id):
                record.env = old.env  # an array's tasks share its environment, stored once
            if old is not None and old.state.on_node and not record.state.on_node:
                left.append(record.job_id)
            if record.state.final:
                self.jobs.pop(record.job_id, None)
            else:
                self.jobs[record.job_id] = record
            self.publish_job(record)
        for job_id in left:
            for hook in self.left_node:
                await hook(job_id)
        return records

    async def annotate(
        self, job: JobRecord, kind: str, actor: str, why: str, *fields: tuple[str, Any]
    ) -> JobRecord:
        """An event that leaves the state as it is (a cancel asked for, a checkpoint, a new
        priority), with the fields it sets. Caller holds the lock."""
        [job] = await self.change([Change(job.job_id, job.state, kind, actor, why, fields)])
        return job

    async def set_fields(self, job: JobRecord, **values: Any) -> None:
        """Fields that change often and need no event (a handed-off job's Slurm state)."""
        await self.run(self.journal.set_fields, job.job_id, values)
        for key, value in values.items():
            setattr(job, key, value)

    def admit(self, record: JobRecord) -> None:
        """A job just stored by a submit joins the live view."""
        self.jobs[record.job_id] = record
        self.publish_job(record)

    async def save_node(self, node: NodeRecord) -> None:
        await self.run(self.journal.save_node, node)

    def publish_job(self, job: JobRecord) -> None:
        for listener in self.job_listeners:
            try:
                listener(job)
            except Exception:  # one listener's fault must not stop a change or the others
                log.exception("job %d: a listener failed", job.job_id)

    def publish_node(self, node: NodeRecord) -> None:
        for listener in self.node_listeners:
            listener(node)

    def busy_gpus(self, node: str) -> list[int]:
        return sorted(i for j in self.on_node(node) for i in j.gpus_on(node))

    def on_node(self, node: str) -> list[JobRecord]:
        """The jobs holding GPUs on `node` (a multi-node job on each of its parts' nodes)."""
        return [
            j
            for j in self.jobs.values()
            if j.state.on_node and (j.node == node or (j.parts and j.part_on(node)))
        ]


class MemoryJournal:
    """A journal in memory (the simulator's): the same transitions are checked and the
    same records made, with events counted but not kept."""

    def __init__(self) -> None:
        self.rows: dict[int, JobRecord] = {}
        self.next_id = 1
        self.events = 0

    def submit_many(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[tuple[int, bool]]:
        out = []
        for new in jobs:
            for record in new.records:
                record.job_id = self.next_id
                self.next_id += 1
                if new.record.array_spec:
                    record.array_job_id = new.record.job_id
                if now is not None:
                    record.submit_time = now
                self.rows[record.job_id] = _copy(record)
                self.events += 1
            out.append((new.record.job_id, True))
        return out

    def apply(self, changes: Iterable[Change], now: float | None = None) -> list[JobRecord]:
        from schedulerd.jobstate import check_transition

        out = []
        staged: dict[int, JobRecord] = {}
        for change in changes:
            row = staged.get(change.job_id) or self.rows.get(change.job_id)
            if row is None:
                raise KeyError(f"no job {change.job_id}")
            if change.to_state is not row.state:
                check_transition(change.job_id, row.state, change.to_state)
            record = _copy(row)
            for key, value in change.fields:
                setattr(record, key, value)
            record.state = change.to_state
            staged[change.job_id] = record
            out.append(_copy(record))
        self.rows.update(staged)  # all or nothing, as a transaction
        self.events += len(out)
        return out

    def set_fields(self, job_id: int, values: dict[str, Any]) -> None:
        row = self.rows[job_id]
        for key, value in values.items():
            setattr(row, key, value)

    def save_node(self, node: NodeRecord) -> None:
        pass


def _copy(record: JobRecord) -> JobRecord:
    from dataclasses import replace

    return replace(record)
