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

import bisect
import itertools
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace

from policies.placement import FreeMap
from policies.snapshot import PendingJob, RunningJob

# (job, victim) -> why the job may displace the victim, or None
ClaimRule = Callable[[PendingJob, RunningJob], str | None]

MAX_SUBSETS_PER_NODE = 4096
MAX_NODES_SEARCHED = 32  # when several victims are needed, only the most promising nodes
MANY = 64  # more jobs than this added at once: appended, then sorted once


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


def _saved(job: RunningJob) -> float:
    """Since when a job's work would be lost: its last checkpoint, else its start."""
    ckpt = job.last_checkpoint
    return ckpt if ckpt and ckpt >= job.start_time else job.start_time


# victim order -> a sort key that does not change with time and, at any time, orders
# victims as their cost does (the cost is never lower further on); lets a pool of victims
# stay sorted from one cycle to the next
VictimRank = Callable[[RunningJob], tuple[float, ...]]
VICTIM_RANKS: dict[VictimCost, VictimRank] = {
    work_lost: lambda r: (-_saved(r),),
    _age: lambda r: (-r.start_time,),
    _class_then_work_lost: lambda r: (float(r.priority), -_saved(r)),
}

_Entry = tuple[tuple[float, ...], str, int, RunningJob]  # (rank, node, job id, victim)


def _entry_key(entry: _Entry) -> tuple[tuple[float, ...], str, int]:
    return entry[0], entry[1], entry[2]


class VictimPool:
    """Running jobs that may be preempted, grouped by the kind of victim the claim rule
    answers alike (its `victim_key`, e.g. team and class; without one, every victim is
    asked alone), each kind in cost order. A job across nodes is seen from each of its
    nodes as the part it would free there. Made once a cycle, or kept across cycles and
    patched (policies/memo.py); a search checks each victim's age itself."""

    def __init__(
        self, victim_key: Callable[[RunningJob], Hashable] | None, rank: VictimRank
    ) -> None:
        self.victim_key = victim_key
        self.rank = rank
        self.kinds: dict[Hashable, list[_Entry]] = {}
        self.across: dict[int, RunningJob] = {}  # the jobs across nodes among them

    def _views(self, r: RunningJob) -> tuple[RunningJob, ...]:
        if len(r.parts) == 1:
            return (r,)
        return tuple(replace(r, parts=(part,)) for part in r.parts)

    def _kind(self, view: RunningJob) -> Hashable:
        key = self.victim_key
        return key(view) if key is not None else (view.job_id, view.parts[0][0])

    def add(self, r: RunningJob, sort: bool = True) -> None:
        """`sort` False: appended only; `add_all` sorts once after many."""
        if not r.preemptible or r.yielding_to:
            return
        if len(r.parts) > 1:
            self.across[r.job_id] = r
        for view in self._views(r):
            entry = (self.rank(view), view.parts[0][0], view.job_id, view)
            entries = self.kinds.setdefault(self._kind(view), [])
            if sort:
                bisect.insort(entries, entry, key=_entry_key)
            else:
                entries.append(entry)

    def add_all(self, jobs: Sequence[RunningJob]) -> None:
        if len(jobs) <= MANY:
            for r in jobs:
                self.add(r)
            return
        for r in jobs:
            self.add(r, sort=False)
        for entries in self.kinds.values():
            entries.sort(key=_entry_key)

    def drop(self, r: RunningJob) -> None:
        if not r.preemptible or r.yielding_to:
            return
        self.across.pop(r.job_id, None)
        for view in self._views(r):
            kind = self._kind(view)
            entries = self.kinds[kind]
            key = (self.rank(view), view.parts[0][0], view.job_id)
            at = bisect.bisect_left(entries, key, key=_entry_key)
            if at == len(entries) or _entry_key(entries[at]) != key:
                raise KeyError(key)
            del entries[at]
            if not entries:
                del self.kinds[kind]

    def claimed(self, job: PendingJob, claim: ClaimRule) -> list[tuple[Hashable, str]]:
        """The kinds of victim `job` has a claim on, with why (asked once per kind)."""
        out = []
        for kind, entries in self.kinds.items():
            why = claim(job, entries[0][3])
            if why is not None:
                out.append((kind, why))
        return out


def victim_pool(
    eligible: Iterable[RunningJob], claim: ClaimRule, cost: VictimCost, now: float
) -> VictimPool:
    """A pool of `eligible` for one cycle."""
    rank = VICTIM_RANKS.get(cost) or (lambda r: (cost(r, now),))
    pool = VictimPool(getattr(claim, "victim_key", None), rank)
    pool.add_all(list(eligible))
    return pool


def choose_victims(
    job: PendingJob,
    free: FreeMap,
    running: Sequence[RunningJob] | VictimPool,
    now: float,
    min_runtime_s: float,
    claim: ClaimRule,
    off_limits: frozenset[str] | set[str] = frozenset(),
    cost: VictimCost = work_lost,
    skip: Collection[int] = (),
) -> VictimChoice | None:
    """The victims to preempt for `job`, cheapest by `cost`; `work_lost_s` of the choice is
    what they lose, whatever the order. `running` is every running job, or the cycle's
    pool of eligible ones (made with the same cost and time); jobs in `skip` are not taken."""
    if job.gpus > free.widest or job.nodes > 1:
        return None  # jobs across nodes wait for their nodes; they do not preempt
    pool = (
        running
        if isinstance(running, VictimPool)
        else victim_pool(
            (
                r
                for r in running
                if r.preemptible and not r.yielding_to and now - r.start_time >= min_runtime_s
            ),
            claim,
            cost,
            now,
        )
    )
    claimed = pool.claimed(job, claim)
    if not claimed:
        return None
    nodes_up, free_gpus = free.nodes, free.free
    types = job.gpu_types

    def usable(victim: RunningJob, where: str) -> bool:
        return (
            now - victim.start_time >= min_runtime_s
            and victim.job_id not in skip
            and where in nodes_up
            and where not in off_limits
            and len(nodes_up[where].gpus) >= job.gpus
            and not (types and not free.all_of_types(where, types))
        )

    # A claim rule may also judge victims together (`set_ok`, e.g. that a set leaves their
    # account at its guarantee): then each set chosen must pass it.
    set_ok: Callable[[PendingJob, Sequence[RunningJob]], bool] | None = getattr(
        claim, "set_ok", None
    )
    if set_ok is None:
        # The common case: one victim is enough somewhere. The cheapest such victim is
        # among the first of its kind (in cost order) that free what their node lacks, so
        # each kind is read only as far as the cost of the best found so far.
        single: tuple[float, str, int, RunningJob, str] | None = None
        for kind, why in claimed:
            for _, where, job_id, r in pool.kinds[kind]:
                price = cost(r, now)
                if single is not None and price > single[0]:
                    break
                if not usable(r, where):
                    continue
                need = job.gpus - len(free_gpus[where])
                if 0 < need <= r.gpus and (single is None or (price, where, job_id) < single[:3]):
                    single = (price, where, job_id, r, why)
        if single is not None:
            _, node, _, victim, why = single
            return VictimChoice(node, (victim,), (why,), work_lost(victim, now))
    by_node: dict[str, list[tuple[RunningJob, str]]] = {}
    for kind, why in claimed:
        for _, where, _, r in pool.kinds[kind]:
            if not usable(r, where):
                continue
            here = by_node.get(where)
            if here is None:
                by_node[where] = [(r, why)]
            else:
                here.append((r, why))
    # The fewest victims a node needs is found greedily (largest jobs first); only the nodes
    # that need the fewest are searched for the set that loses the least work.
    needs: list[tuple[int, str, int]] = []
    for node, candidates in by_node.items():
        need = job.gpus - len(free_gpus[node])
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
    # (without a set check the scan above has found a single victim wherever one is enough)
    if fewest == 1 and set_ok is not None:  # the least costly single the set check accepts
        singles = sorted(
            (
                (cost(r, now), node, r.job_id, r, why)
                for count, node, need in needs
                if count == 1
                for r, why in by_node[node]
                if r.gpus >= need
            ),
            key=lambda s: s[:3],
        )
        single = next((s for s in singles if set_ok(job, (s[3],))), None)
        if single is not None:
            _, node, _, victim, why = single
            return VictimChoice(node, (victim,), (why,), work_lost(victim, now))
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
