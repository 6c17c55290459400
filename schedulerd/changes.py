"""Named, pure builders of job changes: what starting, preempting, requeueing, ending and
reconciling a job write. No I/O and no clock of their own: the time comes in as `now`.

Every change of a job goes through `ClusterState.change` (schedulerd/state.py) as one of
these, so each writes its event row with its reason.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gshare.checkpoint import YIELD_EXIT_CODE
from gshare.limits import format_mem_mb
from policies import Plan
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord, NodeRecord
from schedulerd.store import Change

Fields = tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class JobReport:
    """What an agent says of one of its jobs (a start, or an end)."""

    job_id: int
    pid: int = 0
    start_time: float = 0.0
    exited: bool = False
    exit_code: int = 0
    exit_signal: int = 0
    end_time: float = 0.0
    error: str = ""  # the launch failed
    killed_after_grace: bool = False  # asked to yield, it outlived its grace
    lease_lost: bool = False  # its node stopped it, having lost the scheduler for the lease
    oom_killed: bool = False  # the OOM killer ended a process of it (its --mem was enforced)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def requeue_fields(job: JobRecord, why: str, count: bool = True) -> Fields:
    """Back to the queue: no node, no GPUs, a restart more (unless `count` is False)."""
    return (
        ("node", ""),
        ("gpu_indexes", []),
        ("gpu_uuids", []),
        ("start_time", 0.0),
        ("restarts", job.restarts + (1 if count else 0)),
        ("reason", why),
    )


def start_changes(plan: Plan, nodes: Mapping[str, NodeRecord], now: float) -> list[Change]:
    """PENDING -> STARTING for each single-node start of the plan."""
    changes = []
    for start in plan.starts:
        if len(start.parts) != 1:
            continue  # the policies plan these only when told nodes can take parts
        uuids = {g.index: g.uuid for g in nodes[start.node].gpus}
        changes.append(
            Change(
                start.job_id,
                JobState.STARTING,
                kind="start",
                actor="scheduler",
                reason=f"placed on {start.node} GPUs {','.join(map(str, start.gpu_indexes))}",
                fields=(
                    ("node", start.node),
                    ("gpu_indexes", list(start.gpu_indexes)),
                    ("gpu_uuids", [uuids[i] for i in start.gpu_indexes]),
                    ("start_time", now),
                    ("reason", ""),
                    ("claimed_node", ""),
                ),
            )
        )
    return changes


def running_change(job: JobRecord, node: str, report: JobReport, now: float) -> Change:
    """STARTING -> RUNNING: the agent says the job's process exists."""
    return Change(
        job.job_id,
        JobState.RUNNING,
        "running",
        f"agent:{node}",
        f"pid {report.pid}",
        (("start_time", report.start_time or now),),
    )


def preempt_change(job: JobRecord, actor: str, why: str, for_job: int = 0) -> Change:
    """RUNNING -> PREEMPTING: asked to checkpoint and yield (to `for_job`; 0: by hand)."""
    return Change(
        job.job_id,
        JobState.PREEMPTING,
        "preempt",
        actor,
        why,
        (("preempted_for", for_job), ("preemptions", job.preemptions + 1), ("reason", why)),
    )


def end_request_change(job: JobRecord, to: JobState, kind: str, actor: str, why: str) -> Change:
    """The end asked for (a cancel, a time limit) while the job's processes are stopped:
    its state stays until they are gone, and then it ends as asked."""
    return Change(
        job.job_id, job.state, kind, actor, why, (("end_request", to.value), ("reason", why))
    )


def claim_change(claimant: JobRecord, node: str, why: str) -> Change:
    """A waiting job for which GPUs on `node` are being freed: they are its to take."""
    return Change(
        claimant.job_id, claimant.state, "claim", "scheduler", why, (("claimed_node", node),)
    )


def requeue_change(
    job: JobRecord, actor: str, why: str, reason: str = "", count: bool = True, extra: Fields = ()
) -> Change:
    """Back to PENDING, to run again (from its checkpoint, if it saved one)."""
    return Change(
        job.job_id,
        JobState.PENDING,
        "requeue",
        actor,
        why,
        (*requeue_fields(job, reason or why, count), *extra),
    )


def end_change(
    job: JobRecord, to: JobState, actor: str, why: str, now: float, extra: Fields = ()
) -> Change:
    """A final state, with the time it came and the reason."""
    return Change(job.job_id, to, "end", actor, why, (("end_time", now), ("reason", why), *extra))


def end_of(job: JobRecord, report: JobReport) -> tuple[JobState, str]:
    """How a job that ended (not by yielding) is recorded, and why."""
    if report.error:
        return JobState.FAILED, f"launch failed: {report.error}"
    if job.end_request:
        return JobState(job.end_request), job.reason
    if report.oom_killed and (report.exit_signal or report.exit_code):
        limit = f" (limit {format_mem_mb(job.mem_mb)})" if job.mem_mb else ""
        return JobState.FAILED, f"out of memory{limit}"
    if report.exit_signal:
        return JobState.FAILED, f"killed by {signal_name(report.exit_signal)}"
    if report.exit_code == 0:
        return JobState.COMPLETED, ""
    return JobState.FAILED, f"exited with code {report.exit_code}"


def exit_fields(report: JobReport, now: float) -> Fields:
    return (
        ("end_time", report.end_time or now),
        ("exit_code", report.exit_code),
        ("exit_signal", report.exit_signal),
        ("has_exit", not report.error),
    )


def ended_change(job: JobRecord, node: str, report: JobReport, now: float) -> Change:
    """The job's process ended on its own, or as asked (cancel, time limit)."""
    end, why = end_of(job, report)
    return Change(
        job.job_id,
        end,
        "end",
        f"agent:{node}",
        why,
        (*exit_fields(report, now), ("reason", why)),
    )


def yielded_change(job: JobRecord, node: str, report: JobReport, now: float) -> Change | None:
    """A job asked to yield has ended: requeued if it yielded (or was killed at the end of
    its grace), FAILED past --max-restarts; None if it ended some other way."""
    signame = signal_name(job.preempt_signal)
    if report.exit_code == YIELD_EXIT_CODE and not report.exit_signal:
        why = "yielded after its checkpoint"
    elif report.killed_after_grace:
        why = f"ignored {signame} and was killed at the end of its {job.grace_s:.0f}s grace"
    elif report.exit_signal == job.preempt_signal:
        why = f"ended by {signame} before it could checkpoint (it does not handle it)"
    else:
        return None
    actor = f"agent:{node}"
    if job.max_restarts >= 0 and job.restarts + 1 > job.max_restarts:
        final = f"{why}; preempted {job.preemptions} times, over --max-restarts {job.max_restarts}"
        return Change(
            job.job_id,
            JobState.FAILED,
            "end",
            actor,
            final,
            (*exit_fields(report, now), ("reason", final)),
        )
    return requeue_change(
        job,
        actor,
        why,
        f"{why}; waiting to resume",
        extra=(
            ("preempted_for", 0),
            ("exit_code", report.exit_code),
            ("exit_signal", report.exit_signal),
        ),
    )


def report_changes(job: JobRecord, node: str, report: JobReport, now: float) -> list[Change]:
    """What an agent's report on one of this node's jobs changes (may be nothing)."""
    if not report.exited:
        if job.state is JobState.STARTING:
            return [running_change(job, node, report, now)]
        return []
    if job.state is JobState.PREEMPTING and not job.end_request and not report.error:
        yielded = yielded_change(job, node, report, now)
        if yielded is not None:
            return [yielded]
    if report.lease_lost and not job.end_request:
        why = f"node {node} stopped it after losing the scheduler for the lease"
        return [requeue_change(job, f"agent:{node}", why, f"requeued: {why}")]
    return [ended_change(job, node, report, now)]


def lost_changes(job: JobRecord, node: str, why: str, now: float) -> list[Change]:
    """Its node is gone past the lease: LOST, then the end asked for or back to the queue."""
    lost = Change(job.job_id, JobState.LOST, "lost", "scheduler", why, (("reason", why),))
    if job.end_request:
        return [
            lost,
            Change(
                job.job_id, JobState(job.end_request), "end", "scheduler", why, (("end_time", now),)
            ),
        ]
    return [
        lost,
        requeue_change(
            job, "scheduler", f"requeued: {why}", f"requeued after node {node} was lost"
        ),
    ]


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What a (re)registering agent's report means for the jobs the scheduler has there."""

    updates: tuple[tuple[JobRecord, JobReport], ...]  # jobs it still has: follow its report
    changes: tuple[Change, ...]  # jobs it lost: requeued (not started yet) or FAILED
    kill: tuple[int, ...]  # jobs it runs that are not its any more
    forget: tuple[int, ...]  # ends it still keeps of jobs not its any more
    still_to_end: tuple[int, ...]  # its jobs asked to end that still run: kill again


def reconcile(
    node: str, here: Iterable[JobRecord], reported: Iterable[JobReport], now: float
) -> Reconciled:
    """Compare the jobs the scheduler placed on `node` with those its agent reports."""
    left = {r.job_id: r for r in reported}
    updates: list[tuple[JobRecord, JobReport]] = []
    changes: list[Change] = []
    still_to_end: list[int] = []
    for job in here:
        seen = left.pop(job.job_id, None)
        if seen is not None:
            updates.append((job, seen))
            if not seen.exited and job.end_request:
                still_to_end.append(job.job_id)
        elif job.state is JobState.STARTING:
            why = f"node {node} came back without the job; starting it again"
            changes.append(requeue_change(job, "scheduler", why, count=False))
        else:
            why = f"node {node} no longer knows the job (its agent state was lost)"
            changes.append(
                Change(
                    job.job_id,
                    JobState.FAILED,
                    "lost",
                    "scheduler",
                    why,
                    (("reason", why), ("end_time", now)),
                )
            )
    return Reconciled(
        tuple(updates),
        tuple(changes),
        tuple(r.job_id for r in left.values() if not r.exited),
        tuple(r.job_id for r in left.values() if r.exited),
        tuple(still_to_end),
    )
