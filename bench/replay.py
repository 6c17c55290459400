"""Replaying the two shared traces (../shared/traces/: Microsoft Philly traces and the
Helios traces, both CC BY 4.0; see that folder's README for attribution) through
`gshare sim`, the default policy against fifo.

1. Decision quality: average JCT, p95 wait, Jain's index over the fair-share unit (Philly:
   its virtual clusters; Helios: each user, `--group-by user`), utilization, preemptions,
   GPU-hours lost to preemption and idle while a fitting job waited; then whether the
   default policy beats fifo on Jain by at least 0.10 and is no worse on average JCT and
   p95 wait, with utilization at most 2 points below fifo's.
2. With --victims: the default policy under each victim order (least_work_lost,
   youngest, lowest_priority), and the GPU time least_work_lost saves over youngest.

Philly runs at 128 GPUs; Helios with its running-at-start file at 384 GPUs (as asked)
and at 192 (jobs wider than one 8-GPU node are left out by the scheduler, so at 384 the
week hardly queues). Each replay takes 10-20 s on one core of a busy 2-core machine;
the full run with --victims about 4 minutes.

Usage: .venv/bin/python bench/replay.py [--only philly,helios-384,helios-192] [--victims]
                                        [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import make_policy
from schedulerd.sim import SimResult, TraceJob, read_trace, simulate

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
PHILLY = "philly-2017-09-24_2017-09-27"
HELIOS = "helios-venus-2020-06-08_2020-06-15"
ORDERS = ("least_work_lost", "youngest", "lowest_priority")


@dataclass(frozen=True)
class Setup:
    name: str
    trace: str
    gpus: int
    running_at_start: bool
    group_by: str


SETUPS = (
    Setup("philly", PHILLY, 128, False, "group"),
    Setup("helios-384", HELIOS, 384, True, "user"),
    Setup("helios-192", HELIOS, 192, True, "user"),
)


def load(setup: Setup, traces: Path) -> list[TraceJob]:
    jobs = read_trace(traces / f"{setup.trace}.csv")
    if setup.running_at_start:
        jobs += read_trace(traces / f"{setup.trace}.running-at-start.csv", measured=False)
    return jobs


def run(setup: Setup, jobs: list[TraceJob], policy: str, **params: object) -> SimResult:
    return simulate(
        jobs,
        make_policy(policy, {"explain": False, **params}),
        setup.gpus // 8,
        8,
        checkpoint_every_s=30 * 60,
        restart_cost_s=60,
        group_by=setup.group_by,
    )


def row(setup: Setup, label: str, r: SimResult, wall: float) -> str:
    return (
        f"  {setup.name:<11} {label:<25} {r.avg_jct_s / 3600:8.2f} {r.p95_wait_s / 3600:9.2f} "
        f"{r.jain_fairness:6.3f} {r.utilization:6.1%} {r.preemptions:7d} "
        f"{r.preemption_gpu_h:8.1f} {sum(r.idle_gpu_h.values()):8.1f} {wall:6.0f}"
    )


HEAD = (
    f"  {'trace':<11} {'policy':<25} {'avg JCT':>8} {'p95 wait':>9} {'Jain':>6} {'util':>6} "
    f"{'preempt':>7} {'lost GPUh':>8} {'idle GPUh':>8} {'wall s':>6}"
)


def verdict(fair: SimResult, fifo: SimResult) -> str:
    checks = {
        "Jain +0.10": fair.jain_fairness - fifo.jain_fairness >= 0.10,
        "avg JCT no worse": fair.avg_jct_s <= fifo.avg_jct_s,
        "p95 wait no worse": fair.p95_wait_s <= fifo.p95_wait_s,
        # not slower: at most 2 points below fifo's (above it is better, not a failure)
        "utilization within 2 pts": fair.utilization >= fifo.utilization - 0.02,
    }
    return "; ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in checks.items())


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--traces", type=Path, default=TRACES)
    p.add_argument("--only", default=",".join(s.name for s in SETUPS))
    p.add_argument("--victims", action="store_true", help="compare the victim orders too")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    wanted = args.only.split(",")
    unknown = set(wanted) - {s.name for s in SETUPS}
    if unknown:
        p.error(f"unknown --only {', '.join(sorted(unknown))}")
    figures: dict[str, dict[str, object]] = {}
    print("hours; Jain's index over the fair-share unit; GPU-hours lost to preemption and")
    print("idle while a job that fit waited; checkpoints every 30 min, restart cost 60 s")
    print(HEAD)
    for setup in (s for s in SETUPS if s.name in wanted):
        jobs = load(setup, args.traces)
        results: dict[str, SimResult] = {}
        for name in ("fifo", "fairshare"):
            t0 = time.perf_counter()
            results[name] = run(setup, jobs, name)
            print(row(setup, name, results[name], time.perf_counter() - t0), flush=True)
        print(f"  {'':<11} {verdict(results['fairshare'], results['fifo'])}", flush=True)
        if args.victims:
            for order in ORDERS[1:]:
                t0 = time.perf_counter()
                results[order] = run(setup, jobs, "fairshare", victim_order=order)
                label = f"fairshare {order}"
                print(row(setup, label, results[order], time.perf_counter() - t0), flush=True)
            least, young = results["fairshare"], results["youngest"]
            if young.preemption_gpu_h > 0:
                saved = 1 - least.preemption_gpu_h / young.preemption_gpu_h
                print(
                    f"  {'':<11} least_work_lost loses {saved:.1%} less GPU time to "
                    f"preemption than youngest ({least.preemption_gpu_h:.1f} vs "
                    f"{young.preemption_gpu_h:.1f} GPU-h)",
                    flush=True,
                )
        figures[setup.name] = {k: v.as_json() for k, v in results.items()}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
