"""Multi-node jobs: the rendezvous the scheduler decides (the port rank 0 listens on and
what every part is told), the start of all parts at once, and one fate for the parts
(schedulerd/gang.py's second half). Pure: no I/O, no clock of its own.

The variables follow what torchrun, DeepSpeed and Horovod read (as Slurm's enroot hook
derives them from `SLURM_*`): `MASTER_ADDR` is rank 0's address, `MASTER_PORT` a port of
the configured range that no other job holds on any of the job's nodes, `WORLD_SIZE` the
GPUs of all parts, `NNODES`, `NODE_RANK` and `LOCAL_WORLD_SIZE`; `GSHARE_HOSTS` lists the
parts' addresses by rank and `GSHARE_HOSTFILE` names a file of `host slots=G` lines (the
form DeepSpeed and mpirun read), which the part's launcher writes from `hostfile_text`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gshare.checkpoint import YIELD_EXIT_CODE
from policies import Plan
from schedulerd.changes import JobReport, requeue_change, signal_name
from schedulerd.jobstate import JobState
from schedulerd.model import JobPart, JobRecord, NodeRecord
from schedulerd.store import Change


@dataclass(frozen=True, slots=True)
class GangPart:
    """One node's share of a job: where it runs, the address the other parts reach it
    at (the node's `[agent] address`), and its GPUs there."""

    node: str
    address: str
    gpus: tuple[int, ...]


def ports_in_use(held: Iterable[tuple[Iterable[str], int]]) -> dict[str, set[int]]:
    """node -> the master ports its live multi-node jobs hold, from (nodes, port) pairs
    (a port of 0: none)."""
    used: dict[str, set[int]] = {}
    for nodes, port in held:
        if port:
            for node in nodes:
                used.setdefault(node, set()).add(port)
    return used


def choose_master_port(
    ports: tuple[int, int], nodes: Iterable[str], used: Mapping[str, Collection[int]]
) -> int | None:
    """The lowest port of the range `ports` (both ends in) that no job holds on any of
    `nodes`; None when every one is held somewhere among them."""
    taken: set[int] = set()
    for node in nodes:
        taken.update(used.get(node, ()))
    first, last = ports
    for port in range(first, last + 1):
        if port not in taken:
            return port
    return None


def hostfile_text(parts: Sequence[GangPart]) -> str:
    """`host slots=G` per part, by rank."""
    return "".join(f"{p.address} slots={len(p.gpus)}\n" for p in parts)


def rendezvous_env(
    parts: Sequence[GangPart], rank: int, port: int, hostfile: str = ""
) -> dict[str, str]:
    """What part `rank` of a job placed on `parts` (rank order) is told, besides the
    variables every job gets; `hostfile` is where its launcher writes `hostfile_text`
    (empty: left to the launcher, which adds GSHARE_HOSTFILE itself)."""
    if not 0 <= rank < len(parts):
        raise ValueError(f"rank {rank} is not one of the job's {len(parts)} parts")
    env = {
        "MASTER_ADDR": parts[0].address,
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(sum(len(p.gpus) for p in parts)),
        "NNODES": str(len(parts)),
        "NODE_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(len(parts[rank].gpus)),
        "GSHARE_HOSTS": ",".join(p.address for p in parts),
    }
    if hostfile:
        env["GSHARE_HOSTFILE"] = hostfile
    return env


# ---------------------------------------------------------------- starting the parts


def gang_starts(
    plan: Plan,
    nodes: Mapping[str, NodeRecord],
    live: Iterable[JobRecord],
    ports: tuple[int, int],
    now: float,
) -> tuple[list[Change], dict[int, str]]:
    """PENDING -> STARTING for each start of the plan across nodes, all parts at once with
    their ranks (in node order) and a master port; and why a start had to wait (no port of
    the range free on all of its nodes)."""
    gangs = [s for s in plan.starts if len(s.parts) > 1]
    if not gangs:
        return [], {}
    used = ports_in_use(
        ([n for n, _ in j.holds()], j.master_port) for j in live if j.parts and j.state.on_node
    )
    changes: list[Change] = []
    waits: dict[int, str] = {}
    for start in gangs:
        names = [n for n, _ in start.parts]
        port = choose_master_port(ports, names, used)
        if port is None:
            waits[start.job_id] = (
                f"every MASTER_PORT of {ports[0]}-{ports[1]} is taken on one of {', '.join(names)}"
            )
            continue
        for name in names:
            used.setdefault(name, set()).add(port)
        parts = []
        for rank, (name, gpus) in enumerate(start.parts):
            node = nodes[name]
            uuids = {g.index: g.uuid for g in node.gpus}
            parts.append(
                JobPart(
                    name,
                    rank,
                    tuple(gpus),
                    tuple(uuids[i] for i in gpus),
                    node.address or name,
                )
            )
        where = "; ".join(f"{p.node} GPUs {','.join(map(str, p.gpus))}" for p in parts)
        changes.append(
            Change(
                start.job_id,
                JobState.STARTING,
                kind="start",
                actor="scheduler",
                reason=f"placed on {len(parts)} nodes: {where}; MASTER_PORT {port}",
                fields=(
                    ("node", parts[0].node),
                    ("gpu_indexes", list(parts[0].gpus)),
                    ("gpu_uuids", list(parts[0].uuids)),
                    ("parts", parts),
                    ("master_port", port),
                    ("start_time", now),
                    ("reason", ""),
                    ("claimed_node", ""),
                ),
            )
        )
    return changes, waits


def part_output(job: JobRecord, rank: int) -> str:
    """Part `rank`'s log: `%n` in the job's output is its node rank."""
    return job.output_path.replace("%n", str(rank))


def part_environment(job: JobRecord, part: JobPart) -> dict[str, str]:
    """The rendezvous part `part` is told (GSHARE_HOSTFILE is set where it is written, by
    its node's agent)."""
    parts = [GangPart(p.node, p.address or p.node, p.gpus) for p in job.parts]
    return rendezvous_env(parts, part.rank, job.master_port)


def hostfile_of(job: JobRecord) -> str:
    return hostfile_text([GangPart(p.node, p.address or p.node, p.gpus) for p in job.parts])


# ---------------------------------------------------------------- one fate

# A job across nodes lives and ends as one: its parts start together (RUNNING once every
# part runs); the first part that fails (or whose node is lost) stops the others, and
# the job ends once every part has exited, as the first failure says (or as asked: a
# cancel, a time limit, a preemption). While parts are being stopped, the end they lead
# to is kept in `end_request` ("PENDING": requeued), so the GPUs of every part stay held
# until the last one is gone.

RUNNING_PART, EXITED = "RUNNING", "EXITED"


@dataclass(frozen=True, slots=True)
class GangStep:
    """What a report on one part changes, and the nodes whose parts must be stopped."""

    changes: tuple[Change, ...] = ()
    stop: tuple[str, ...] = ()


def _replace(parts: Sequence[JobPart], part: JobPart) -> list[JobPart]:
    return [part if p.rank == part.rank else p for p in parts]


def part_failure(part: JobPart) -> str:
    """How an exited part failed ("" for exit 0)."""
    if part.error:
        return part.error
    if part.lease_lost:
        return f"was stopped by {part.node}, which lost the scheduler for the lease"
    if part.exit_signal:
        return f"was killed by {signal_name(part.exit_signal)}"
    if part.exit_code:
        return f"exited with code {part.exit_code}"
    return ""


def _requeues(part: JobPart) -> bool:
    """A failure of the node, not of the job: the job runs again."""
    return bool(part.error) or part.lease_lost


def _started(part: JobPart) -> bool:
    """Runs, or ran and ended well (a short part may end before another has started)."""
    return part.state == RUNNING_PART or (part.exited and not part_failure(part))


def gang_report(job: JobRecord, node: str, report: JobReport, now: float) -> GangStep:
    """An agent's report on its part of `job`."""
    part = job.part_on(node)
    if part is None or part.exited:
        return GangStep()
    actor = f"agent:{node}"
    if not report.exited:
        if part.state == RUNNING_PART and part.pid == report.pid:
            return GangStep()
        running = replace(part, state=RUNNING_PART, pid=report.pid)
        parts = _replace(job.parts, running)
        if job.state is JobState.STARTING and not job.end_request and all(map(_started, parts)):
            pids = ", ".join(f"{p.node}:{p.pid}" for p in parts)
            change = Change(
                job.job_id,
                JobState.RUNNING,
                "running",
                actor,
                f"all {len(parts)} parts run (pids {pids})",
                (("parts", parts), ("start_time", now)),
            )
        else:
            why = f"part {part.rank} runs on {node} (pid {report.pid})"
            change = Change(job.job_id, job.state, "part", actor, why, (("parts", parts),))
        return GangStep((change,))
    done = replace(
        part,
        state=EXITED,
        pid=report.pid or part.pid,
        exit_code=report.exit_code,
        exit_signal=report.exit_signal,
        error=f"could not be launched: {report.error}" if report.error else "",
        killed_after_grace=report.killed_after_grace,
        lease_lost=report.lease_lost,
    )
    return settle(job, done, actor, now)


def gang_lost(job: JobRecord, node: str, why: str, now: float) -> GangStep:
    """The node of one of `job`'s parts is gone (past its lease, or it came back without
    the part): that part counts as ended by its node."""
    part = job.part_on(node)
    if part is None or part.exited:
        return GangStep()
    return settle(job, replace(part, state=EXITED, error=why), "scheduler", now)


def settle(job: JobRecord, done: JobPart, actor: str, now: float) -> GangStep:
    """Part `done` has exited: record it; stop the others if it failed; end the job
    when it was the last."""
    parts = _replace(job.parts, done)
    live = [p for p in parts if not p.exited]
    if not live:
        return GangStep(tuple(_final(job, parts, actor, now)))
    fields: tuple[tuple[str, Any], ...] = (("parts", parts),)
    failure = part_failure(done)
    if job.end_request or job.state is JobState.PREEMPTING or not failure:
        if failure:
            why = f"part {done.rank} on {done.node} {failure}"
        else:
            why = f"part {done.rank} on {done.node} exited with code 0"
        return GangStep((Change(job.job_id, job.state, "part", actor, why, fields),))
    to = JobState.PENDING if _requeues(done) else JobState.FAILED
    cause = f"part {done.rank} on {done.node} {failure}"
    parts = [p if p.exited else replace(p, stopped=True) for p in parts]
    change = Change(
        job.job_id,
        job.state,
        "gang-stop",
        actor,
        f"{cause}; its other parts are being stopped",
        (("parts", parts), ("end_request", to.value), ("reason", cause)),
    )
    return GangStep((change,), tuple(p.node for p in live))


def _final(job: JobRecord, parts: list[JobPart], actor: str, now: float) -> list[Change]:
    preempted = job.state is JobState.PREEMPTING
    failed = [
        p
        for p in parts
        if part_failure(p)
        and not (preempted and p.exit_code == YIELD_EXIT_CODE and not p.exit_signal)
    ]
    causes = [p for p in failed if not p.stopped] or failed
    first = causes[0] if causes else parts[0]
    exits = (
        ("end_time", now),
        ("exit_code", first.exit_code),
        ("exit_signal", first.exit_signal),
        ("has_exit", not first.error),
        ("parts", parts),
    )
    if job.state is JobState.PREEMPTING and not job.end_request:
        yielded = _yielded(job, parts)
        if yielded:
            return _requeue(job, actor, yielded, parts, exits, yielding=True)
    if job.end_request == JobState.PENDING.value or (
        not job.end_request and any(_requeues(p) for p in failed)
    ):
        why = (
            job.reason
            if job.end_request
            else f"part {first.rank} on {first.node} " + (part_failure(first))
        )
        # a part that cannot be launched: requeued, but not for ever (--max-restarts)
        unlaunched = any(p.error for p in failed)
        return _requeue(job, actor, why, parts, exits, unlaunched=unlaunched)
    if job.end_request:
        to = JobState(job.end_request)
        return [Change(job.job_id, to, "end", actor, job.reason, (*exits, ("reason", job.reason)))]
    if not failed:
        return [Change(job.job_id, JobState.COMPLETED, "end", actor, "", (*exits, ("reason", "")))]
    why = f"part {first.rank} on {first.node} {part_failure(first)}"
    return [Change(job.job_id, JobState.FAILED, "end", actor, why, (*exits, ("reason", why)))]


def _yielded(job: JobRecord, parts: list[JobPart]) -> str:
    """Why a job asked to yield counts as having yielded ("" if it did not)."""
    signame = signal_name(job.preempt_signal)
    if all(p.exit_code == YIELD_EXIT_CODE and not p.exit_signal for p in parts):
        return f"all {len(parts)} parts yielded after their checkpoint"
    late = [p for p in parts if p.killed_after_grace]
    if late:
        return (
            f"part {late[0].rank} on {late[0].node} ignored {signame} and was killed at "
            f"the end of its {job.grace_s:.0f}s grace, with the others"
        )
    if any(p.exit_signal == job.preempt_signal for p in parts):
        return f"ended by {signame} before it could checkpoint (it does not handle it)"
    return ""


def _requeue(
    job: JobRecord,
    actor: str,
    why: str,
    parts: list[JobPart],
    exits: tuple[tuple[str, Any], ...],
    yielding: bool = False,
    unlaunched: bool = False,
) -> list[Change]:
    """Back to the queue once every part is gone (through LOST from RUNNING). A yield, or
    a part that could not be launched, counts against --max-restarts."""
    if (yielding or unlaunched) and job.max_restarts >= 0 and job.restarts + 1 > job.max_restarts:
        if yielding:
            final = (
                f"{why}; preempted {job.preemptions} times, over --max-restarts {job.max_restarts}"
            )
        else:
            final = f"{why}; tried {job.restarts + 1} times, over --max-restarts {job.max_restarts}"
        return [
            Change(job.job_id, JobState.FAILED, "end", actor, final, (*exits, ("reason", final)))
        ]
    changes = []
    if job.state is JobState.RUNNING:
        changes.append(Change(job.job_id, JobState.LOST, "lost", actor, why, (("reason", why),)))
    extra: tuple[tuple[str, Any], ...] = (
        ("parts", []),
        ("master_port", 0),
        ("end_request", ""),
        ("preempted_for", 0),
        ("exit_code", exits[1][1]),
        ("exit_signal", exits[2][1]),
    )
    waiting = f"{why}; waiting to resume" if yielding else f"requeued: {why}"
    changes.append(requeue_change(job, actor, why, waiting, extra=extra))
    return changes
