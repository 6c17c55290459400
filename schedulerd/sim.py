"""`gshare sim`: replay a job trace through the very policies the scheduler runs.

A virtual clock and simulated agents: at each submit or finish, the usage ledger is
brought up to date, a ClusterSnapshot is built and the policy's `decide` runs; starts
and preemptions take effect at once. A preempted job keeps the work up to its last
checkpoint (every --checkpoint-every minutes of its run; none if 0), loses the rest and
pays --restart-cost seconds when it starts again. Time limits are the jobs' real
durations (perfect estimates), so backfill sees what a well-estimating user would give.
"""

from __future__ import annotations

import csv
import heapq
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from policies import (
    Account,
    AccountTree,
    ClusterSnapshot,
    GpuSlot,
    NodeView,
    PendingJob,
    Policy,
    RunningJob,
    decayed_usage,
)

COLUMNS = ("job_id", "submit_time_s", "duration_s", "gpus", "user", "group", "status")
STATUSES = {"completed", "failed", "killed"}


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class TraceJob:
    name: str
    submit: float
    duration: float
    gpus: int
    user: str
    group: str
    measured: bool = True  # False for jobs already running when the window opens


def read_trace(path: Path, measured: bool = True) -> list[TraceJob]:
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from exc
    jobs = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise TraceError(f"{path}:1: the header must be {','.join(COLUMNS)}")
        for number, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(COLUMNS):
                raise TraceError(f"{path}:{number}: {len(row)} fields, expected {len(COLUMNS)}")
            name, submit, duration, gpus, user, group, status = (c.strip() for c in row)
            jobs.append(
                TraceJob(
                    name or f"line{number}",
                    _number(path, number, "submit_time_s", submit, minimum=0.0),
                    _number(path, number, "duration_s", duration, minimum=0.0, strict=True),
                    int(_number(path, number, "gpus", gpus, minimum=1.0, whole=True)),
                    _word(path, number, "user", user),
                    _word(path, number, "group", group),
                    measured,
                )
            )
            if status not in STATUSES:
                known = ", ".join(sorted(STATUSES))
                raise TraceError(f"{path}:{number}: status must be one of {known}, not {status!r}")
    return jobs


def _number(
    path: Path,
    line: int,
    column: str,
    text: str,
    minimum: float,
    strict: bool = False,
    whole: bool = False,
) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{path}:{line}: {column} must be a number, not {text!r}") from None
    if not math.isfinite(value) or value < minimum or (strict and value <= minimum):
        bound = f"more than {minimum:g}" if strict else f"at least {minimum:g}"
        raise TraceError(f"{path}:{line}: {column} must be {bound}, not {text!r}")
    if whole and value != int(value):
        raise TraceError(f"{path}:{line}: {column} must be a whole number, not {text!r}")
    return value


def _word(path: Path, line: int, column: str, text: str) -> str:
    if not text:
        raise TraceError(f"{path}:{line}: empty {column}")
    return text


# ------------------------------------------------------------------ fairness arithmetic


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
    restarts: int = 0
    first_start: float | None = None
    end: float | None = None
    run_start: float = 0.0
    run_overhead: float = 0.0  # restart cost paid at the start of this run
    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()
    version: int = 0
    claimed: str = ""  # the node freed for it by a preemption


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
    series: dict[str, list[float]] = field(repr=False, default_factory=dict)
    series_groups: dict[str, list[float]] = field(repr=False, default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("series", "series_groups")}
        return out


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def simulate(
    trace: Iterable[TraceJob],
    policy: Policy,
    nodes: int,
    gpus_per_node: int,
    half_life_s: float = 7 * 86400.0,
    checkpoint_every_s: float = 0.0,
    restart_cost_s: float = 60.0,
    record_series: bool = False,
) -> SimResult:
    total = nodes * gpus_per_node
    all_jobs = list(trace)
    fits = [j for j in all_jobs if j.gpus <= total]
    left_out = len(all_jobs) - len(fits)
    jobs = {i: _Job(i, t, t.duration) for i, t in enumerate(sorted(fits, key=lambda t: t.submit))}
    groups = sorted({j.trace.group for j in jobs.values()})
    user_group: dict[str, str] = {}
    for j in jobs.values():
        user_group.setdefault(j.trace.user, j.trace.group)
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
    slots = tuple(
        GpuSlot(g, f"GPU-{g}", frozenset(x for x in range(gpus_per_node) if x != g))
        for g in range(gpus_per_node)
    )
    names = [f"n{i:04d}" for i in range(nodes)]
    free: dict[str, set[int]] = {n: set(range(gpus_per_node)) for n in names}

    events: list[
        tuple[float, int, int, int, int]
    ] = []  # (time, kind 0=finish 1=submit, seq, job, version)
    seq = 0
    for j in jobs.values():
        heapq.heappush(events, (j.trace.submit, 1, seq, j.id, 0))
        seq += 1
    pending: dict[int, _Job] = {}
    running: dict[int, _Job] = {}
    usage: dict[str, float] = {}
    group_fair = _Fairness({g: 1.0 for g in groups})
    user_fair = _Fairness({u: 1.0 for u in user_group})
    busy_gpu_s = 0.0
    preemptions = 0
    cycles = 0
    now = events[0][0] if events else 0.0
    start_time = now
    series: dict[str, list[float]] = {"time": [], "queue": [], "busy": []}
    series_groups: dict[str, list[float]] = {g: [] for g in groups}

    def account(until: float) -> None:
        nonlocal busy_gpu_s, usage
        dt = until - now
        if dt <= 0:
            return
        alloc_g: dict[str, int] = {}
        alloc_u: dict[str, int] = {}
        for r in running.values():
            g = sum(len(gs) for _, gs in r.parts)  # whole nodes for a job wider than one
            alloc_g[r.trace.group] = alloc_g.get(r.trace.group, 0) + g
            alloc_u[r.trace.user] = alloc_u.get(r.trace.user, 0) + g
        demand_g = dict(alloc_g)
        demand_u = dict(alloc_u)
        for p in pending.values():
            demand_g[p.trace.group] = demand_g.get(p.trace.group, 0) + p.trace.gpus
            demand_u[p.trace.user] = demand_u.get(p.trace.user, 0) + p.trace.gpus
        group_fair.add(dt, total, alloc_g, demand_g)
        user_fair.add(dt, total, alloc_u, demand_u)
        busy = sum(alloc_g.values())
        busy_gpu_s += dt * busy
        usage = decayed_usage(usage, alloc_u, dt, half_life_s)
        if record_series:
            series["time"].append(now)
            series["queue"].append(len(pending))
            series["busy"].append(busy)
            for group in groups:
                series_groups[group].append(alloc_g.get(group, 0) / total)

    views_of: dict[int, PendingJob] = {}  # rebuilt only when a preemption changes a job

    def pending_view(j: _Job) -> PendingJob:
        view = views_of.get(j.id)
        if view is None or view.restarts != j.restarts or view.claimed_node != j.claimed:
            limit = j.remaining + (restart_cost_s if j.restarts else 0.0)
            view = PendingJob(
                j.id,
                j.trace.user,
                "default",
                j.trace.gpus,
                0,
                j.trace.submit,
                time_limit_s=limit,
                restarts=j.restarts,
                claimed_node=j.claimed,
            )
            views_of[j.id] = view
        return view

    def snapshot() -> ClusterSnapshot:
        views = tuple(NodeView(n, slots, frozenset(free[n])) for n in names)
        pend = tuple(pending_view(j) for j in pending.values())
        run = tuple(
            RunningJob(
                j.id,
                j.trace.user,
                "default",
                j.parts,
                j.run_start,
                0,
                j.run_overhead + j.remaining,
                _last_checkpoint(j, now, checkpoint_every_s),
            )
            for j in running.values()
        )
        return ClusterSnapshot(now, views, pend, run, tree, MappingProxyType(usage))

    def finish_at(j: _Job) -> float:
        return j.run_start + j.run_overhead + j.remaining

    while events:
        t = events[0][0]
        account(t)
        now = t
        while events and events[0][0] == t:
            _, kind, _, job_id, version = heapq.heappop(events)
            job = jobs[job_id]
            if kind == 1:
                pending[job_id] = job
            elif job_id in running and job.version == version:
                del running[job_id]
                job.end = t
                for n, gs in job.parts:
                    free[n] |= set(gs)
        for _ in range(4):  # preemptions free GPUs at once: decide again in the same instant
            if not pending:
                break
            plan = policy.decide(snapshot())
            cycles += 1
            for p in plan.preemptions:
                victim = running.pop(p.job_id)
                done = max(0.0, now - victim.run_start - victim.run_overhead)
                every = checkpoint_every_s  # the work up to the last checkpoint is kept
                saved = math.floor(done / every) * every if every > 0 else 0.0
                victim.remaining -= min(saved, victim.remaining)
                victim.restarts += 1
                victim.version += 1
                for n, gs in victim.parts:
                    free[n] |= set(gs)
                pending[victim.id] = victim
                preemptions += 1
                jobs[p.for_job].claimed = p.node
            for s in plan.starts:
                job = pending.pop(s.job_id)
                for n, gs in s.parts:
                    free[n] -= set(gs)
                job.parts = s.parts
                job.claimed = ""
                job.run_start = now
                job.run_overhead = restart_cost_s if job.restarts else 0.0
                if job.first_start is None:
                    job.first_start = now
                job.version += 1
                running[job.id] = job
                heapq.heappush(events, (finish_at(job), 0, seq, job.id, job.version))
                seq += 1
            if not plan.preemptions:
                break

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
        avg_jct_s=statistics.fmean(jct) if jct else 0.0,
        median_jct_s=statistics.median(jct) if jct else 0.0,
        p95_jct_s=_pct(jct, 0.95),
        avg_wait_s=statistics.fmean(wait) if wait else 0.0,
        median_wait_s=statistics.median(wait) if wait else 0.0,
        p95_wait_s=_pct(wait, 0.95),
        utilization=busy_gpu_s / (total * makespan) if makespan > 0 else 0.0,
        makespan_s=makespan,
        preemptions=preemptions,
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
        cycles=cycles,
        series=series,
        series_groups=series_groups,
    )


def _last_checkpoint(job: _Job, now: float, every: float) -> float | None:
    if every <= 0:
        return None
    done = max(0.0, now - job.run_start - job.run_overhead)
    return (
        job.run_start + job.run_overhead + math.floor(done / every) * every
        if done >= every
        else None
    )


# ------------------------------------------------------------------ the command line


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds < 86400 * 3 else f"{seconds / 86400:.1f} d"


def report(result: SimResult, trace: str, top_users: int = 10) -> str:
    r = result
    total = r.nodes * r.gpus_per_node
    jct = (_hours(r.avg_jct_s), _hours(r.median_jct_s), _hours(r.p95_jct_s))
    wait = (_hours(r.avg_wait_s), _hours(r.median_wait_s), _hours(r.p95_wait_s))
    left = f", {r.left_out} left out (wider than the cluster)" if r.left_out else ""
    lines = [
        f"gshare sim: {trace}, policy {r.policy}, {r.nodes} nodes x {r.gpus_per_node} GPUs "
        f"({total} GPUs), {r.jobs} jobs{left}",
        "  job completion time   avg {:>9}   median {:>9}   p95 {:>9}".format(*jct),
        "  queueing delay        avg {:>9}   median {:>9}   p95 {:>9}".format(*wait),
        f"  GPU utilization {r.utilization:6.1%}   makespan {_hours(r.makespan_s)}   "
        f"preemptions {r.preemptions}   scheduling cycles {r.cycles}",
        "  Jain's fairness index (allocation / max-min entitlement): "
        f"groups {r.jain_fairness:.3f}, users {r.jain_fairness_users:.3f}",
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
