"""`gshare sim`: replay a job trace through the very policies the scheduler runs.

A virtual clock and simulated agents: at each submit or finish, the usage ledger is
brought up to date, a ClusterSnapshot is built and the policy's `decide` runs; starts
and preemptions take effect at once. A preempted job keeps the work up to its last
checkpoint (every --checkpoint-every minutes of its run; none if 0), loses the rest and
pays --restart-cost seconds when it starts again. Time limits are the jobs' real
durations (perfect estimates), so backfill sees what a well-estimating user would give.

The replay is here; the simulated agents and submits are in `schedulerd/simagents.py`,
the measures, the report and the figure in `schedulerd/simresult.py`.
"""

from __future__ import annotations

import asyncio
import heapq
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from gshare.config import Config
from policies import Account, AccountTree, Policy
from policies.quota import Quotas
from schedulerd.cycle import Cycle
from schedulerd.ledger import Ledger
from schedulerd.model import GpuInfo, NodeRecord, NodeState
from schedulerd.simagents import SimAgents, _Clock, _Job, _submit
from schedulerd.simresult import SimResult, _Fairness, _pct, jain, plot, report, water_fill
from schedulerd.state import ClusterState, MemoryJournal
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

__all__ = [  # with what schedulerd/trace.py and schedulerd/simresult.py hold, `gshare sim`'s API
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
