"""Gang placement: all of a job's GPUs on one node, best fit against fragmentation."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from policies.snapshot import NodeView, PendingJob


@dataclass(frozen=True, slots=True)
class Placement:
    node: str
    gpu_indexes: tuple[int, ...]


def _fits_host(node: NodeView, job: PendingJob) -> bool:
    if job.cpus and node.cpus and job.cpus > node.free_cpus:
        return False
    return not (job.mem_mb and node.mem_mb and job.mem_mb > node.free_mem_mb)


def _choose_gpus(node: NodeView, count: int) -> tuple[int, ...]:
    """The `count` free GPUs of `node` with the most NVLink links among them.

    Greedy from each free GPU: add the free GPU with the most links into the chosen set;
    keep the best set, ties to the lowest indexes so the choice is deterministic.
    """
    free = sorted(node.free_gpus)
    if count == len(free):
        return tuple(free)
    peers = {g.index: g.nvlink_peers for g in node.gpus}
    if not any(peers.values()):
        return tuple(free[:count])
    best: tuple[int, tuple[int, ...]] | None = None
    for seed in free:
        chosen = [seed]
        links = 0
        while len(chosen) < count:
            gain, pick = max(
                (sum(1 for c in chosen if g in peers.get(c, ())), -g)
                for g in free
                if g not in chosen
            )
            chosen.append(-pick)
            links += gain
        candidate = tuple(sorted(chosen))
        if best is None or links > best[0] or (links == best[0] and candidate < best[1]):
            best = (links, candidate)
    assert best is not None
    return best[1]


def place(job: PendingJob, nodes: Iterable[NodeView]) -> Placement | None:
    """Best fit: the schedulable node left with the fewest free GPUs after placing `job`."""
    best: NodeView | None = None
    for node in nodes:
        if not node.schedulable or len(node.free_gpus) < job.gpus or not _fits_host(node, job):
            continue
        if best is None or (len(node.free_gpus), node.name) < (len(best.free_gpus), best.name):
            best = node
    if best is None:
        return None
    return Placement(best.name, _choose_gpus(best, job.gpus))


def largest_free_block(nodes: Iterable[NodeView]) -> int:
    return max((len(n.free_gpus) for n in nodes if n.schedulable), default=0)
