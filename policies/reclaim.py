"""Idle reclaim: who gets the GPUs of a job that has held them idle past its queue's limit.

The claimant is the first job in line that the idle job's GPUs, with what is free on its
node, can hold (GPUs, and CPUs and memory where asked for), and that is not already
claiming GPUs freed for it elsewhere. No one: nothing is reclaimed.
"""

from __future__ import annotations

from collections.abc import Mapping

from policies.snapshot import ClusterSnapshot, PendingJob, RunningJob


def idle_claimant(
    snapshot: ClusterSnapshot, idle: RunningJob, positions: Mapping[int, int]
) -> PendingJob | None:
    node = next((n for n in snapshot.nodes if n.name == idle.node), None)
    if node is None:
        return None
    room = len(node.free_gpus) + idle.gpus
    cpus = node.free_cpus + idle.cpus
    mem = node.free_mem_mb + idle.mem_mb

    def fits(job: PendingJob) -> bool:
        return (
            job.gpus <= room
            and (not job.cpus or job.cpus <= cpus)
            and (not job.mem_mb or job.mem_mb <= mem)
        )

    line = sorted(
        (j for j in snapshot.pending if not j.claimed_node and fits(j)),
        key=lambda j: (positions.get(j.job_id) or 1 << 30, j.submit_time),
    )
    return line[0] if line else None
