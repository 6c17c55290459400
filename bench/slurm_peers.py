"""Slurm as a peer: how fast a real one-node Slurm takes and starts jobs, by each way in.

Starts the same Slurm as the tests (tests/slurm.py: munged, slurmctld, slurmd with four
fake GPUs, slurmrestd; 22.05 from Debian, on loopback) and measures, for each way of
submitting (a "route"):

  1. submissions/s: N jobs submitted one after another (the jobs are `true`; those
     still queued afterwards are cancelled);
  2. submit → running on an idle node: the time from just before the submit to the job
     script's first line, which writes its own clock to a marker file; the median over
     several jobs, each submitted once the node is idle again, after a random pause of
     up to a second (slurmctld starts queued jobs on a cadence of its own, about every
     second or two here: a submit right after the previous job ended would always land
     at the same point of it).

Routes: `sbatch` (the command line, one process per job), `SlurmClient.submit` (the
bridge's REST client), `gsub` to a gshare scheduler with one local agent (four fake GPUs,
on the same machine), and `gsub --slurm always`: gshare hands the job to the same Slurm
(the hand-off overhead is its latency against sbatch's). Each is a `Route` with two
functions. Figures are printed as a table with ratios to `sbatch`.

Usage: .venv/bin/python bench/slurm_peers.py [--jobs 200] [--samples 9]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurm_bridge import SlurmClient, SlurmJobSpec
from tests.cluster import BIN, Cluster, wait_until
from tests.slurm import SlurmCluster


@dataclass(frozen=True)
class Throughput:
    jobs: int
    seconds: float
    p50_ms: float

    @property
    def per_s(self) -> float:
        return self.jobs / self.seconds


@dataclass(frozen=True)
class Latency:
    samples: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)


@dataclass(frozen=True)
class Route:
    name: str
    throughput: Callable[[SlurmCluster, int], Awaitable[Throughput]]
    latency: Callable[[SlurmCluster, int], Awaitable[Latency]]


# ------------------------------------------------------------ helpers


def wait_idle(cluster: SlurmCluster, timeout: float = 120) -> None:
    """Until no job is queued or running (earlier runs' jobs would skew a latency)."""

    def idle() -> bool:
        res = cluster.run_cmd(["squeue", "-h", "-o", "%i"], timeout=10)
        return res.returncode == 0 and not res.stdout.strip()

    wait_until("the queue to drain", idle, timeout, every=0.1)


PAUSES = random.Random(20261123)


def settle(cluster: SlurmCluster) -> None:
    wait_idle(cluster)
    time.sleep(PAUSES.uniform(0.0, 1.0))


def marker_script(marker: Path) -> str:
    # the job's first act: write its own clock, so polling does not add to the figure
    return f"#!/bin/bash\ndate +%s.%N > {marker}.tmp && mv {marker}.tmp {marker}\n"


async def wait_marker(marker: Path, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no marker {marker} after {timeout}s")
        await asyncio.sleep(0.005)
    return float(marker.read_text())


# ------------------------------------------------------------ sbatch


async def sbatch_throughput(cluster: SlurmCluster, jobs: int) -> Throughput:
    cmd = ["sbatch", "--parsable", "-o", "/dev/null", "-J", "bench", "--wrap", "true"]
    each = []
    started = time.perf_counter()
    for _ in range(jobs):
        t = time.perf_counter()
        cluster.run_cmd(cmd, timeout=30, check=True)
        each.append(time.perf_counter() - t)
    return Throughput(jobs, time.perf_counter() - started, 1000 * statistics.median(each))


async def sbatch_latency(cluster: SlurmCluster, samples: int) -> Latency:
    work = cluster.workdir("bench-sbatch")
    found = []
    for i in range(samples):
        settle(cluster)
        marker = work / f"running-{time.monotonic_ns()}"
        script = work / f"job-{i}.sh"
        script.write_text(marker_script(marker))
        t0 = time.time()
        cluster.run_cmd(["sbatch", "-o", "/dev/null", "-D", str(work), str(script)], check=True)
        found.append(await wait_marker(marker) - t0)
    return Latency(found)


# ------------------------------------------------------------ SlurmClient (REST)


def rest_client(cluster: SlurmCluster) -> SlurmClient:
    return SlurmClient(cluster.url, "root", token=cluster.token("root"), version="v0.0.38")


async def rest_throughput(cluster: SlurmCluster, jobs: int) -> Throughput:
    work = cluster.workdir("bench-rest")
    spec = SlurmJobSpec(
        name="bench", script="#!/bin/bash\ntrue\n", working_dir=str(work), stdout="/dev/null"
    )
    each = []
    async with rest_client(cluster) as client:
        await client.ping()  # connection set-up and version out of the timing
        started = time.perf_counter()
        for _ in range(jobs):
            t = time.perf_counter()
            await client.submit(spec)
            each.append(time.perf_counter() - t)
        wall = time.perf_counter() - started
    return Throughput(jobs, wall, 1000 * statistics.median(each))


async def rest_latency(cluster: SlurmCluster, samples: int) -> Latency:
    work = cluster.workdir("bench-rest")
    found = []
    async with rest_client(cluster) as client:
        await client.ping()
        for _ in range(samples):
            settle(cluster)
            marker = work / f"running-{time.monotonic_ns()}"
            spec = SlurmJobSpec(
                name="bench",
                script=marker_script(marker),
                working_dir=str(work),
                stdout="/dev/null",
            )
            t0 = time.time()
            await client.submit(spec)
            found.append(await wait_marker(marker) - t0)
    return Latency(found)


# ------------------------------------------------------------ gsub (local, and handed off)

GSHARE: dict[str, Cluster] = {}


def start_gshare(slurm: SlurmCluster, root: Path) -> Cluster:
    root.mkdir(mode=0o755, parents=True)
    root.parent.chmod(0o755)  # the agent and jobs reach the socket and files through it
    token = root / "slurm.token"
    token.write_text(slurm.token("root") + "\n")
    config = f"""
[scheduler]
kill_grace_s = 3

[slurm]
url = "{slurm.url}"
user = "root"
token_file = "{token}"
partition = "debug"
cluster_name = "bench"
poll = "1s"
"""
    cluster = Cluster(root / "gshare", gpus_per_node=4, agents=1, config=config)
    (root / "gshare").mkdir()
    GSHARE["cluster"] = cluster.start()
    return cluster


def gsub(args: list[str], cwd: Path) -> None:
    cluster = GSHARE["cluster"]
    res = cluster.run([str(BIN / "gsub"), *args], cwd=cwd, timeout=60)
    if res.code != 0:
        raise RuntimeError(f"gsub failed: {res.err}")


def _gsub_throughput(extra: list[str]) -> Callable[[SlurmCluster, int], Awaitable[Throughput]]:
    async def run(cluster: SlurmCluster, jobs: int) -> Throughput:
        work = cluster.workdir("bench-gsub")
        each = []
        started = time.perf_counter()
        for _ in range(jobs):
            t = time.perf_counter()
            gsub([*extra, "--name", "bench", "--output", "/dev/null", "--wrap", "true"], work)
            each.append(time.perf_counter() - t)
        wall = time.perf_counter() - started
        with GSHARE["cluster"].client() as c:  # let the local ones finish before the next route
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(
                j.state in (1, 3, 4) for j in c.jobs(include_finished=False)
            ):
                await asyncio.sleep(0.5)
        return Throughput(jobs, wall, 1000 * statistics.median(each))

    return run


def _gsub_latency(extra: list[str]) -> Callable[[SlurmCluster, int], Awaitable[Latency]]:
    async def run(cluster: SlurmCluster, samples: int) -> Latency:
        work = cluster.workdir("bench-gsub")
        found = []
        for i in range(samples):
            settle(cluster)
            marker = work / f"running-{time.monotonic_ns()}"
            script = work / f"gjob-{i}.sh"
            script.write_text(marker_script(marker))
            script.chmod(0o755)
            t0 = time.time()
            gsub([*extra, "--output", "/dev/null", str(script)], work)
            found.append(await wait_marker(marker) - t0)
        return Latency(found)

    return run


# ------------------------------------------------------------ the table


def routes() -> list[Route]:
    return [
        Route("sbatch --wrap true", sbatch_throughput, sbatch_latency),
        Route("SlurmClient.submit (REST)", rest_throughput, rest_latency),
        Route("gsub (local agent)", _gsub_throughput([]), _gsub_latency([])),
        Route(
            "gsub --slurm always",
            _gsub_throughput(["--slurm", "always"]),
            _gsub_latency(["--slurm", "always"]),
        ),
    ]


async def measure(
    cluster: SlurmCluster, jobs: int, samples: int
) -> list[tuple[str, Throughput, Latency]]:
    # the first job after slurmctld starts waits for its first scheduling pass: not a figure
    await sbatch_latency(cluster, 1)
    rows = []
    for route in routes():
        latency = await route.latency(cluster, samples)  # on an idle node, so first
        throughput = await route.throughput(cluster, jobs)
        # starting them all would take minutes (two CPUs, one pass every second or two)
        cluster.run_cmd(["scancel", "--name=bench"], check=True)
        wait_idle(cluster)
        rows.append((route.name, throughput, latency))
    return rows


def spawn_baseline(cluster: SlurmCluster, jobs: int) -> float:
    """Median ms to run `/bin/true` the way sbatch is run: the cost of a process alone."""
    each = []
    for _ in range(jobs):
        t = time.perf_counter()
        cluster.run_cmd(["/bin/true"], check=True)
        each.append(time.perf_counter() - t)
    return 1000 * statistics.median(each)


def print_table(rows: list[tuple[str, Throughput, Latency]]) -> None:
    base_tp, base_lat = rows[0][1], rows[0][2]
    print(
        f"{'route':<28} {'submits/s':>10} {'x sbatch':>9} {'submit p50':>11} "
        f"{'→running p50':>13} {'x sbatch':>9}  (min–max)"
    )
    for name, tp, lat in rows:
        print(
            f"{name:<28} {tp.per_s:>10.0f} {tp.per_s / base_tp.per_s:>9.2f} "
            f"{tp.p50_ms:>9.1f}ms {lat.median_s * 1000:>11.0f}ms "
            f"{lat.median_s / base_lat.median_s:>9.2f}  "
            f"({min(lat.samples) * 1000:.0f}–{max(lat.samples) * 1000:.0f} ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="submissions per route")
    parser.add_argument("--samples", type=int, default=9, help="latency samples per route")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gshare-slurm-bench-"))
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        start_gshare(cluster, root / "gs")
        rows = asyncio.run(measure(cluster, args.jobs, args.samples))
        baseline_ms = spawn_baseline(cluster, args.jobs)
    finally:
        if "cluster" in GSHARE:
            GSHARE.pop("cluster").stop()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"Slurm 22.05 one node on loopback, {os.cpu_count()} cores, "
        f"{dt.datetime.now().isoformat(timespec='minutes')}; {args.jobs} sequential "
        f"submissions, {args.samples} latency samples per route"
    )
    print_table(rows)
    print(f"baseline: starting /bin/true the way sbatch is started, p50 {baseline_ms:.1f}ms")


if __name__ == "__main__":
    main()
