"""Priority, then first-in first-out.

Pending jobs start in order of (priority desc, submit time, id). The first job that cannot
be placed blocks the jobs ranked below it, so a wide job is never starved by a stream of
narrow ones; a job that no node could hold even when empty does not block anyone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from policies.placement import largest_free_block, place
from policies.snapshot import ClusterSnapshot, NodeView, PendingJob, Plan, Start


def rank_key(job: PendingJob) -> tuple[int, float, int]:
    return (-job.priority, job.submit_time, job.job_id)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _take(node: NodeView, job: PendingJob, gpus: tuple[int, ...]) -> NodeView:
    return replace(
        node,
        free_gpus=node.free_gpus - frozenset(gpus),
        free_cpus=node.free_cpus - job.cpus if node.cpus else node.free_cpus,
        free_mem_mb=node.free_mem_mb - job.mem_mb if node.mem_mb else node.free_mem_mb,
    )


def why_not_placed(job: PendingJob, nodes: tuple[NodeView, ...]) -> str:
    up = [n for n in nodes if n.schedulable]
    if not up:
        return "no node is up"
    widest = max(n.gpu_count for n in up)
    if job.gpus > widest:
        return f"needs {job.gpus} GPUs on one node, the largest up node has {widest}"
    block = largest_free_block(up)
    if block >= job.gpus:
        return f"needs {job.gpus} GPUs on one node with {job.cpus} CPUs and {job.mem_mb} MB free"
    return f"needs {job.gpus} GPUs on one node, largest free block is {block}"


@dataclass(frozen=True)
class PriorityFifo:
    name: str = "priority"

    def decide(self, snapshot: ClusterSnapshot) -> Plan:
        nodes = {n.name: n for n in snapshot.nodes}
        starts: list[Start] = []
        reasons: dict[int, str] = {}
        blocked_by: PendingJob | None = None
        for position, job in enumerate(sorted(snapshot.pending, key=rank_key), start=1):
            if blocked_by is not None:
                reasons[job.job_id] = (
                    f"{_ordinal(position)} in line, behind job {blocked_by.job_id} "
                    f"(priority {blocked_by.priority}, needs {blocked_by.gpus} GPUs)"
                )
                continue
            placement = place(job, nodes.values())
            if placement is None:
                scratch = tuple(nodes.values())
                reasons[job.job_id] = why_not_placed(job, scratch)
                if any(n.schedulable and n.gpu_count >= job.gpus for n in scratch):
                    blocked_by = job
                continue
            nodes[placement.node] = _take(nodes[placement.node], job, placement.gpu_indexes)
            starts.append(Start(job.job_id, placement.node, placement.gpu_indexes))
        return Plan.of(starts, reasons)


@dataclass(frozen=True)
class Fifo(PriorityFifo):
    """Submit order alone; the priority field is ignored."""

    name: str = "fifo"

    def decide(self, snapshot: ClusterSnapshot) -> Plan:
        flat = tuple(replace(j, priority=0) for j in snapshot.pending)
        return PriorityFifo.decide(self, replace(snapshot, pending=flat))
