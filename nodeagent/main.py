"""gshare-nodeagent: the per-node agent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from pathlib import Path

import psutil

from gshare import __version__
from gshare.address import AddressError, resolve
from gshare.config import default_state_dir
from gshare.logs import setup_logging
from nodeagent.gpus import FakeProbe, GpuProbe, NvmlProbe, NvmlUnavailable
from nodeagent.launcher import Launcher
from nodeagent.link import SchedulerLink

log = logging.getLogger("nodeagent")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gshare-nodeagent",
        description="The gshare node agent: reports this node's GPUs to the scheduler and "
        "runs the jobs it is given.",
    )
    p.add_argument(
        "--address",
        help="scheduler address, unix:PATH or HOST:PORT "
        "(default: $GSHARE_ADDRESS, else the local socket)",
    )
    p.add_argument(
        "--node", default=socket.gethostname(), help="this node's name (default: hostname)"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where running jobs are recorded "
        "(default: STATE/agent-NODE under the gshare state dir)",
    )
    p.add_argument("--fake-gpus", type=int, metavar="N", help="use N fake GPUs instead of NVML")
    p.add_argument("--fake-gpu-model", default="Fake GPU", help="model name of the fake GPUs")
    p.add_argument(
        "--fake-gpu-memory",
        type=int,
        default=81920,
        metavar="MB",
        help="memory of each fake GPU in MB (default 81920)",
    )
    p.add_argument("--no-fake-nvlink", action="store_true", help="fake GPUs without NVLink")
    p.add_argument("--token-file", type=Path, help="agent token, for a scheduler reached over TCP")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def make_probe(args: argparse.Namespace) -> GpuProbe:
    if args.fake_gpus is not None:
        return FakeProbe(
            args.node,
            args.fake_gpus,
            args.fake_gpu_model,
            args.fake_gpu_memory,
            nvlink=not args.no_fake_nvlink,
        )
    return NvmlProbe()


async def run(args: argparse.Namespace, probe: GpuProbe, target: str, token: str) -> int:
    state_dir = args.state_dir or default_state_dir() / f"agent-{args.node}"
    link: SchedulerLink | None = None
    launcher = Launcher(
        state_dir,
        lambda proc: link.report(proc) if link else None,
        lambda job_id, data: link.report_checkpoint(job_id, data) if link else None,
    )
    launcher.adopt()
    gpus = probe.inventory()
    log.info(
        "node %s: %d GPUs via %s; %d jobs re-adopted",
        args.node,
        len(gpus),
        probe.backend,
        len(launcher.jobs),
    )
    link = SchedulerLink(
        target,
        args.node,
        gpus,
        probe.backend,
        psutil.cpu_count() or 1,
        psutil.virtual_memory().total // (1 << 20),
        launcher,
        token,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def watch_jobs() -> None:
        while True:
            launcher.poll()
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(link.run()), asyncio.create_task(watch_jobs())]
    await stop.wait()
    # Jobs keep running: a restarted agent re-adopts them from its state dir.
    log.info(
        "agent stopping; %d jobs keep running", sum(not p.exited for p in launcher.jobs.values())
    )
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    probe.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level)
        target = resolve(args.address)
    except (ValueError, AddressError) as exc:
        print(f"gshare-nodeagent: {exc}", file=sys.stderr)
        return 2
    token = ""
    if args.token_file:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(
                f"gshare-nodeagent: cannot read token file {args.token_file}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
    try:
        probe = make_probe(args)
    except (ValueError, NvmlUnavailable) as exc:
        print(
            f"gshare-nodeagent: {exc} (use --fake-gpus N on a machine without GPUs)",
            file=sys.stderr,
        )
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args, probe, target, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
