"""Submission throughput and latency against a real scheduler.

Starts a schedulerd (SQLite in a temp dir, no agents, so jobs stay queued) unless
--address is given, then measures:

  1. the API: N SubmitJob calls over the Unix socket with C in flight (grpc.aio),
     against a baseline of N no-op health checks over the same channel;
  2. the command line: M sequential `gsub` processes, against a baseline of M
     `python -c pass` processes (interpreter start-up alone).

Prints submissions/s and p50/p99 latency for each, and the ratios to the baselines.
Usage: .venv/bin/python bench/submit.py [--jobs 5000] [--concurrency 64] [--gsub 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from gshare.client import Client, ClientError

BIN = Path(sys.executable).parent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, latencies: list[float], wall: float) -> dict[str, float]:
    figures = {
        "per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * pct(latencies, 0.99),
    }
    print(
        f"{name:<34} {figures['per_s']:9.0f}/s   p50 {figures['p50_ms']:7.2f} ms   "
        f"p99 {figures['p99_ms']:7.2f} ms   ({len(latencies)} in {wall:.2f}s)"
    )
    return figures


async def api_round(
    target: str, n: int, concurrency: int, submit: bool, queue: str = ""
) -> tuple[list[float], float]:
    spec = pb.JobSpec(
        queue=queue,
        gpus=1,
        workdir="/tmp",
        script=b"#!/bin/sh\ntrue\n",
        script_name="bench",
        env={"PATH": "/usr/bin:/bin"},
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClientServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest())
        latencies: list[float] = []
        remaining = iter(range(n))

        async def worker() -> None:
            for _ in remaining:
                t0 = time.perf_counter()
                if submit:
                    await stub.SubmitJob(pb.SubmitJobRequest(spec=spec))
                else:
                    await health.Check(health_pb2.HealthCheckRequest())
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - t0


def process_round(argv: list[str], m: int, env: dict[str, str]) -> tuple[list[float], float]:
    latencies = []
    t0 = time.perf_counter()
    for _ in range(m):
        s = time.perf_counter()
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
        latencies.append(time.perf_counter() - s)
    return latencies, time.perf_counter() - t0


def start_scheduler(tmp: Path, config: str) -> tuple[subprocess.Popen[bytes], str]:
    """A scheduler with its state in `tmp` and this config, serving on its socket there."""
    (tmp / "gshare.toml").write_text(config)
    address = f"unix:{tmp / 'gshare.sock'}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schedulerd.main",
            "--state-dir",
            str(tmp),
            "--config",
            str(tmp / "gshare.toml"),
            "--log-level",
            "WARNING",
        ],
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with Client(address, timeout=1) as c:
                c.nodes()
            return proc, address
        except ClientError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--address", help="use a running scheduler instead of starting one")
    p.add_argument("--jobs", type=int, default=5000, help="API submissions (default 5000)")
    p.add_argument("--concurrency", type=int, default=64, help="API calls in flight (default 64)")
    p.add_argument("--gsub", type=int, default=50, help="gsub processes (default 50)")
    p.add_argument("--sqlite-synchronous", default="FULL", help="FULL (default) or NORMAL")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gshare-bench-"))
    proc = None
    address = args.address
    if address is None:
        config = f'[store]\nsqlite_synchronous = "{args.sqlite_synchronous}"\n'
        proc, address = start_scheduler(tmp, config)
    try:
        print(
            f"scheduler at {address}; SQLite synchronous={args.sqlite_synchronous}; "
            f"{os.cpu_count()} CPUs"
        )
        figures: dict[str, dict[str, float]] = {}
        lat, wall = asyncio.run(api_round(address, args.jobs, args.concurrency, submit=False))
        figures["noop_rpc"] = report(f"baseline: no-op RPC x{args.jobs}", lat, wall)
        lat, wall = asyncio.run(api_round(address, args.jobs, args.concurrency, submit=True))
        figures["api_submit"] = report(f"SubmitJob x{args.jobs} (c={args.concurrency})", lat, wall)
        lat, wall = asyncio.run(api_round(address, min(args.jobs, 1000), 1, submit=True))
        figures["api_submit_serial"] = report("SubmitJob, one at a time", lat, wall)
        env = dict(os.environ, GSHARE_ADDRESS=address)
        script = tmp / "job.sh"
        script.write_text("#!/bin/sh\ntrue\n")
        lat, wall = process_round([sys.executable, "-c", "pass"], args.gsub, env)
        figures["python_start"] = report(f"baseline: python -c pass x{args.gsub}", lat, wall)
        lat, wall = process_round([str(BIN / "gsub"), str(script)], args.gsub, env)
        figures["gsub"] = report(f"gsub process x{args.gsub}", lat, wall)
        api_ratio = figures["api_submit"]["per_s"] / figures["noop_rpc"]["per_s"]
        gsub_ratio = figures["gsub"]["p50_ms"] / figures["python_start"]["p50_ms"]
        print(f"ratio SubmitJob/no-op RPC throughput: {api_ratio:.2f}")
        print(f"ratio gsub/python start-up latency (p50): {gsub_ratio:.2f}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
