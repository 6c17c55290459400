"""The simulated cluster `gshare sim` replays on: simulated agents, a virtual clock, and
trace jobs submitted as the daemon submits them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from gshare.checkpoint import YIELD_EXIT_CODE
from schedulerd.changes import JobReport, report_changes
from schedulerd.gang import gang_report
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord
from schedulerd.state import ClusterState, MemoryJournal
from schedulerd.store import Change, NewJob
from schedulerd.trace import TraceJob


@dataclass
class _Job:
    id: int
    trace: TraceJob
    remaining: float  # work left, seconds
    first_start: float | None = None
    end: float | None = None
    run_start: float = 0.0
    run_overhead: float = 0.0  # restart cost paid at the start of this run
    version: int = 0
    node: str = ""


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SimAgents:
    """Simulated node agents: a launched job runs at once and ends when its work is done;
    a job asked to yield yields at once, keeping the work up to its last checkpoint. What
    they report goes through the same change builders as a real agent's reports."""

    def __init__(
        self,
        state: ClusterState,
        jobs: dict[int, _Job],
        checkpoint_every_s: float,
        restart_cost_s: float,
    ) -> None:
        self.state = state
        self.jobs = jobs
        self.every = checkpoint_every_s
        self.restart_cost_s = restart_cost_s
        self.launched: list[JobRecord] = []
        self.yielding: list[JobRecord] = []
        self.lost_gpu_s = 0.0  # work since the last checkpoint, of preempted jobs
        self.restart_gpu_s = 0.0  # restart cost paid by jobs starting again

    def schedulable(self) -> list[str]:
        return list(self.state.nodes)

    async def launch(self, job: JobRecord) -> None:
        self.launched.append(job)

    def preempt(self, job: JobRecord) -> None:
        self.yielding.append(job)

    def last_checkpoint(self, job: JobRecord, now: float) -> float:
        j = self.jobs[job.job_id]
        if self.every <= 0:
            return 0.0
        done = max(0.0, now - j.run_start - j.run_overhead)
        if done < self.every:
            return 0.0
        return j.run_start + j.run_overhead + math.floor(done / self.every) * self.every

    async def report(self, now: float) -> tuple[list[_Job], list[_Job]]:
        """Tell the core what the agents saw since the last cycle: (started, yielded)."""
        started, yielded = [], []
        launched, self.launched = self.launched, []
        yielding, self.yielding = self.yielding, []
        async with self.state.lock:
            for job in launched:
                j = self.jobs[job.job_id]
                j.run_start = now
                j.run_overhead = self.restart_cost_s if job.restarts else 0.0
                j.version += 1
                j.node = job.node
                self.restart_gpu_s += j.run_overhead * job.gpus
                if j.first_start is None:
                    j.first_start = now
                await self._tell(job.job_id, JobReport(job.job_id, pid=1, start_time=now), now)
                started.append(j)
            for job in yielding:
                j = self.jobs[job.job_id]
                done = max(0.0, now - j.run_start - j.run_overhead)
                every = self.every  # the work up to the last checkpoint is kept
                saved = math.floor(done / every) * every if every > 0 else 0.0
                j.remaining -= min(saved, j.remaining)
                self.lost_gpu_s += (done - saved) * job.gpus
                report = JobReport(job.job_id, exited=True, exit_code=YIELD_EXIT_CODE, end_time=now)
                # backfill sees the rest of its work, plus the cost of starting again
                limit = math.ceil(j.remaining + self.restart_cost_s)
                await self._tell(job.job_id, report, now, (("time_limit_s", limit),))
                yielded.append(j)
        return started, yielded

    async def finish(self, job_id: int, now: float) -> None:
        async with self.state.lock:
            await self._tell(job_id, JobReport(job_id, exited=True, exit_code=0, end_time=now), now)

    async def _tell(
        self, job_id: int, report: JobReport, now: float, extra: tuple[tuple[str, Any], ...] = ()
    ) -> None:
        """The same report from every node the job runs on (one, or each of its parts),
        through the daemon's own change builders; `extra` goes with the change that ends
        or requeues it."""
        job = self.state.jobs[job_id]
        if job.parts:
            for part in job.parts:
                current = self.state.jobs.get(job_id)
                if current is None or not current.state.on_node:
                    break
                changes = list(gang_report(current, part.node, report, now).changes)
                if changes and not changes[-1].to_state.on_node:
                    changes = [*changes[:-1], _with(changes[-1], extra)]
                await self.state.change(changes)
            return
        changes = report_changes(job, job.node, report, now)
        await self.state.change([_with(c, extra) for c in changes])


def _with(change: Change, extra: tuple[tuple[str, Any], ...]) -> Change:
    return replace(change, fields=(*change.fields, *extra)) if extra else change


def _submit(
    state: ClusterState,
    journal: MemoryJournal,
    t: TraceJob,
    now: float,
    per_node: int,
    dependency: str = "",
) -> int:
    """A trace job as a submit: stored, then in the live view, as the daemon's submits. A
    job wider than a node asks for the fewest nodes that hold it, evenly."""
    nodes = math.ceil(t.gpus / per_node)
    each = math.ceil(t.gpus / nodes)
    record = JobRecord(
        job_id=0,
        user=t.user,
        uid=-1,
        gid=-1,
        name=t.name,
        queue="default",
        gpus=t.gpus,
        priority=0,
        time_limit_s=math.ceil(t.duration),
        cpus=0,
        mem_mb=0,
        workdir="/",
        env={},
        output="",
        args=[],
        script_name=t.name,
        state=JobState.PENDING,
        submit_time=now,
        max_restarts=-1,  # a replayed job is never failed for being preempted
        dependency=dependency,
        nodes=nodes,
        gpus_per_node=each if nodes > 1 else 0,
    )
    if nodes > 1:
        record.gpus = nodes * each
    [(job_id, _)] = journal.submit_many([NewJob(record, b"")], now)
    state.admit(record)
    return job_id
