"""One scheduling decision at scale: 1,000 nodes x 8 GPUs with 10,000 pending jobs, and
10,000 nodes x 8 GPUs with 50,000 pending, from 100 users in a 3-level account tree
(root -> 10 teams -> 10 users each), on one core.

The cluster is 90% busy with running jobs that have time limits (so reservations and
backfill have work to do) and every user has some decayed usage. For each policy it
times `decide()` on the same snapshot and prints median and p99, with reasons worded
(as the scheduler does) and without (as the simulator does). Baseline, measured in the
same run: sorting the pending jobs by submit time, the least any policy must do. At the
end, the default policy's median cycle with reasons as a ratio to that baseline, at each
size.

Usage: .venv/bin/python bench/cycle.py [--runs 30] [--sizes 1000x10000,10000x50000]
                                       [--policies fairshare,priority,fifo]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import (
    Account,
    AccountTree,
    ClusterSnapshot,
    GpuSlot,
    NodeView,
    PendingJob,
    RunningJob,
    make_policy,
)

NOW = 1_000_000.0


def build(nodes: int, pending: int, seed: int = 7) -> ClusterSnapshot:
    rng = random.Random(seed)
    users = [f"u{t:02d}{u}" for t in range(10) for u in range(10)]
    tree = AccountTree.build(
        Account(
            "root",
            1.0,
            tuple(
                Account(
                    f"team{t}",
                    float(rng.randint(1, 5)),
                    (),
                    tuple((f"u{t:02d}{u}", 1.0) for u in range(10)),
                )
                for t in range(10)
            ),
        )
    )
    slots = tuple(
        GpuSlot(g, f"GPU-{g}", frozenset(x for x in range(8) if x != g)) for g in range(8)
    )
    views, running = [], []
    job_id = 1_000_000
    for n in range(nodes):
        name = f"node{n:04d}"
        free = set(range(8))
        while len(free) > 0 and rng.random() < 0.9:
            size = min(len(free), rng.choice([1, 1, 2, 4, 8]))
            gpus = tuple(sorted(free)[:size])
            free -= set(gpus)
            running.append(
                RunningJob(
                    job_id,
                    rng.choice(users),
                    "default",
                    ((name, gpus),),
                    NOW - rng.uniform(0, 7200),
                    0,
                    rng.choice([3600.0, 14400.0, 86400.0]),
                )
            )
            job_id += 1
        views.append(NodeView(name, slots, frozenset(free)))
    jobs = tuple(
        PendingJob(
            i,
            rng.choice(users),
            "default",
            rng.choice([1, 1, 1, 2, 4, 8]),
            rng.choice([0, 0, 0, 1]),
            NOW - rng.uniform(0, 86400),
            time_limit_s=rng.choice([600.0, 3600.0, 14400.0]),
        )
        for i in range(pending)
    )
    usage = MappingProxyType({u: rng.uniform(0, 1e7) for u in users})
    return ClusterSnapshot(NOW, tuple(views), jobs, tuple(running), tree, usage)


def timed(fn, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def line(name: str, samples: list[float], base: float) -> None:
    med = statistics.median(samples)
    p99 = sorted(samples)[min(len(samples) - 1, int(0.99 * len(samples)))]
    ratio = med / base
    figures = f"median {med * 1000:8.1f} ms   p99 {p99 * 1000:8.1f} ms"
    print(f"{name:<34} {figures}   x{ratio:6.1f} baseline")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--sizes", default="1000x10000,10000x50000", help="NODESxPENDING,...")
    p.add_argument("--policies", default="fairshare,priority,fifo")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    ratios = []
    for size in args.sizes.split(","):
        nodes, pending = (int(x) for x in size.split("x"))
        ratios.append((size, one_size(nodes, pending, args.runs, args.policies.split(","))))
    print("\nthe default policy (fairshare, with reasons), median cycle / baseline:")
    for size, ratio in ratios:
        print(f"  {size:<14} x{ratio:.1f}")
    return 0


def one_size(nodes: int, pending: int, runs: int, policies: list[str]) -> float:
    snap = build(nodes, pending)
    busy = sum(8 - len(n.free_gpus) for n in snap.nodes)
    print(
        f"\n{nodes} nodes x 8 GPUs ({busy} busy, {len(snap.running)} running jobs), "
        f"{len(snap.pending)} pending jobs, 100 users in 10 teams; {runs} runs on one core"
    )
    base = statistics.median(
        timed(lambda: sorted(snap.pending, key=lambda j: (j.submit_time, j.job_id)), runs)
    )
    print(f"{'baseline: sort the pending jobs':<34} median {base * 1000:8.1f} ms")
    default = 0.0
    for name in policies:
        policy = make_policy(name)
        plan = policy.decide(snap)
        samples = timed(lambda: policy.decide(snap), runs)  # noqa: B023
        line(f"{name} (with reasons)", samples, base)
        if name == "fairshare":
            default = statistics.median(samples) / base
        quiet = make_policy(name, {"explain": False})
        line(f"{name} (no reasons)", timed(lambda: quiet.decide(snap), runs), base)  # noqa: B023
        print(
            f"{'':<34} {len(plan.starts)} starts, {len(plan.preemptions)} preemptions, "
            f"{len(plan.reasons)} reasons"
        )
    return default


if __name__ == "__main__":
    sys.exit(main())
