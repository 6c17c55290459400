"""What a replay of `gshare sim` measured, and how it is shown.

Fairness is measured against max-min entitlement (`water_fill`) with Jain's index,
time-weighted over the replay (`_Fairness`); `SimResult` holds the measures, `report`
writes them for a terminal and `plot` draws the shares and the queue over time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
