"""Choosing preemption victims for a blocked job with a better claim.

Victims must be preemptible, past the minimum runtime, not already yielding, and each
must be one the policy's claim rule lets this job displace. Among the nodes where
preempting can make the job fit, take the smallest set of victims; among equally small
sets, the one that loses the least work since the victims' last checkpoints (a job that
never checkpointed loses everything since its start).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from policies.placement import FreeMap
from policies.snapshot import PendingJob, RunningJob

# (job, victim) -> why the job may displace the victim, or None
ClaimRule = Callable[[PendingJob, RunningJob], str | None]

MAX_SUBSETS_PER_NODE = 4096
MAX_NODES_SEARCHED = 32  # when several victims are needed, only the most promising nodes


@dataclass(frozen=True, slots=True)
class VictimChoice:
    node: str
    victims: tuple[RunningJob, ...]
    reasons: tuple[str, ...]
    work_lost_s: float


def work_lost(job: RunningJob, now: float) -> float:
    saved = (
        job.last_checkpoint
        if job.last_checkpoint and job.last_checkpoint >= job.start_time
        else None
    )
    return max(0.0, now - (saved if saved is not None else job.start_time))


def choose_victims(
    job: PendingJob,
    free: FreeMap,
    running: Sequence[RunningJob],
    now: float,
    min_runtime_s: float,
    claim: ClaimRule,
    off_limits: frozenset[str] | set[str] = frozenset(),
) -> VictimChoice | None:
    if job.gpus > free.widest or job.nodes > 1:
        return None  # jobs across nodes wait for their nodes; they do not preempt
    by_node: dict[str, list[tuple[RunningJob, str]]] = {}
    for r in running:
        if not r.preemptible or r.yielding_to or now - r.start_time < min_runtime_s:
            continue
        for where, held in r.parts:
            if where not in free.nodes or where in off_limits:
                continue
            # a job across nodes, seen from one of them: the part there is what it frees
            view = r if len(r.parts) == 1 else replace(r, parts=((where, held),))
            why = claim(job, view)
            if why is not None:
                by_node.setdefault(where, []).append((view, why))
    # The fewest victims a node needs is found greedily (largest jobs first); only the nodes
    # that need the fewest are searched for the set that loses the least work.
    needs: list[tuple[int, str, int]] = []
    for node, candidates in by_node.items():
        if free.nodes[node].gpu_count < job.gpus:
            continue
        need = job.gpus - len(free.free[node])
        if need <= 0:
            continue
        sizes = [c[0].gpus for c in candidates]
        if max(sizes) >= need:
            needs.append((1, node, need))
            continue
        count, got = 0, 0
        for size in sorted(sizes, reverse=True):
            if got >= need:
                break
            count, got = count + 1, got + size
        if got >= need:
            needs.append((count, node, need))
    if not needs:
        return None
    fewest = min(n[0] for n in needs)
    if fewest == 1:  # the common case: one victim is enough, the least costly one anywhere
        single = min(
            (work_lost(r, now), node, r.job_id, r, why)
            for count, node, need in needs
            if count == 1
            for r, why in by_node[node]
            if r.gpus >= need
        )
        lost, node, _, victim, why = single
        return VictimChoice(node, (victim,), (why,), lost)
    # Several victims: search the nodes whose k least costly candidates lose least, a few.
    searched = sorted(
        (sum(sorted(work_lost(r, now) for r, _ in by_node[node])[:count]), node, need)
        for count, node, need in needs
        if count == fewest
    )[:MAX_NODES_SEARCHED]
    best: tuple[tuple[float, str], VictimChoice] | None = None
    for _bound, node, need in searched:
        count = fewest
        candidates = sorted(by_node[node], key=lambda c: (work_lost(c[0], now), c[0].job_id))
        choice = _cheapest_set(candidates, need, count, now)
        if choice is None:
            continue
        victims, lost = choice
        key = (lost, node)
        if best is None or key < best[0]:
            best = (
                key,
                VictimChoice(
                    node, tuple(v for v, _ in victims), tuple(w for _, w in victims), lost
                ),
            )
    return best[1] if best else None


def _cheapest_set(
    candidates: list[tuple[RunningJob, str]], need: int, size: int, now: float
) -> tuple[tuple[tuple[RunningJob, str], ...], float] | None:
    """Among the sets of `size` candidates that free `need` GPUs, the one losing least work."""
    best: tuple[float, tuple[tuple[RunningJob, str], ...]] | None = None
    for tried, combo in enumerate(itertools.combinations(candidates, size)):
        if tried >= MAX_SUBSETS_PER_NODE:
            break
        if sum(c[0].gpus for c in combo) < need:
            continue
        lost = sum(work_lost(c[0], now) for c in combo)
        if best is None or lost < best[0]:
            best = (lost, combo)
    return (best[1], best[0]) if best is not None else None
