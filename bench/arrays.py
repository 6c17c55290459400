"""Job arrays against single jobs, each measured against the other in the same run.

  1. submit: one `gsub --array 0-(N-1)` process (one call, one transaction) against N
     single SubmitJob calls over the same socket, one at a time (as a loop of submits
     does) and 64 in flight (the fastest way to send single jobs);
  2. the scheduling cycle (the daemon's own Cycle over an in-memory journal, full nodes
     so that nothing starts and every run sees the same queue) with N pending array
     tasks, with and without a %K limit, against N pending single jobs;
  3. `gshare queue` (one process) listing the N array tasks, folded and with -r, against
     listing N single jobs.

Starts its own scheduler (SQLite in a temp dir, no agents, so every job stays queued).
Usage: .venv/bin/python bench/arrays.py [--tasks 10000] [--runs 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from submit import api_round, start_scheduler

from gshare.config import Config
from policies import make_policy
from schedulerd.cycle import Cycle
from schedulerd.jobstate import JobState
from schedulerd.ledger import Ledger
from schedulerd.model import GpuInfo, JobRecord, NodeRecord, NodeState
from schedulerd.state import ClusterState, MemoryJournal

BIN = Path(sys.executable).parent


class _Agents:
    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes

    async def launch(self, job: JobRecord) -> None:
        raise AssertionError("the nodes are full: nothing may start")

    def preempt(self, job: JobRecord) -> None:
        pass

    def schedulable(self) -> list[str]:
        return self.nodes


def _job(job_id: int, **kw: object) -> JobRecord:
    values: dict[str, object] = dict(
        job_id=job_id,
        user=f"user{job_id % 100}",
        uid=1000 + job_id % 100,
        gid=1000,
        name="bench",
        queue="default",
        gpus=1,
        priority=0,
        time_limit_s=3600,
        cpus=0,
        mem_mb=0,
        workdir="/tmp",
        env={},
        output="",
        args=[],
        script_name="bench.sh",
        state=JobState.PENDING,
        submit_time=float(job_id),
    )
    values.update(kw)
    return JobRecord(**values)  # type: ignore[arg-type]


def build_cycle(tasks: int, array: str) -> Cycle:
    """The daemon's cycle over full nodes with `tasks` pending jobs: single ones (array
    ""), or the tasks of one array whose spec is `array`."""
    clock = time.time
    state = ClusterState(MemoryJournal(), clock)
    nodes = []
    next_id = 1
    for n in range(100):  # 800 GPUs, every one busy with a running job
        name = f"n{n:03d}"
        nodes.append(name)
        gpus = [GpuInfo(g, f"GPU-{name}-{g}", "bench", 81920, []) for g in range(8)]
        state.nodes[name] = NodeRecord(name, gpus, 64, 512_000, state=NodeState.UP)
        for g in range(8):
            running = _job(
                next_id,
                state=JobState.RUNNING,
                node=name,
                gpu_indexes=[g],
                start_time=clock(),
                no_preempt=True,
            )
            state.jobs[next_id] = running
            next_id += 1
    ledger = Ledger(7 * 86400)
    cycle = Cycle(
        Config(),
        state,
        ledger,
        make_policy("fairshare"),
        _Agents(nodes),
        lambda now: ledger.accrue(now, state.jobs.values()),
    )
    head = next_id
    for t in range(tasks):
        job = (
            _job(next_id, array_job_id=head, array_task_id=t, array_spec=array, user="alice")
            if array
            else _job(next_id, user="alice")
        )
        state.admit(job)  # as a submit does: the gates hear of it
        next_id += 1
    return cycle


def cycle_medians(tasks: int, runs: int, arrays: list[str]) -> list[float]:
    """The median cycle of each case, the cases timed in turn (one cycle each, round
    after round) so that a change in the machine's load falls on all of them alike."""
    cycles = [build_cycle(tasks, a) for a in arrays]

    async def run() -> list[float]:
        samples: list[list[float]] = [[] for _ in cycles]
        for c in cycles:
            await c.run()  # the first builds the cached views
        for _ in range(runs):
            for c, out in zip(cycles, samples, strict=True):
                t0 = time.perf_counter()
                await c.run()
                out.append(time.perf_counter() - t0)
        return [statistics.median(s) for s in samples]

    return asyncio.run(run())


def timed_process(argv: list[str], env: dict[str, str], runs: int = 3) -> float:
    best = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
        best.append(time.perf_counter() - t0)
    return statistics.median(best)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=15, help="cycles timed per case")
    args = p.parse_args()
    n = args.tasks
    print(f"{n} tasks; {os.cpu_count()} CPUs")

    # 2. the cycle, in this process
    single, free, limited = cycle_medians(n, args.runs, ["", f"0-{n - 1}", f"0-{n - 1}%16"])
    print(f"{'cycle, ' + str(n) + ' single jobs':<40} median {single * 1000:8.1f} ms  (baseline)")
    for t, label in ((free, "no limit"), (limited, "%16")):
        print(
            f"{'cycle, one array of ' + str(n) + ' (' + label + ')':<40} "
            f"median {t * 1000:8.1f} ms  ratio {t / single:5.2f} to single jobs"
        )

    # 1. and 3. against a scheduler
    tmp = Path(tempfile.mkdtemp(prefix="gshare-bench-"))
    queues = "[queues.singles]\n[queues.serial]\n[queues.arrays]\n"
    config = queues + '[scheduler]\ndefault_queue = "singles"\n'
    proc, address = start_scheduler(tmp, config)
    (tmp / "job.sh").write_text("#!/bin/sh\ntrue\n")
    try:
        env = dict(os.environ, GSHARE_ADDRESS=address)
        script = tmp / "job.sh"
        script.write_text("#!/bin/sh\ntrue\n")
        _, wall_serial = asyncio.run(api_round(address, n, 1, submit=True, queue="serial"))
        print(
            f"{str(n) + ' single SubmitJob calls, one by one':<40} {wall_serial:8.2f} s  "
            f"({n / wall_serial:.0f}/s, baseline 1)"
        )
        _, wall_single = asyncio.run(api_round(address, n, 64, submit=True))
        print(
            f"{str(n) + ' single SubmitJob calls, 64 in flight':<40} {wall_single:8.2f} s  "
            f"({n / wall_single:.0f}/s, baseline 2)"
        )
        t0 = time.perf_counter()
        subprocess.run(
            [str(BIN / "gsub"), str(script), "-q", "arrays", "--array", f"0-{n - 1}"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        wall_array = time.perf_counter() - t0
        print(
            f"{'one gsub --array 0-' + str(n - 1) + ' process':<40} {wall_array:8.2f} s  "
            f"x{wall_serial / wall_array:.1f} faster than baseline 1, "
            f"x{wall_single / wall_array:.1f} than baseline 2"
        )
        gshare = str(BIN / "gshare")
        q_single = timed_process([gshare, "queue", "-q", "singles"], env)
        q_fold = timed_process([gshare, "queue", "-q", "arrays"], env)
        q_each = timed_process([gshare, "queue", "-q", "arrays", "-r"], env)
        print(f"{'gshare queue, ' + str(n) + ' single jobs':<40} {q_single:8.2f} s  (baseline)")
        print(
            f"{'gshare queue, the array folded':<40} {q_fold:8.2f} s  ratio {q_fold / q_single:.2f}"
        )
        print(
            f"{'gshare queue -r, a line per task':<40} {q_each:8.2f} s  "
            f"ratio {q_each / q_single:.2f}"
        )
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
