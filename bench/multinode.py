"""Gang start: from submit to every part running, a 2-node job against a 1-node job.

Starts a real scheduler and two agents with 2 fake GPUs each, each agent at its own
loopback address, and submits, in turn, a 1-node job of 2 GPUs (the baseline) and a
2-node job of 2 GPUs per node, each a script that sleeps until cancelled. The figure is
the time from just before `SubmitJob` to the job's "running" event (the scheduler's clock:
for the 2-node job, when the last part's agent reported it running), read from the job's
event log, so polling adds nothing. The two kinds alternate, on the same idle cluster.

Usage: .venv/bin/python bench/multinode.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gshare.api import gshare_pb2 as pb
from gshare.client import Client
from tests.cluster import Cluster

SLEEPER = "#!/bin/bash\nexec sleep 600\n"  # submitted through the API: no gsub start-up
CONFIG = "[scheduler]\nkill_grace_s = 1\n"


def submit_to_running(client: Client, cluster: Cluster, work: Path, nodes: int) -> float:
    spec = pb.JobSpec(
        name="sleeper",
        gpus=2 * nodes,
        nodes=nodes if nodes > 1 else 0,
        gpus_per_node=2 if nodes > 1 else 0,
        workdir=str(work),
        script=SLEEPER.encode(),
        env={"PATH": "/usr/bin:/bin"},
    )
    t0 = time.time()
    job_id = client.submit(spec)
    cluster.wait_state(job_id, "RUNNING", timeout=60)
    running = next(e.time for e in cluster.job(job_id).events if e.kind == "running")
    cluster.gshare("cancel", str(job_id))
    cluster.wait_state(job_id, "CANCELLED", timeout=60)
    return running - t0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gshare-bench-"))
    work = root / "work"
    work.mkdir()
    (root / "cluster").mkdir()
    cluster = Cluster(
        root / "cluster",
        gpus_per_node=2,
        agents=2,
        config=CONFIG,
        node_addresses={"node0": "127.0.0.2", "node1": "127.0.0.3"},
    )
    cluster.start()
    one: list[float] = []
    two: list[float] = []
    try:
        with cluster.client() as client:
            for _ in range(args.repeat):
                one.append(submit_to_running(client, cluster, work, 1))
                two.append(submit_to_running(client, cluster, work, 2))
    finally:
        cluster.stop()

    def show(name: str, xs: list[float]) -> None:
        print(
            f"{name:28s} median {statistics.median(xs) * 1000:6.0f} ms   "
            f"min {min(xs) * 1000:6.0f} ms   max {max(xs) * 1000:6.0f} ms   (n={len(xs)})"
        )

    show("1 node x 2 GPUs (baseline)", one)
    show("2 nodes x 2 GPUs", two)
    print(f"ratio of medians: {statistics.median(two) / statistics.median(one):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
