"""Choosing preemption victims for a blocked job with a better claim.

Victims must be preemptible, past the minimum runtime, not already yielding, and each
must be one the policy's claim rule lets this job displace. Among the nodes where
preempting can make the job fit, take the smallest set of victims (that the claim rule's
set check, if it has one, accepts as a whole); among equally small sets, the cheapest by
the victim order (a policy parameter, `victim_order`):

- least_work_lost (the default): the least work since the victims' last checkpoints (a
  job that never checkpointed loses everything since its start);
- youngest: the most recently started first;
- lowest_priority: the lowest priority class first, then the least work lost.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Sequence
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


def _age(job: RunningJob, now: float) -> float:
    return max(0.0, now - job.start_time)


def _class_then_work_lost(job: RunningJob, now: float) -> float:
    # a class step outweighs any work lost (1e10 s is over 300 years); sums of a set of
    # victims then compare by their classes first
    return job.priority * 1e10 + work_lost(job, now)


# victim order name -> what a victim costs (lower is taken first; a set costs the sum)
VictimCost = Callable[[RunningJob, float], float]
VICTIM_ORDERS: dict[str, VictimCost] = {
    "least_work_lost": work_lost,
    "youngest": _age,
    "lowest_priority": _class_then_work_lost,
}


def choose_victims(
    job: PendingJob,
    free: FreeMap,
    running: Sequence[RunningJob],
    now: float,
    min_runtime_s: float,
    claim: ClaimRule,
    off_limits: frozenset[str] | set[str] = frozenset(),
    cost: VictimCost = work_lost,
) -> VictimChoice | None:
    """The victims to preempt for `job`, cheapest by `cost`; `work_lost_s` of the choice is
    what they lose, whatever the order."""
    if job.gpus > free.widest or job.nodes > 1:
        return None  # jobs across nodes wait for their nodes; they do not preempt
    by_node: dict[str, list[tuple[RunningJob, str]]] = {}
    # A claim rule may say which victims it answers alike (`victim_key`, e.g. their team
    # and class): then it is asked once per kind of victim, not once per running job.
    victim_key: Callable[[RunningJob], Hashable] | None = getattr(claim, "victim_key", None)
    answers: dict[Hashable, str | None] = {}
    for r in running:
        if not r.preemptible or r.yielding_to or now - r.start_time < min_runtime_s:
            continue
        for where, held in r.parts:
            if where not in free.nodes or where in off_limits:
                continue
            if job.gpu_types and not free.all_of_types(where, job.gpu_types):
                continue
            # a job across nodes, seen from one of them: the part there is what it frees
            view = r if len(r.parts) == 1 else replace(r, parts=((where, held),))
            if victim_key is None or len(r.parts) != 1:
                why = claim(job, view)
            else:
                kind = victim_key(view)
                if kind in answers:
                    why = answers[kind]
                else:
                    why = answers[kind] = claim(job, view)
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
    # A claim rule may also judge victims together (`set_ok`, e.g. that a set leaves their
    # account at its guarantee): then each set chosen must pass it.
    set_ok: Callable[[PendingJob, Sequence[RunningJob]], bool] | None = getattr(
        claim, "set_ok", None
    )
    fewest = min(n[0] for n in needs)
    if fewest == 1:  # the common case: one victim is enough, the least costly one anywhere
        singles = (
            (cost(r, now), node, r.job_id, r, why)
            for count, node, need in needs
            if count == 1
            for r, why in by_node[node]
            if r.gpus >= need
        )
        if set_ok is None:
            single = min(singles, default=None)
        else:  # the least costly that the set check accepts (asked in cost order)
            single = next(
                (s for s in sorted(singles, key=lambda s: s[:3]) if set_ok(job, (s[3],))),
                None,
            )
        if single is not None:
            _, node, _, victim, why = single
            return VictimChoice(node, (victim,), (why,), work_lost(victim, now))
        if set_ok is None:
            return None
    # Several victims: search the nodes whose k least costly candidates lose least, a few.
    # (With a set check, a set may have to be larger than the fewest, a few more are tried.)
    sizes_tried = range(fewest, fewest + (3 if set_ok is not None else 1))
    searched = sorted(
        (sum(sorted(cost(r, now) for r, _ in by_node[node])[:count]), node, need, count)
        for count, node, need in needs
        if count <= sizes_tried[-1]
    )[:MAX_NODES_SEARCHED]
    best: tuple[tuple[float, str], VictimChoice] | None = None
    for _bound, node, need, least in searched:
        candidates = sorted(by_node[node], key=lambda c: (cost(c[0], now), c[0].job_id))
        choice = None
        for count in sizes_tried:
            if least <= count <= len(candidates):
                choice = _cheapest_set(candidates, need, count, now, cost, job, set_ok)
            if choice is not None:
                break
        if choice is None:
            continue
        victims, price = choice
        key = (price, node)
        if best is None or key < best[0]:
            lost = sum(work_lost(v, now) for v, _ in victims)
            best = (
                key,
                VictimChoice(
                    node, tuple(v for v, _ in victims), tuple(w for _, w in victims), lost
                ),
            )
    return best[1] if best else None


def _cheapest_set(
    candidates: list[tuple[RunningJob, str]],
    need: int,
    size: int,
    now: float,
    cost: VictimCost,
    job: PendingJob | None = None,
    set_ok: Callable[[PendingJob, Sequence[RunningJob]], bool] | None = None,
) -> tuple[tuple[tuple[RunningJob, str], ...], float] | None:
    """Among the sets of `size` candidates that free `need` GPUs (and pass `set_ok`), the
    cheapest by `cost`."""
    best: tuple[float, tuple[tuple[RunningJob, str], ...]] | None = None
    for tried, combo in enumerate(itertools.combinations(candidates, size)):
        if tried >= MAX_SUBSETS_PER_NODE:
            break
        if sum(c[0].gpus for c in combo) < need:
            continue
        price = sum(cost(c[0], now) for c in combo)
        if best is not None and price >= best[0]:
            continue
        if set_ok is not None and job is not None and not set_ok(job, [c[0] for c in combo]):
            continue
        if best is None or price < best[0]:
            best = (price, combo)
    return (best[1], best[0]) if best is not None else None
