"""Preemption latency: from a high-priority submit to that job running, on a full cluster.

Starts a real scheduler and one agent with 4 fake GPUs, fills them with a preemptible
job, submits a 4-GPU job with a higher priority class and measures submit -> RUNNING
(the scheduler's own start time). Three victims: one that yields at once through
gshare.checkpoint, one that never handles the signal (killed at the end of its grace),
for a few grace periods. Baseline, measured in the same run: the same submit -> RUNNING
on an idle cluster.

Usage: .venv/bin/python bench/preempt.py [--graces 2,5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster import Cluster, wait_until

YIELDING = f"""#!/bin/bash
exec {sys.executable} -c '
import time
from gshare.checkpoint import Checkpointer
c = Checkpointer()
print("ready", flush=True)
while not c.should_stop():
    time.sleep(0.05)
c.save(1, "state")
c.exit_yielded()
'
"""
CONFIG = "[scheduler]\nkill_grace_s = 3\n[scheduler.policy_params]\nmin_runtime_s = 0\n"


def latency(cluster: Cluster, work: Path, victim: list[str] | None) -> float:
    if victim is not None:
        low = cluster.submit(*victim, "--gpus", "4", "--priority", "-1", cwd=work)
        cluster.wait_state(low, "RUNNING")
        wait_until("the victim to be ready", lambda: "ready" in _log(cluster, low), timeout=30)
    t0 = time.time()
    high = cluster.submit(
        "--wrap", "true", "--gpus", "4", "--priority", "10", "--no-preempt", cwd=work
    )
    job = cluster.wait_state(high, {"RUNNING", "COMPLETED"}, timeout=120)
    took = job.start_time - t0
    cluster.wait_state(high, "COMPLETED")
    if victim is not None:
        cluster.gshare("cancel", str(low))
        cluster.wait_state(low, {"CANCELLED", "FAILED", "COMPLETED"}, timeout=60)
    return took


def _log(cluster: Cluster, job_id: int) -> str:
    path = Path(cluster.job(job_id).output_path)
    return path.read_text() if path.exists() else ""


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--graces", default="2,5")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gshare-bench-"))
    work = root / "work"
    work.mkdir()
    script = work / "yielding.sh"
    script.write_text(YIELDING)
    cluster = Cluster(root / "cluster", gpus_per_node=4, agents=1, config=CONFIG)
    (root / "cluster").mkdir()
    cluster.start()
    try:

        def show(name: str, victim: list[str] | None) -> float:
            samples = [latency(cluster, work, victim) for _ in range(args.repeat)]
            med = statistics.median(samples)
            print(
                f"{name:<46} median {med:6.2f} s   (min {min(samples):.2f}, max {max(samples):.2f})"
            )
            return med

        base = show("baseline: idle cluster", None)
        for grace in (float(g) for g in args.graces.split(",")):
            med = show(
                f"victim yields via gshare.checkpoint, grace {grace:g}s",
                [str(script), "--grace", f"{grace:g}s"],
            )
            print(f"{'':<46} x{med / base:.1f} baseline, {med / grace:.2f} of the grace")
            med = show(
                f"victim ignores the signal, grace {grace:g}s",
                ["--wrap", "trap '' USR1; echo ready; sleep 600", "--grace", f"{grace:g}s"],
            )
            print(f"{'':<46} x{med / base:.1f} baseline, {med / grace:.2f} of the grace")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
