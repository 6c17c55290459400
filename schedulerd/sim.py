"""`gshare sim`: replay a job trace through the very policies the scheduler runs.

A virtual clock and simulated agents: at each submit or finish, the usage ledger is
brought up to date, a ClusterSnapshot is built and the policy's `decide` runs; starts
and preemptions take effect at once. A preempted job keeps the work up to its last
checkpoint (every --checkpoint-every minutes of its run; none if 0), loses the rest and
pays --restart-cost seconds when it starts again. Time limits are the jobs' real
durations (perfect estimates), so backfill sees what a well-estimating user would give.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gshare.checkpoint import YIELD_EXIT_CODE
from gshare.config import Config
from policies import Account, AccountTree, Policy
from policies.quota import Quotas
from schedulerd.changes import JobReport, report_changes
from schedulerd.cycle import Cycle
from schedulerd.gang import gang_report
from schedulerd.jobstate import JobState
from schedulerd.ledger import Ledger
from schedulerd.model import GpuInfo, JobRecord, NodeRecord, NodeState
from schedulerd.state import ClusterState, MemoryJournal
from schedulerd.store import Change, NewJob
from schedulerd.trace import (
    AFTER,
    COLUMNS,
    STATUSES,
    TraceError,
    TraceJob,
    _dependency,
    _names,
    check_dependencies,
    read_trace,
)

__all__ = [  # with what schedulerd/trace.py reads, `gshare sim`'s API
    "AFTER",
    "COLUMNS",
    "GROUP_BY",
    "STATUSES",
    "SimResult",
    "TraceError",
    "TraceJob",
    "check_dependencies",
    "fair_share_unit",
    "jain",
    "plot",
    "read_trace",
    "report",
    "simulate",
    "water_fill",
]


def water_fill(
    capacity: float, demand: dict[str, float], weight: dict[str, float]
) -> dict[str, float]:
    """Max-min division of `capacity` among those with demand, by weight, capped by demand."""
    out = {k: 0.0 for k in demand}
    active = {k for k, d in demand.items() if d > 0 and weight.get(k, 0) > 0}
    left = capacity
    while active and left > 1e-9:
        total_w = sum(weight[k] for k in active)
        step = {k: left * weight[k] / total_w for k in active}
        capped = {k for k in active if out[k] + step[k] >= demand[k] - 1e-9}
        if not capped:
            for k in active:
                out[k] += step[k]
            break
        for k in capped:
            left -= demand[k] - out[k]
            out[k] = demand[k]
        active -= capped
    return out


def jain(values: Sequence[float]) -> float:
    if not values:
        return 1.0
    square = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * square) if square > 0 else 1.0


@dataclass
class _Fairness:
    """Time-weighted Jain's index of allocation / entitlement, and GPU-seconds received vs
    entitled, for one grouping (teams or users)."""

    weight: dict[str, float]
    jain_time: float = 0.0
    jain_sum: float = 0.0
    got: dict[str, float] = field(default_factory=dict)
    entitled: dict[str, float] = field(default_factory=dict)

    def add(self, dt: float, capacity: int, alloc: dict[str, int], demand: dict[str, int]) -> None:
        wanting = {k: float(v) for k, v in demand.items() if v > 0}
        if not wanting:
            return
        ent = water_fill(capacity, wanting, self.weight)
        ratios = [alloc.get(k, 0) / e for k, e in ent.items() if e > 1e-9]
        if ratios:
            self.jain_sum += dt * jain(ratios)
            self.jain_time += dt
        for k, e in ent.items():
            self.entitled[k] = self.entitled.get(k, 0.0) + dt * e
        for k, a in alloc.items():
            self.got[k] = self.got.get(k, 0.0) + dt * a

    def index(self) -> float:
        return self.jain_sum / self.jain_time if self.jain_time else 1.0


# ------------------------------------------------------------------ the simulation


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


@dataclass
class SimResult:
    policy: str
    nodes: int
    gpus_per_node: int
    jobs: int
    left_out: int
    avg_jct_s: float
    median_jct_s: float
    p95_jct_s: float
    avg_wait_s: float
    median_wait_s: float
    p95_wait_s: float
    utilization: float
    makespan_s: float
    preemptions: int
    jain_fairness: float
    jain_fairness_users: float
    groups: dict[str, dict[str, float]]
    users: dict[str, dict[str, float]]
    cycles: int
    # what preemption cost, in GPU-hours: work since the victims' last checkpoints, and
    # the restart cost they paid when they started again
    lost_work_gpu_h: float = 0.0
    restart_gpu_h: float = 0.0
    # GPU-hours idle while a waiting job would have fit: by why it was not started
    # ("reservation": held for the first job in line or a preemptor; "fragmentation": free
    # in total but not on one node; or the cause the policy named, e.g. "quota")
    idle_gpu_h: dict[str, float] = field(default_factory=dict)
    group_by: str = "group"
    cancelled: int = 0  # jobs whose dependency could never be met (the `after` column)
    series: dict[str, list[float]] = field(repr=False, default_factory=dict)
    series_groups: dict[str, list[float]] = field(repr=False, default_factory=dict)
    # what the scheduler's own core did: starts and preemptions in order, (time, job id)
    starts: list[tuple[float, int]] = field(repr=False, default_factory=list)
    preempted: list[tuple[float, int]] = field(repr=False, default_factory=list)

    @property
    def preemption_gpu_h(self) -> float:
        return self.lost_work_gpu_h + self.restart_gpu_h

    def as_json(self) -> dict[str, Any]:
        skip = ("series", "series_groups", "starts", "preempted")
        out = {k: v for k, v in self.__dict__.items() if k not in skip}
        out["preemption_gpu_h"] = self.preemption_gpu_h
        out["idle_waiting_gpu_h"] = sum(self.idle_gpu_h.values())
        return out


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


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


GROUP_BY = ("group", "user")


def fair_share_unit(jobs: Iterable[TraceJob], group_by: str) -> list[TraceJob]:
    """The trace with `group` set to the unit fair share is measured over: the trace's own
    group column (an empty one: the user alone), or each user (`group_by="user"`)."""
    if group_by not in GROUP_BY:
        raise TraceError(f"group_by must be one of {', '.join(GROUP_BY)}, not {group_by!r}")
    return [j if j.group and group_by == "group" else replace(j, group=j.user) for j in jobs]


def simulate(
    trace: Iterable[TraceJob],
    policy: Policy,
    nodes: int,
    gpus_per_node: int,
    half_life_s: float = 7 * 86400.0,
    checkpoint_every_s: float = 0.0,
    restart_cost_s: float = 60.0,
    record_series: bool = False,
    group_by: str = "group",
    quotas: Quotas | None = None,
    watch: Watch | None = None,
) -> SimResult:
    """Replay `trace` through the scheduler's own core (schedulerd/cycle.py, the change
    builders, the ledger, ClusterState over a journal in memory) on a virtual clock.

    `quotas` (accounts are the trace's groups) are the cycle's, and a job is looked at again
    when it has waited their reclaim_after, and while its reclaim is due, when a running
    job passes the policy's min_runtime_s (the daemon retries each heartbeat). `watch` sees
    the running and pending jobs after each instant's decisions (tests check invariants
    with it)."""
    return asyncio.run(
        _simulate(
            fair_share_unit(trace, group_by),
            policy,
            nodes,
            gpus_per_node,
            half_life_s,
            checkpoint_every_s,
            restart_cost_s,
            record_series,
            group_by,
            quotas,
            watch,
        )
    )


# (now, running, pending): each job's trace row, and whether it is running
Watch = Callable[[float, Sequence[TraceJob], Sequence[TraceJob]], None]


async def _simulate(
    all_jobs: list[TraceJob],
    policy: Policy,
    nodes: int,
    gpus_per_node: int,
    half_life_s: float,
    checkpoint_every_s: float,
    restart_cost_s: float,
    record_series: bool,
    group_by: str,
    quotas: Quotas | None = None,
    watch: Watch | None = None,
) -> SimResult:
    total = nodes * gpus_per_node
    # a job wider than a node runs across nodes, as the daemon runs it; wider than the
    # whole cluster it never could, and neither could the jobs that wait on it
    check_dependencies(all_jobs)
    wide = {j.name for j in all_jobs if j.gpus > total}
    fits = [j for j in all_jobs if j.gpus <= total]
    while wide:
        waiting = {j.name for j in fits if j.after and _names(j.after) & wide}
        fits = [j for j in fits if j.name not in waiting]
        wide = waiting
    left_out = len(all_jobs) - len(fits)
    ordered = sorted(fits, key=lambda t: t.submit)
    groups = sorted({t.group for t in ordered})
    user_group: dict[str, str] = {}
    for submitted in ordered:
        user_group.setdefault(submitted.user, submitted.group)
    tree = AccountTree.build(
        Account(
            "root",
            1.0,
            tuple(
                Account(
                    g, 1.0, (), tuple((u, 1.0) for u in sorted(user_group) if user_group[u] == g)
                )
                for g in groups
            ),
        ),
        default_account=groups[0] if groups else "default",
    )
    clock = _Clock(ordered[0].submit if ordered else 0.0)
    config = Config(half_life_s=half_life_s)
    journal = MemoryJournal()
    state = ClusterState(journal, clock)
    ledger = Ledger(half_life_s)
    peers = [list(range(gpus_per_node)) for _ in range(gpus_per_node)]
    for i in range(nodes):
        name = f"n{i:04d}"
        gpus = [
            GpuInfo(g, f"GPU-{name}-{g}", "sim", 81920, [p for p in peers[g] if p != g])
            for g in range(gpus_per_node)
        ]
        state.nodes[name] = NodeRecord(name, gpus, 0, 0, state=NodeState.UP, last_seen=clock.now)
    jobs: dict[int, _Job] = {}
    agents = SimAgents(state, jobs, checkpoint_every_s, restart_cost_s)

    def accrue(now: float) -> None:
        ledger.accrue(now, state.jobs.values())

    state.before_freeing = accrue
    cycle = Cycle(
        config,
        state,
        ledger,
        policy,
        agents,
        accrue,
        last_checkpoint=agents.last_checkpoint,
        multi_node=True,
    )
    cycle.accounts = tree
    if quotas is not None:
        cycle.quotas = quotas

    trace_of: dict[int, TraceJob] = {}
    events: list[tuple[float, int, int, int, int]] = []  # (time, 0 end / 1 submit, seq, ...)
    for i, submitted in enumerate(ordered):
        heapq.heappush(events, (submitted.submit, 1, i, i, 0))
    seq = len(ordered)
    if quotas is not None:  # a cycle when each job's reclaim falls due (kind 2: a wake-up)
        for i, submitted in enumerate(ordered):
            heapq.heappush(events, (submitted.submit + quotas.reclaim_after_s, 2, seq, i, 0))
            seq += 1
    pending: dict[int, _Job] = {}
    running: dict[int, _Job] = {}
    index_job: dict[int, int] = {}  # trace index -> job id
    job_index: dict[int, int] = {}  # job id -> trace index
    woken: set[float] = set()  # wake-ups added for reclaims waiting on a minimum runtime
    min_runtime = float(getattr(policy, "min_runtime_s", 0.0))
    name_job: dict[str, int] = {}  # trace job name -> job id, once submitted
    cancelled = 0  # ended before they ran: a dependency that could never be met
    group_fair = _Fairness({g: 1.0 for g in groups})
    user_fair = _Fairness({u: 1.0 for u in user_group})
    busy_gpu_s = 0.0
    start_time = clock.now
    series: dict[str, list[float]] = {"time": [], "queue": [], "busy": []}
    series_groups: dict[str, list[float]] = {g: [] for g in groups}
    starts: list[tuple[float, int]] = []
    preempted: list[tuple[float, int]] = []
    node_free = {name: gpus_per_node for name in state.nodes}
    idle_gpu_s: dict[str, float] = {}
    held_now: dict[str, int] = {}  # why -> GPUs idle while a fitting job waits
    policy_held: Mapping[int, str] = {}

    def held() -> dict[str, int]:
        """GPUs idle now that waiting jobs could use, by why they were not started (the
        cause the policy named for each job, else a reservation), in their order."""
        free_total = sum(node_free.values())
        if not free_total or not pending:
            return {}
        widest = max(node_free.values())
        gated = cycle.held  # waiting on a dependency or an array's limit: not for now
        fit_one = [p for p in pending.values() if p.trace.gpus <= widest and p.id not in gated]
        if fit_one:
            causes: dict[str, int] = {}
            left = free_total
            for p in fit_one:
                if left <= 0:
                    break
                why = policy_held.get(p.id) or "reservation"
                causes[why] = causes.get(why, 0) + min(left, p.trace.gpus)
                left -= p.trace.gpus
            return causes
        fit_sum = sum(
            p.trace.gpus
            for p in pending.values()
            if p.trace.gpus <= free_total and p.id not in gated
        )
        return {"fragmentation": min(free_total, fit_sum)} if fit_sum else {}

    def account(until: float) -> None:
        nonlocal busy_gpu_s
        now = clock.now
        dt = until - now
        if dt <= 0:
            return
        alloc_g: dict[str, int] = {}
        alloc_u: dict[str, int] = {}
        for r in running.values():
            g = r.trace.gpus
            alloc_g[r.trace.group] = alloc_g.get(r.trace.group, 0) + g
            alloc_u[r.trace.user] = alloc_u.get(r.trace.user, 0) + g
        demand_g = dict(alloc_g)
        demand_u = dict(alloc_u)
        for p in pending.values():
            if p.id in cycle.held:  # it cannot run yet: no demand of its group's
                continue
            demand_g[p.trace.group] = demand_g.get(p.trace.group, 0) + p.trace.gpus
            demand_u[p.trace.user] = demand_u.get(p.trace.user, 0) + p.trace.gpus
        group_fair.add(dt, total, alloc_g, demand_g)
        user_fair.add(dt, total, alloc_u, demand_u)
        busy = sum(alloc_g.values())
        busy_gpu_s += dt * busy
        for why, idle in held_now.items():
            idle_gpu_s[why] = idle_gpu_s.get(why, 0.0) + dt * idle
        if record_series:
            series["time"].append(now)
            series["queue"].append(len(pending))
            series["busy"].append(busy)
            for group in groups:
                series_groups[group].append(alloc_g.get(group, 0) / total)

    while events:
        if events[0][1] == 2 and index_job.get(events[0][3]) not in pending:
            heapq.heappop(events)  # a wake-up for a job no longer waiting: no instant at all
            continue
        t = events[0][0]
        account(t)
        clock.now = t
        while events and events[0][0] == t:
            _, kind, _, ref, version = heapq.heappop(events)
            if kind == 1:
                dependency = ""
                if ordered[ref].after:
                    dependency = _dependency(ordered[ref].after, name_job)
                    ids = {name_job[n] for n in _names(ordered[ref].after)}
                    gates = cycle.gates  # as the daemon's submit: the ends are kept
                    gates.watch(ids)
                    gates.outcomes(journal.rows[i] for i in ids if journal.rows[i].state.final)
                job_id = _submit(state, journal, ordered[ref], t, gpus_per_node, dependency)
                name_job[ordered[ref].name] = job_id
                index_job[ref] = job_id
                job_index[job_id] = ref
                trace_of[job_id] = ordered[ref]
                jobs[job_id] = _Job(job_id, ordered[ref], ordered[ref].duration)
                pending[job_id] = jobs[job_id]
            elif kind == 2:
                pass  # a wake-up: only the cycle below
            elif ref in running and jobs[ref].version == version:
                del running[ref]
                jobs[ref].end = t
                await agents.finish(ref, t)
                node_free[jobs[ref].node] += jobs[ref].trace.gpus
        for _ in range(4):  # preemptions free GPUs at once: decide again in the same instant
            if not pending:
                break
            plan = await cycle.run()
            policy_held = plan.held
            for job_id in [j for j in pending if j not in state.jobs]:
                del pending[job_id]  # its dependency can never be met: cancelled
                cancelled += 1
            started, yielded = await agents.report(t)
            for j in yielded:
                del running[j.id]
                node_free[j.node] += j.trace.gpus
                pending[j.id] = j
                preempted.append((t, j.id))
            for j in started:
                del pending[j.id]
                running[j.id] = j
                node_free[j.node] -= j.trace.gpus
                starts.append((t, j.id))
                end = j.run_start + j.run_overhead + j.remaining
                heapq.heappush(events, (end, 0, seq, j.id, j.version))
                seq += 1
            if not plan.preemptions:
                break
        if watch is not None:
            watch(t, [j.trace for j in running.values()], [j.trace for j in pending.values()])
        held_now = held()
        if quotas is not None and pending and running:
            # a reclaim that is due but waits for the borrowers' jobs to pass the minimum
            # runtime: the daemon would retry every heartbeat, so a cycle when one passes
            due = [p.id for p in pending.values() if t - p.trace.submit >= quotas.reclaim_after_s]
            ripe = [
                at
                for r in running.values()
                if (at := state.jobs[r.id].start_time + min_runtime) > t
            ]
            if due and ripe and min(ripe) not in woken:
                woken.add(min(ripe))
                heapq.heappush(events, (min(ripe), 2, seq, job_index[due[0]], 0))
                seq += 1

    now = clock.now
    measured = [j for j in jobs.values() if j.trace.measured and j.end is not None]
    jct = [j.end - j.trace.submit for j in measured if j.end is not None]
    wait = [j.first_start - j.trace.submit for j in measured if j.first_start is not None]
    makespan = now - start_time
    total_got = sum(group_fair.got.values()) or 1.0
    total_ent = sum(group_fair.entitled.values()) or 1.0
    user_got = sum(user_fair.got.values()) or 1.0
    user_ent = sum(user_fair.entitled.values()) or 1.0
    return SimResult(
        policy=policy.name,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        jobs=len(measured),
        left_out=left_out,
        cancelled=cancelled,
        avg_jct_s=statistics.fmean(jct) if jct else 0.0,
        median_jct_s=statistics.median(jct) if jct else 0.0,
        p95_jct_s=_pct(jct, 0.95),
        avg_wait_s=statistics.fmean(wait) if wait else 0.0,
        median_wait_s=statistics.median(wait) if wait else 0.0,
        p95_wait_s=_pct(wait, 0.95),
        utilization=busy_gpu_s / (total * makespan) if makespan > 0 else 0.0,
        makespan_s=makespan,
        preemptions=len(preempted),
        jain_fairness=group_fair.index(),
        jain_fairness_users=user_fair.index(),
        groups={
            g: {
                "share": group_fair.got.get(g, 0.0) / total_got,
                "entitled": group_fair.entitled.get(g, 0.0) / total_ent,
            }
            for g in groups
        },
        users={
            u: {
                "share": user_fair.got.get(u, 0.0) / user_got,
                "entitled": user_fair.entitled.get(u, 0.0) / user_ent,
            }
            for u in sorted(user_group)
        },
        cycles=cycle.count,
        lost_work_gpu_h=agents.lost_gpu_s / 3600,
        restart_gpu_h=agents.restart_gpu_s / 3600,
        idle_gpu_h={why: v / 3600 for why, v in sorted(idle_gpu_s.items())},
        group_by=group_by,
        series=series,
        series_groups=series_groups,
        starts=starts,
        preempted=preempted,
    )


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


# ------------------------------------------------------------------ the command line


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds < 86400 * 3 else f"{seconds / 86400:.1f} d"


def report(result: SimResult, trace: str, top_users: int = 10) -> str:
    r = result
    total = r.nodes * r.gpus_per_node
    jct = (_hours(r.avg_jct_s), _hours(r.median_jct_s), _hours(r.p95_jct_s))
    wait = (_hours(r.avg_wait_s), _hours(r.median_wait_s), _hours(r.p95_wait_s))
    left = (
        f", {r.left_out} left out (wider than the cluster, or waiting on such a job)"
        if r.left_out
        else ""
    )
    if r.cancelled:
        left += f", {r.cancelled} cancelled (a dependency that could never be met)"
    lines = [
        f"gshare sim: {trace}, policy {r.policy}, {r.nodes} nodes x {r.gpus_per_node} GPUs "
        f"({total} GPUs), {r.jobs} jobs{left}",
        "  job completion time   avg {:>9}   median {:>9}   p95 {:>9}".format(*jct),
        "  queueing delay        avg {:>9}   median {:>9}   p95 {:>9}".format(*wait),
        f"  GPU utilization {r.utilization:6.1%}   makespan {_hours(r.makespan_s)}   "
        f"preemptions {r.preemptions}   scheduling cycles {r.cycles}",
        "  Jain's fairness index (allocation / max-min entitlement): "
        f"groups {r.jain_fairness:.3f}, users {r.jain_fairness_users:.3f}"
        + ("  (groups: each user)" if r.group_by == "user" else ""),
        f"  lost to preemption {r.preemption_gpu_h:.1f} GPU-h: work since the last checkpoint "
        f"{r.lost_work_gpu_h:.1f}, restarts {r.restart_gpu_h:.1f}",
        f"  idle while a job that fit waited {sum(r.idle_gpu_h.values()):.1f} GPU-h"
        + (
            ": " + ", ".join(f"{why} {v:.1f}" for why, v in r.idle_gpu_h.items())
            if r.idle_gpu_h
            else ""
        ),
        "",
        f"  {'group':<12} {'GPU share':>10} {'entitled':>10}",
    ]
    for name, g in sorted(r.groups.items(), key=lambda kv: -kv[1]["share"]):
        lines.append(f"  {name:<12} {g['share']:>10.1%} {g['entitled']:>10.1%}")
    lines += [
        "",
        f"  {'user':<12} {'GPU share':>10} {'entitled':>10}   (top {top_users}; all in --json)",
    ]
    for name, u in sorted(r.users.items(), key=lambda kv: -kv[1]["share"])[:top_users]:
        lines.append(f"  {name:<12} {u['share']:>10.1%} {u['entitled']:>10.1%}")
    return "\n".join(lines)


def plot(result: SimResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [t / 86400 for t in result.series["time"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    groups = sorted(result.series_groups, key=lambda g: -result.groups[g]["share"])
    top.stackplot(days, [result.series_groups[g] for g in groups], labels=groups, step="post")
    top.set_ylabel("share of GPUs")
    top.set_ylim(0, 1)
    top.legend(loc="upper right", fontsize=7, ncol=3)
    top.set_title(f"policy {result.policy}: GPU share per group over time")
    bottom.step(days, result.series["queue"], where="post")
    bottom.set_ylabel("jobs waiting")
    bottom.set_xlabel("days since the first submit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
