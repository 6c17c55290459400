"""`gshare up`: a scheduler and K local agents in the foreground, on one machine."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gshare.api import gshare_pb2 as pb
from gshare.client import Client, ClientError
from gshare.config import default_state_dir


def nvml_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def add_up_parser(sub: Any) -> None:
    up = sub.add_parser(
        "up",
        help="run a scheduler and local agents in the foreground",
        description="Run a whole gshare cluster on this machine: the scheduler (SQLite store) "
        "and K node agents. Uses the real GPUs through NVML when there is a driver, "
        "else fake GPUs. Ctrl-C stops the daemons; running jobs keep running and are "
        "re-adopted by the next `gshare up` on the same state dir.",
    )
    up.add_argument(
        "--fake-gpus",
        type=int,
        metavar="N",
        help="fake GPUs per agent (default: real GPUs if NVML works, else 4)",
    )
    up.add_argument("--agents", type=int, default=1, metavar="K", help="local agents (default 1)")
    up.add_argument("--state-dir", type=Path, help=f"default: {default_state_dir()}")
    up.add_argument("--config", type=Path, help="gshare.toml for the scheduler")
    up.add_argument("--policy", help="scheduling policy")
    up.add_argument("--tcp", metavar="HOST:PORT", help="also listen on TCP for remote agents")
    up.add_argument(
        "--mqtt",
        metavar="URL",
        help="telemetry broker to use, mqtt://HOST:PORT (default: [mqtt] url from --config, "
        "else an embedded broker on a free loopback port; 'none' turns telemetry off)",
    )
    up.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve the scheduler's Prometheus /metrics here (agents on the next ports)",
    )
    up.add_argument("--log-level", default="WARNING", help="daemon log level (default WARNING)")
    up.set_defaults(func=run_up)


def _label(proc: subprocess.Popen[bytes]) -> str:
    """'schedulerd.main' or 'nodeagent.main (NODE)' from the command line it was given."""
    argv = [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)]
    label = argv[2] if len(argv) > 2 else argv[0]
    if "--node" in argv:
        label += f" ({argv[argv.index('--node') + 1]})"
    return label


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):  # agents first, the scheduler last
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in reversed(procs):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def run_up(args: argparse.Namespace) -> int:
    if args.agents < 1:
        print("gshare up: --agents must be at least 1", file=sys.stderr)
        return 2
    if args.fake_gpus is not None and args.fake_gpus < 1:
        print("gshare up: --fake-gpus must be at least 1", file=sys.stderr)
        return 2
    state = (args.state_dir or default_state_dir()).absolute()
    sock = state / "gshare.sock"
    address = f"unix:{sock}"
    fake = args.fake_gpus
    if fake is None and not nvml_available():
        fake = 4
    if sock.exists():
        try:
            with Client(address, timeout=2) as probe:
                probe.nodes()
            print(f"gshare up: a scheduler is already running at {address}", file=sys.stderr)
            return 1
        except ClientError:
            pass  # a stale socket from a run that was killed
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    py = sys.executable
    sched_cmd = [
        py,
        "-m",
        "schedulerd.main",
        "--state-dir",
        str(state),
        "--socket",
        str(sock),
        "--log-level",
        args.log_level,
    ]
    if args.config:
        sched_cmd += ["--config", str(args.config)]
    if args.policy:
        sched_cmd += ["--policy", args.policy]
    if args.tcp:
        sched_cmd += ["--tcp", args.tcp]
    metrics_host, metrics_port = "", 0
    if args.metrics:
        metrics_host, _, port_text = args.metrics.rpartition(":")
        if not metrics_host or not port_text.isdigit():
            print(
                f"gshare up: --metrics: expected HOST:PORT, not {args.metrics!r}", file=sys.stderr
            )
            return 2
        metrics_port = int(port_text)
        sched_cmd += ["--metrics", args.metrics]
    host = socket.gethostname()
    names = [host] if args.agents == 1 else [f"{host}-{i}" for i in range(args.agents)]
    procs: list[subprocess.Popen[bytes]] = []

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        mqtt_url = _mqtt_url(args)
        if mqtt_url == "embedded":
            port = _free_port()
            mqtt_url = f"mqtt://127.0.0.1:{port}"
            ready = state / "broker.ready"
            ready.unlink(missing_ok=True)
            procs.append(
                subprocess.Popen(
                    [
                        py,
                        "-m",
                        "gshare.broker",
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--ready-file",
                        str(ready),
                    ]
                )
            )
            if not _wait_path(procs[-1], ready, "embedded MQTT broker", 30):
                return 1
        if mqtt_url is not None:
            sched_cmd += ["--mqtt", mqtt_url]
        procs.append(subprocess.Popen(sched_cmd))
        if not _wait_path(procs[-1], sock, "scheduler", 60):
            return 1
        for k, name in enumerate(names, start=1):
            cmd = [
                py,
                "-m",
                "nodeagent.main",
                "--address",
                address,
                "--node",
                name,
                "--state-dir",
                str(state / f"agent-{name}"),
                "--log-level",
                args.log_level,
            ]
            if fake is not None:
                cmd += ["--fake-gpus", str(fake)]
            if args.config:
                cmd += ["--config", str(args.config)]
            if mqtt_url is not None:
                cmd += ["--mqtt", mqtt_url]
            if metrics_port:
                cmd += ["--metrics", f"{metrics_host}:{metrics_port + k}"]
            procs.append(subprocess.Popen(cmd))
        gpus = _wait_ready(procs, address, len(names))
        if gpus is None:
            _stop(procs)
            return 1
        kind = f"{fake} fake GPUs each" if fake is not None else "real GPUs (NVML)"
        print(
            f"gshare is up: scheduler at {address}, {len(names)} node(s) with {kind}, {gpus} GPUs."
        )
        print(f"  telemetry: {mqtt_url or 'off'}", end="")
        print(f"; metrics: http://{args.metrics}/metrics" if args.metrics else "")
        if state != default_state_dir():
            print(f"  export GSHARE_ADDRESS={address}")
        print("  try:   gsub examples/train.sh --gpus 2     then: gshare queue   gshare top")
        print("  stop:  Ctrl-C (running jobs keep running and are re-adopted next time)")
        sys.stdout.flush()
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = [p for p in procs if p.poll() is not None]
        print(
            f"gshare up: {' '.join(_label(p) for p in dead)} exited "
            f"({dead[0].returncode}); stopping",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 0
    except UpError as exc:
        print(f"gshare up: {exc}", file=sys.stderr)
        return 2
    finally:
        _stop(procs)


def _mqtt_url(args: argparse.Namespace) -> str | None:
    """The broker URL for the daemons, "embedded" to start ours, or None for no telemetry."""
    if args.mqtt == "none":
        return None
    if args.mqtt:
        return str(args.mqtt)
    if args.config:
        from gshare.config import ConfigError, load_config

        try:
            configured = load_config(args.config).mqtt.url
        except ConfigError as exc:
            raise UpError(str(exc)) from exc
        if configured:
            return configured
    return "embedded"


class UpError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_path(proc: subprocess.Popen[bytes], path: Path, what: str, timeout: float) -> bool:
    """Until `proc` has made `path` (its socket or ready file), or exits, or time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"gshare up: the {what} exited with {proc.returncode}", file=sys.stderr)
            return False
        if path.exists():
            return True
        time.sleep(0.1)
    print(f"gshare up: the {what} did not start within {timeout:.0f}s", file=sys.stderr)
    return False


def _wait_ready(procs: list[subprocess.Popen[bytes]], address: str, agents: int) -> int | None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                print(f"gshare up: {_label(proc)} exited with {proc.returncode}", file=sys.stderr)
                return None
        try:
            with Client(address, timeout=2) as client:
                nodes = [n for n in client.nodes() if n.state == pb.NODE_UP]
            if len(nodes) >= agents:
                return sum(len(n.gpus) for n in nodes)
        except ClientError:
            pass
        time.sleep(0.2)
    print("gshare up: the cluster did not come up within 60s", file=sys.stderr)
    return None
