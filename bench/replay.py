"""Replaying the shared Philly window (../shared/traces/, Microsoft Philly traces, CC BY 4.0;
see that folder's README) through the simulator.

1. Wall time of a replay per policy, on a cluster small enough to queue (default
   16 nodes x 8 GPUs), against the fifo replay of the same run as the baseline.
2. Decision quality at several cluster sizes (default 64, 128 and 256 GPUs): average and
   p95 job completion time, average and p95 queueing delay, utilization, preemptions,
   and Jain's fairness index over groups and users, for fairshare, priority and fifo.

Usage: .venv/bin/python bench/replay.py [--trace PATH] [--sizes 64,128,256] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import make_policy
from schedulerd.sim import read_trace, simulate

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO.parent / "shared" / "traces" / "philly-2017-09-24_2017-09-27.csv"
POLICIES = ("fairshare", "priority", "fifo")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trace", type=Path, default=TRACE)
    p.add_argument("--sizes", default="64,128,256", help="cluster sizes in GPUs (8 per node)")
    p.add_argument("--wall-nodes", type=int, default=16)
    p.add_argument("--checkpoint-every", type=float, default=30.0, help="minutes")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    jobs = read_trace(args.trace)
    print(f"trace {args.trace.name}: {len(jobs)} jobs")
    figures: dict[str, object] = {}

    walls = {}
    for name in reversed(POLICIES):  # fifo first: it is the baseline
        t0 = time.perf_counter()
        simulate(
            jobs,
            make_policy(name, {"explain": False}),
            args.wall_nodes,
            8,
            checkpoint_every_s=args.checkpoint_every * 60,
        )
        walls[name] = time.perf_counter() - t0
    print(f"\nreplay wall time, {args.wall_nodes * 8} GPUs:")
    for name in POLICIES:
        print(f"  {name:<10} {walls[name]:6.1f} s   x{walls[name] / walls['fifo']:.2f} fifo")
    figures["wall_s"] = walls

    print("\ndecision quality (JCT and waits in hours; Jain over groups / users):")
    print(
        f"  {'GPUs':>5} {'policy':<10} {'avg JCT':>8} {'p95 JCT':>8} {'avg wait':>9} "
        f"{'p95 wait':>9} {'util':>6} {'preempt':>8} {'Jain g':>7} {'Jain u':>7}"
    )
    quality = []
    for size in (int(s) for s in args.sizes.split(",")):
        for name in POLICIES:
            r = simulate(
                jobs,
                make_policy(name, {"explain": False}),
                size // 8,
                8,
                checkpoint_every_s=args.checkpoint_every * 60,
            )
            print(
                f"  {size:>5} {name:<10} {r.avg_jct_s / 3600:8.1f} {r.p95_jct_s / 3600:8.1f} "
                f"{r.avg_wait_s / 3600:9.1f} {r.p95_wait_s / 3600:9.1f} {r.utilization:6.1%} "
                f"{r.preemptions:8d} {r.jain_fairness:7.3f} {r.jain_fairness_users:7.3f}"
                + (f"   ({r.left_out} jobs wider than the cluster left out)" if r.left_out else "")
            )
            quality.append({"gpus": size, **r.as_json()})
    figures["quality"] = quality
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
