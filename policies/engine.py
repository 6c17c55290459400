"""The decision every policy shares, once the policy has put the pending jobs in order:

1. start jobs in order while they fit;
2. the first that does not fit may preempt (if the policy's claim rule allows) or gets a
   reservation: the earliest time and place its gang will be free (EASY backfill);
3. each job behind it starts only if it fits now and does not delay that reservation:
   it ends before the reserved start, or it stays off the reserved GPUs;
4. every job left waiting gets a reason.
"""

from __future__ import annotations

import functools
import heapq
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from policies.handoff import choose_handoffs
from policies.memo import CycleMemo, RunningIndex
from policies.placement import FreeMap, Placement
from policies.preemption import (
    VICTIM_ORDERS,
    VICTIM_RANKS,
    ClaimRule,
    VictimPool,
    choose_victims,
    victim_pool,
)
from policies.quotabook import QuotaBook
from policies.quotaclaim import quota_claim
from policies.snapshot import (
    ClusterSnapshot,
    NodeView,
    PendingJob,
    Plan,
    Preemption,
    RunningJob,
    Start,
)

INF = float("inf")
_JOB_ID = operator.attrgetter("job_id")
_GPUS = operator.attrgetter("gpus")
_CLAIMED = operator.attrgetter("claimed_node")
_TYPES = operator.attrgetter("gpu_types")
# what a waiting job's words depend on, when its case is the common one (engine.decide)
_KIND = operator.attrgetter("gpus", "cpus", "mem_mb", "nodes", "user")


class _Words(dict[tuple[int, int, int, int, str], str]):
    """Words by kind of job, each made when first asked."""

    def __init__(self, make: Callable[[tuple[int, int, int, int, str]], str]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, kind: tuple[int, int, int, int, str]) -> str:
        text = self[kind] = self.make(kind)
        return text


@dataclass(frozen=True, slots=True)
class Knobs:
    backfill: bool = True
    preemption: bool = True
    min_runtime_s: float = 600.0  # a job younger than this is never preempted
    preemption_tries: int = (
        2  # blocked jobs per cycle that may look for victims (each cycle adds more)
    )
    explain: bool = True  # word a reason for each waiting job (the simulator needs none)
    victim_order: str = "least_work_lost"  # a key of preemption.VICTIM_ORDERS


@dataclass(slots=True)
class Reservation:  # mutable: backfill spends its spare GPUs
    job: PendingJob
    start: float  # when its gang is expected to be free
    nodes: frozenset[str]
    spare: dict[str, int]  # GPUs on reserved nodes that the job will not need at `start`


@functools.cache
def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _when(t: float, now: float) -> str:
    if t == INF:
        return "at an unknown time (running jobs have no time limit)"
    mins = (t - now) / 60
    return f"in about {mins:.0f} min" if mins < 120 else f"in about {mins / 60:.1f} h"


def why_not_placed(job: PendingJob, free: FreeMap) -> str:
    if not free.nodes:
        return "no node is up"
    if job.gpus > free.total:
        return f"needs {job.gpus} GPUs, the cluster has {free.total} up"
    if job.nodes > 1:
        wide = sum(1 for n in free.nodes.values() if n.gpu_count >= job.gpus_per_node)
        return (
            f"needs {job.gpus_per_node} free GPUs on each of {job.nodes} nodes "
            f"({wide} nodes have {job.gpus_per_node} or more GPUs)"
        )
    if job.gpus > free.widest:
        idle = sum(free.nodes[n].gpu_count for n in free.idle_nodes())
        return f"needs {job.gpus} GPUs on whole nodes, {idle} GPUs are on idle nodes"
    block = free.largest_block()
    if block >= job.gpus:
        return f"needs {job.gpus} GPUs on one node with {job.cpus} CPUs and {job.mem_mb} MB free"
    return f"needs {job.gpus} GPUs on one node, largest free block is {block}"


def _reserve(
    job: PendingJob,
    free: FreeMap,
    running: Sequence[RunningJob],
    now: float,
    index: RunningIndex | None = None,
) -> Reservation:
    """`index`: the snapshot's running jobs indexed (policies/memo.py); `running` is then
    only the jobs started in this cycle."""
    if index is not None and job.nodes == 1 and not job.gpu_types and job.gpus <= free.widest:
        return _reserve_sweep(job, free, index, running, now)
    ends: dict[str, list[tuple[float, int]]] = {}
    if index is not None:
        ends = {name: list(parts) for name, parts in index.on_node.items()}
    for r in running:
        for where, held in r.parts:
            ends.setdefault(where, []).append((r.expected_end(), len(held)))
    if job.nodes > 1:
        return _reserve_parts(job, free, ends, now)
    if job.gpus <= free.widest:
        best: tuple[float, str, int] | None = None
        for name, node in free.nodes.items():
            if node.gpu_count < job.gpus:
                continue
            if job.gpu_types and len(free.of_types(job.gpu_types) & _gpus_of(node)) < job.gpus:
                continue
            have, at = len(free.free[name]), now
            for end, count in sorted(ends.get(name, [])):
                if have >= job.gpus:
                    break
                have, at = have + count, end
            if have < job.gpus:
                at = INF
            if best is None or (at, name) < (best[0], best[1]):
                best = (at, name, have - job.gpus)
        if best is None:  # no node has enough GPUs of the job's types
            return Reservation(job, INF, frozenset(), {})
        return Reservation(job, best[0], frozenset({best[1]}), {best[1]: max(0, best[2])})
    idle_at = sorted(
        (max((e for e, _ in ends.get(name, [])), default=now), name) for name in free.nodes
    )
    chosen, total, at = [], 0, now
    for t, name in idle_at:
        if total >= job.gpus:
            break
        chosen.append(name)
        total += free.nodes[name].gpu_count
        at = max(at, t)
    return Reservation(job, at if total >= job.gpus else INF, frozenset(chosen), {})


def _reserve_sweep(
    job: PendingJob, free: FreeMap, index: RunningIndex, fresh: Sequence[RunningJob], now: float
) -> Reservation:
    """The reservation _reserve makes for a job on one node, without looking at every
    node: the running jobs' parts are taken in order of their expected end until a node
    has the GPUs the job needs (then those ending at that same time, for ties by name)."""
    need = job.gpus
    nodes, free_gpus = free.nodes, free.free
    best_at, best_name, best_have = INF, "", 0
    for k in range(need, free.widest + 1):  # nodes with the GPUs free now
        for name in free.buckets[k]:
            if not best_name or name < best_name:
                best_at, best_name, best_have = now, name, k
    have: dict[str, int] = {}  # GPUs a node has so far in the sweep; -1: out of it
    added = sorted(
        (r.expected_end(), len(held), where, r.job_id) for r in fresh for where, held in r.parts
    )
    for end, count, where, _ in heapq.merge(index.by_end, added):
        if end > best_at or end == INF:
            break
        n = have.get(where)
        if n is None:
            node = nodes.get(where)
            if node is None or len(node.gpus) < need or len(free_gpus[where]) >= need:
                have[where] = -1  # cannot hold the job, or already counted as free now
                continue
            n = len(free_gpus[where])
        elif n < 0:
            continue
        n += count
        if n < need:
            have[where] = n
            continue
        have[where] = -1
        if end < best_at or where < best_name:
            best_at, best_name, best_have = end, where, n
    if not best_name:  # no node has the GPUs at a known time: the first by name that could
        names = [name for name, node in nodes.items() if len(node.gpus) >= need]
        if not names:
            return Reservation(job, INF, frozenset(), {})
        best_name = min(names)
        parts = list(index.on_node.get(best_name, ()))
        parts += [(r.expected_end(), len(h)) for r in fresh for w, h in r.parts if w == best_name]
        best_have = len(free_gpus[best_name])
        for _, count in sorted(parts):
            if best_have >= need:
                break
            best_have += count
    return Reservation(job, best_at, frozenset({best_name}), {best_name: max(0, best_have - need)})


def _yielding(running: Iterable[RunningJob]) -> dict[int, list[RunningJob]]:
    """Preemptor -> the jobs yielding their GPUs to it, by job id."""
    out: dict[int, list[RunningJob]] = {}
    for r in running:
        if r.yielding_to:
            out.setdefault(r.yielding_to, []).append(r)
    return {k: sorted(v, key=lambda r: r.job_id) for k, v in out.items()}


def _gpus_of(node: NodeView) -> frozenset[tuple[str, int]]:
    return frozenset((node.name, g.index) for g in node.gpus)


def _reserve_parts(
    job: PendingJob, free: FreeMap, ends: dict[str, list[tuple[float, int]]], now: float
) -> Reservation:
    """N parts of G GPUs: the N nodes that will have G free soonest (by the running
    jobs' time limits); the job starts when the last of them does."""
    each = job.gpus_per_node
    ready = []
    for name, node in free.nodes.items():
        if node.gpu_count < each:
            continue
        have, at = len(free.free[name]), now
        for end, count in sorted(ends.get(name, [])):
            if have >= each:
                break
            have, at = have + count, end
        ready.append((at if have >= each else INF, name, have - each))
    chosen = sorted(ready)[: job.nodes]
    if len(chosen) < job.nodes:
        return Reservation(job, INF, frozenset(n for _, n, _ in chosen), {})
    start = max(at for at, _, _ in chosen)
    return Reservation(
        job, start, frozenset(n for _, n, _ in chosen), {n: max(0, s) for _, n, s in chosen}
    )


def _backfill(job: PendingJob, free: FreeMap, res: Reservation, now: float) -> Placement | None:
    ends_in_time = job.time_limit_s > 0 and res.start != INF and now + job.time_limit_s <= res.start
    if ends_in_time:
        return free.find(job)
    placement = free.find(job, exclude=res.nodes)
    if placement is not None:
        return placement
    for node, spare in res.spare.items():
        if job.gpus <= spare:
            placement = free.find(job, exclude=frozenset(free.nodes) - {node})
            if placement is not None:
                res.spare[node] -= job.gpus
                return placement
    return None


def decide(
    snapshot: ClusterSnapshot,
    ranked: Sequence[PendingJob],
    knobs: Knobs,
    claim: ClaimRule | None = None,
    context: Callable[[PendingJob], str] | None = None,
    memo: CycleMemo | None = None,
) -> Plan:
    """`memo`: what the policy keeps between cycles (policies/memo.py), already brought up
    to date with this snapshot; without it everything is read from the snapshot."""
    now = snapshot.now
    index = memo.running if memo is not None else None
    free = FreeMap(snapshot.nodes, memo.nodes.free if memo is not None else None)
    running: list[RunningJob] = [] if index is not None else list(snapshot.running)
    yielding = index.yielding_to() if index is not None else _yielding(snapshot.running)
    starts: list[Start] = []
    preemptions: list[Preemption] = []
    reasons: dict[int, str] = {}
    held: dict[int, str] = {}  # jobs that would fit but a quota holds back (Plan.held)
    reservation: Reservation | None = None
    tries = knobs.preemption_tries
    # quotas (policies/quota.py, quotabook.py): who may start, and who may reclaim a guarantee
    quotas = snapshot.quotas
    book = QuotaBook(snapshot, quotas) if quotas is not None and quotas.active else None
    if book is not None:
        book.min_runtime_s = knobs.min_runtime_s
        claim = quota_claim(book, claim)
        context = book.with_context(context)

    def note(job: PendingJob, why: str) -> None:
        extra = context(job) if context else ""
        reasons[job.job_id] = f"{why}; {extra}" if extra else why

    def start(job: PendingJob, placement: Placement, backfilled: bool) -> None:
        free.take(placement.parts, job)
        why_cache.clear()
        if book is not None:
            book.charge(job, placement.parts)
        starts.append(Start(job.job_id, placement.parts, backfilled))
        limit = job.time_limit_s
        running.append(
            RunningJob(job.job_id, job.user, job.queue, placement.parts, now, job.priority, limit)
        )

    explain = knobs.explain
    # (gpus, cpus, mem, nodes) -> text, while free is unchanged
    why_cache: dict[tuple[int, int, int, int], str] = {}

    def why_not(job: PendingJob) -> str:
        key = (job.gpus, job.cpus, job.mem_mb, job.nodes)
        text = why_cache.get(key)
        if text is None:
            text = why_cache[key] = why_not_placed(job, free)
        return text

    # Nodes promised to a job that is waiting for victims to yield: nobody else may use them.
    promised: set[str] = set()
    # who could be preempted at all, whoever asks: the lowest priority class among them
    victim_cost = VICTIM_ORDERS[knobs.victim_order]
    victim_rank = VICTIM_RANKS[victim_cost]
    min_runtime = knobs.min_runtime_s
    eligible: list[RunningJob] = []
    if index is not None:
        lowest = index.lowest_eligible_class(now, min_runtime)
    else:
        eligible = [
            r
            for r in snapshot.running
            if r.preemptible and not r.yielding_to and now - r.start_time >= min_runtime
        ]
        lowest = min((r.priority for r in eligible), default=None)
    lowest_class = lowest or 0
    could_claim = getattr(claim, "could_claim", None)
    # the claim rule's victim kinds may be kept from one cycle to the next (`kinds_of`:
    # what its `victim_key` depends on, e.g. the account tree)
    kinds_of = getattr(claim, "kinds_of", None)

    if not knobs.preemption or claim is None or lowest is None:
        tries = 0  # no one can be preempted this cycle

    # who could be preempted, grouped once a cycle for the searches (preemption.py)
    pool: VictimPool | None = None

    def try_preempt(job: PendingJob) -> bool:
        nonlocal tries, pool, eligible
        if not knobs.preemption or claim is None or lowest is None:
            return False
        # a guarantee due back is reclaimed whatever the tries left (few jobs are ever due)
        reclaiming = book is not None and book.could_reclaim(job)
        if tries <= 0 and not reclaiming:
            return False
        if job.priority <= lowest_class and could_claim is not None and not could_claim(job):
            return False  # no claim on anyone: not worth a search, nor a try
        tries -= 0 if reclaiming else 1
        if pool is None and index is not None and kinds_of is not None:
            key = (kinds_of, victim_rank)
            pool = index.pool(key, getattr(claim, "victim_key", None), victim_rank)
        elif pool is None:
            if index is not None:  # (kinds that cannot be kept: this cycle's alone)
                eligible = [
                    r
                    for r in snapshot.running
                    if r.preemptible and not r.yielding_to and now - r.start_time >= min_runtime
                ]
            pool = victim_pool(eligible, claim, victim_cost, now)
        skip = {p.job_id for p in preemptions}  # a job across nodes with a part promised too
        skip.update(
            r.job_id for r in pool.across.values() if any(w in promised for w, _ in r.parts)
        )
        # a guarantee comes before a backfill reservation: a reclaim may take from its nodes
        held_for = reservation.nodes if reservation is not None and not reclaiming else ()
        off = promised | frozenset(held_for)
        choice = choose_victims(
            job, free, pool, now, knobs.min_runtime_s, claim, off, victim_cost, skip
        )
        if choice is None:
            return False
        if book is not None and book.admit_after(job, free, choice.victims):
            return False  # its quotas would then hold it back: the victims would lose for nothing
        for victim, why in zip(choice.victims, choice.reasons, strict=True):
            preemptions.append(Preemption(victim.job_id, job.job_id, why, choice.node))
        promised.add(choice.node)
        ids = ", ".join(str(v.job_id) for v in choice.victims)
        note(job, f"preempting job {ids} on {choice.node}")
        if book is not None:  # the GPUs being freed count as the job's from now on
            free_here = ((choice.node, tuple(free.free[choice.node])),)
            book.promise(job, (*free_here, *(v.parts[0] for v in choice.victims)), choice.victims)
        return True

    # Jobs that preempted others earlier get the GPUs freed for them first. A node is
    # promised only while victims are yielding to the job: once they are gone, the job
    # starts there now or its claim lapses (it waits in line like any other).
    for job in filter(_CLAIMED, ranked):  # (few: found at C speed)
        node = job.claimed_node
        if not node or node not in free.nodes or job.job_id in yielding:
            if node and job.job_id in yielding:
                promised.add(node)
            continue
        if book is not None:
            job, over = book.admit(job, free)  # narrowed to the GPU types its quotas allow
            if over:
                continue  # over a quota now: it waits in line like any other (reason below)
        placement = free.find(job, exclude=frozenset(free.nodes) - {node})
        if placement is not None:
            start(job, placement, backfilled=False)
    started = {s.job_id for s in starts}
    handoff = snapshot.slurm is not None

    def cannot_run_here(job: PendingJob) -> bool:
        """True when the job cannot run here now, whatever the others do (it is told why)."""
        if job.job_id in started:
            return True
        if handoff and job.handoff_after_s == 0:
            return True  # it goes to Slurm, not here (policies/handoff.py)
        if job.gpus > free.total or not free.nodes:
            if explain:  # cannot run here now, and so blocks no one
                note(job, why_not_placed(job, free))
            return True
        if job.gpu_types and free.typed_total(job.gpu_types) < job.gpus:
            if explain:
                have = free.typed_total(job.gpu_types)
                kinds = ", ".join(sorted(job.gpu_types))
                note(job, f"needs {job.gpus} GPUs of type {kinds}, {have} are up")
            return True
        return False

    def waits_apart(job: PendingJob) -> bool:
        """True when the job waits for a reason of its own, not for its place in line."""
        if not snapshot.multi_node and job.gpus > free.widest:
            if explain:
                note(
                    job,
                    f"needs {job.gpus} GPUs on one node, the largest has {free.widest}; "
                    "jobs across nodes are not launched yet",
                )
            return True
        waiting_on = yielding.get(job.job_id)
        if waiting_on:
            ids = ", ".join(str(r.job_id) for r in waiting_on)
            note(job, f"waiting for job {ids} to yield its GPUs")
            promised.update(node for r in waiting_on for node, _ in r.parts)
            return True
        return False

    def explain_rest(rest: Sequence[PendingJob], behind: str) -> None:
        """Why each job of `rest` waits, once no GPU is free and no preemption is left to
        try: tens of thousands of jobs a cycle at scale, so the words are made once per
        kind of job (its size, and its user when the policy's context speaks of the user
        alone: `of_user`), the jobs are sorted into kinds at C speed, and only the few with
        a case of their own (GPU types, too wide, handed off, started, yielding) go through
        the full checks."""
        of_user: Callable[[str], str] | None = getattr(context, "of_user", None)
        if context is not None and of_user is None:
            for job in rest:  # words of its own for each job: asked one by one
                if not cannot_run_here(job) and not waits_apart(job):
                    note(job, behind or why_not(job))
            return
        cap = free.total if snapshot.multi_node else min(free.total, free.widest)
        alone: list[PendingJob] = []
        if any(map(_TYPES, rest)) or max(map(_GPUS, rest)) > cap or handoff:

            def own_case(job: PendingJob) -> bool:
                return bool(
                    job.gpu_types or job.gpus > cap or (handoff and job.handoff_after_s == 0)
                )

            alone = list(filter(own_case, rest))
        words = _Words(lambda kind: kind_words(kind, behind, of_user))
        kinds = map(_KIND, rest)
        reasons.update(zip(map(_JOB_ID, rest), map(words.__getitem__, kinds), strict=True))
        if started or yielding:
            ids = list(map(_JOB_ID, rest))
            in_rest = set(ids)
            alone += [rest[ids.index(i)] for i in started | yielding.keys() if i in in_rest]
        for job in alone:
            reasons.pop(job.job_id, None)
            if not cannot_run_here(job) and not waits_apart(job):
                note(job, behind or why_not(job))

    def kind_words(
        kind: tuple[int, int, int, int, str], behind: str, of_user: Callable[[str], str] | None
    ) -> str:
        gpus, cpus, mem_mb, nodes, user = kind
        if behind:
            why = behind
        else:  # why_not of a job of that kind (all it reads of one)
            each = gpus // nodes if nodes > 1 else 0
            like = PendingJob(
                0, user, "", gpus, 0, 0.0, cpus, mem_mb, nodes=nodes, gpus_per_node=each
            )
            why = why_not(like)
        extra = of_user(user) if of_user is not None else ""
        return f"{why}; {extra}" if extra else why

    for at, job in enumerate(ranked):
        if cannot_run_here(job):
            continue
        if book is not None:
            job, over = book.admit(job, free)
            if over:  # a quota holds it back, not the cluster: it blocks no one
                if free.find(job, exclude=frozenset(promised)) is not None:
                    held[job.job_id] = "quota"  # it would fit: the GPUs idle for a quota
                if explain:
                    note(job, over)
                continue
        if waits_apart(job):
            continue
        if reservation is None:
            placement = free.find(job, exclude=frozenset(promised))
            if placement is not None:
                start(job, placement, backfilled=False)
                continue
            if try_preempt(job):
                continue
            reservation = _reserve(job, free, running, now, index)
            reservation.nodes = reservation.nodes | promised
            if explain:
                where = ", ".join(sorted(reservation.nodes - promised)) or "a node"
                when = _when(reservation.start, now)
                note(
                    job,
                    f"{why_not_placed(job, free)}; expected to start on {where} {when}",
                )
            continue
        # Once no GPU is free and no preemption is left to try, nothing more can start:
        # the jobs from here on are only told why they wait (with quotas a guarantee due
        # back may still preempt: no short path then).
        if not free.free_count and tries <= 0 and book is None:
            if explain:
                first = reservation.job.job_id
                behind = "" if knobs.backfill else f"behind job {first}, which is first in line"
                explain_rest(ranked[at:], behind)
            break
        # behind the first blocked job: backfill, if the job can fit anywhere at all now
        if knobs.backfill and free.largest_block() >= min(job.gpus, free.widest):
            placement = _backfill(job, free, reservation, now)
            if placement is not None:
                start(job, placement, backfilled=True)
                continue
            why = f"would delay job {reservation.job.job_id}, which is first in line"
        elif knobs.backfill:
            why = why_not(job) if explain else ""
        else:
            why = f"behind job {reservation.job.job_id}, which is first in line"
        if try_preempt(job):
            continue
        if explain:
            note(job, why)
    order = tuple(map(_JOB_ID, ranked))
    plan = Plan(
        tuple(starts),
        MappingProxyType(reasons),
        tuple(preemptions),
        order,
        held=MappingProxyType(held),
    )
    return choose_handoffs(snapshot, plan, book)
