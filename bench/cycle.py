"""Scheduling cycles at scale: 1,000 nodes x 8 GPUs with 10,000 pending jobs, and 10,000
nodes x 8 GPUs with 50,000 pending, from 100 users in a 3-level account tree (root -> 10
teams -> 10 users each), on one core.

The cluster starts 80% busy with running jobs that have time limits (so reservations and
backfill have work to do) and every user has some decayed usage. For each policy it runs
a sequence of cycles the way the scheduler does, one policy instance throughout (what a
policy keeps from one cycle to the next, policies/memo.py, is kept as in the daemon):
the first cycle finds the cluster as built and keeps nothing yet; after each cycle the
plan is applied as the daemon applies it (started jobs run, victims yield and go the
cycle after, their claimants hold a claim on the node), then one second passes in which
CHURN jobs end, CHURN new jobs are submitted and usage accrues. CHURN is nodes / 200 (5
and 50; --churn N makes it nodes / N): with these time limits, ending jobs at that rate
means an average run of about 8 minutes, an order of magnitude busier than the running
jobs' limits imply, so it errs on the side of more change per cycle. The snapshot keeps
the same view object for an unchanged job or node, as the daemon's does.

Per policy it prints the first cycle and the median and p99 of the steady cycles that
follow (after WARM cycles that are not counted), with reasons worded (as the scheduler
does) and without (as the simulator does). Baseline, measured in the same run on each
steady cycle's queue: sorting the pending jobs by submit time. At the end, the default
policy's median steady cycle with reasons as a ratio to that baseline, at each size.

Usage: .venv/bin/python bench/cycle.py [--runs 30] [--sizes 1000x10000,10000x50000]
                                       [--policies fairshare,priority,fifo] [--churn 200]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import replace
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
    Plan,
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


WARM = 3  # steady cycles run before the counted ones


class Cluster:
    """The benchmark's cluster, moved on by each cycle's plan and a second of churn."""

    def __init__(self, snap: ClusterSnapshot, churn: int, seed: int = 11) -> None:
        self.snap = snap
        self.churn = churn
        self.rng = random.Random(seed)
        self.next_id = 10**8
        self.users = sorted(snap.usage)

    def step(self, plan: Plan) -> None:
        snap, rng = self.snap, self.rng
        now = snap.now + 1.0
        pending = {j.job_id: j for j in snap.pending}
        running = {r.job_id: r for r in snap.running}
        free = {n.name: set(n.free_gpus) for n in snap.nodes}
        for s in plan.starts:
            job = pending.pop(s.job_id)
            for node, gpus in s.parts:
                free[node] -= set(gpus)
            running[job.job_id] = RunningJob(
                job.job_id, job.user, job.queue, s.parts, snap.now, job.priority, job.time_limit_s
            )
        for r in [r for r in running.values() if r.yielding_to]:  # victims yielded by now
            self._end(running, free, r.job_id)
        for p in plan.preemptions:
            victim = running.get(p.job_id)
            if victim is not None:
                running[p.job_id] = replace(victim, yielding_to=p.for_job)
            claimant = pending.get(p.for_job)
            if claimant is not None:
                pending[p.for_job] = replace(claimant, claimed_node=p.node)
        ending = sorted(j for j, r in running.items() if not r.yielding_to)
        for job_id in rng.sample(ending, min(self.churn, len(ending))):
            self._end(running, free, job_id)
        for _ in range(self.churn):
            pending[self.next_id] = PendingJob(
                self.next_id,
                rng.choice(self.users),
                "default",
                rng.choice([1, 1, 1, 2, 4, 8]),
                rng.choice([0, 0, 0, 1]),
                now,
                time_limit_s=rng.choice([600.0, 3600.0, 14400.0]),
            )
            self.next_id += 1
        held: dict[str, int] = {}
        for r in running.values():
            held[r.user] = held.get(r.user, 0) + r.gpus
        usage = {u: used * 0.99999 + held.get(u, 0) for u, used in snap.usage.items()}
        nodes = tuple(  # an unchanged node keeps its view, as the daemon's snapshot does
            n if n.free_gpus == free[n.name] else replace(n, free_gpus=frozenset(free[n.name]))
            for n in snap.nodes
        )
        self.snap = replace(
            snap,
            now=now,
            nodes=nodes,
            pending=tuple(pending.values()),
            running=tuple(running.values()),
            usage=MappingProxyType(usage),
        )

    @staticmethod
    def _end(running: dict[int, RunningJob], free: dict[str, set[int]], job_id: int) -> None:
        for node, gpus in running.pop(job_id).parts:
            free[node] |= set(gpus)


def cycles(
    name: str, params: dict[str, object], snap: ClusterSnapshot, churn: int, runs: int
) -> tuple[float, list[float], list[float], Plan]:
    """The first cycle's time, the steady cycles' times and their baselines, the last plan."""
    policy = make_policy(name, params)
    cluster = Cluster(snap, churn)
    samples, bases = [], []
    first = 0.0
    for i in range(1 + WARM + runs):
        queue = cluster.snap.pending
        t0 = time.perf_counter()
        plan = policy.decide(cluster.snap)
        took = time.perf_counter() - t0
        t0 = time.perf_counter()
        sorted(queue, key=lambda j: (j.submit_time, j.job_id))
        base = time.perf_counter() - t0
        if i == 0:
            first = took
        elif i > WARM:
            samples.append(took)
            bases.append(base)
        cluster.step(plan)
    return first, samples, bases, plan


def p99(samples: list[float]) -> float:
    return sorted(samples)[min(len(samples) - 1, int(0.99 * len(samples)))]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=30, help="steady cycles counted per policy")
    p.add_argument("--sizes", default="1000x10000,10000x50000", help="NODESxPENDING,...")
    p.add_argument("--policies", default="fairshare,priority,fifo")
    p.add_argument(
        "--churn", type=int, default=200, help="jobs ending (and submitted) per cycle: nodes / N"
    )
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    ratios = []
    for size in args.sizes.split(","):
        nodes, pending = (int(x) for x in size.split("x"))
        ratios.append(
            (size, one_size(nodes, pending, args.runs, args.policies.split(","), args.churn))
        )
    print("\nthe default policy (fairshare, with reasons), median steady cycle / baseline:")
    for size, (ratio, first) in ratios:
        print(f"  {size:<14} x{ratio:.1f}   (first cycle, nothing kept yet: x{first:.1f})")
    return 0


def one_size(
    nodes: int, pending: int, runs: int, policies: list[str], per: int = 200
) -> tuple[float, float]:
    snap = build(nodes, pending)
    churn = max(1, nodes // per)
    busy = sum(8 - len(n.free_gpus) for n in snap.nodes)
    print(
        f"\n{nodes} nodes x 8 GPUs ({busy} busy, {len(snap.running)} running jobs), "
        f"{len(snap.pending)} pending jobs, 100 users in 10 teams; {churn} jobs end and "
        f"{churn} are submitted per cycle; {runs} steady cycles per policy on one core"
    )
    default = (0.0, 0.0)
    for name in policies:
        for explain in (True, False):
            first, samples, bases, plan = cycles(name, {"explain": explain}, snap, churn, runs)
            base = statistics.median(bases)
            med = statistics.median(samples)
            label = f"{name} ({'with' if explain else 'no'} reasons)"
            print(
                f"{label:<26} first {first * 1000:7.1f} ms (x{first / base:5.1f})   "
                f"steady median {med * 1000:7.1f} ms  p99 {p99(samples) * 1000:7.1f} ms  "
                f"(x{med / base:4.1f}; baseline {base * 1000:.1f} ms)"
            )
            if name == "fairshare" and explain:
                default = (med / base, first / base)
                print(
                    f"{'':<26} last cycle: {len(plan.starts)} starts, "
                    f"{len(plan.preemptions)} preemptions, {len(plan.reasons)} reasons"
                )
    return default


if __name__ == "__main__":
    sys.exit(main())
