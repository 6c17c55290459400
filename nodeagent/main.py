"""gshare-nodeagent: the per-node agent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
import psutil
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from gshare import __version__, sdnotify
from gshare.address import AddressError, host_name_ok, resolve, route_address
from gshare.config import (
    Config,
    ConfigError,
    check_cgroup_root,
    default_state_dir,
    load_config,
    with_mqtt_url,
)
from gshare.logs import setup_logging
from gshare.metrics import LoopCollector, MetricsServer, gpu_families
from nodeagent import cgroups
from nodeagent.cgroups import Confinement
from nodeagent.gpus import FakeProbe, GpuProbe, JobGpus, NvmlProbe, NvmlUnavailable
from nodeagent.launcher import Launcher, StateDirError
from nodeagent.lease import Lease
from nodeagent.link import SchedulerLink
from nodeagent.telemetry import MqttSink, TelemetryPublisher

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
        "--node-address",
        help="where the other parts of a multi-node job reach this node "
        "(default: [agent] address, else this host's address on its route to the scheduler)",
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
    p.add_argument(
        "--confine",
        choices=("auto", "off"),
        help="run each job in a cgroup limited to what it asked for: auto (when the agent is "
        "root and cgroups are there) or off (overrides [agent] confine)",
    )
    p.add_argument(
        "--cgroup-root",
        metavar="PATH",
        help="where job cgroups are made: below the agent's own cgroup, or from the "
        "hierarchy's top if it starts with / (overrides [agent] cgroup_root; default gshare)",
    )
    p.add_argument("--token-file", type=Path, help="agent token, for a scheduler reached over TCP")
    p.add_argument(
        "--config",
        type=Path,
        help="gshare.toml for [mqtt], [telemetry] and [agent] "
        "(default: /etc/gshare/gshare.toml if present)",
    )
    p.add_argument(
        "--mqtt",
        metavar="URL",
        help="telemetry broker, mqtt://HOST:PORT or mqtts://HOST:PORT (overrides [mqtt] url; "
        "'' turns telemetry off)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics here (overrides [agent] metrics)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def state_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.state_dir or default_state_dir() / f"agent-{args.node}")


def make_probe(args: argparse.Namespace, char_devices: bool = False) -> GpuProbe:
    if args.fake_gpus is not None:
        return FakeProbe(
            args.node,
            args.fake_gpus,
            args.fake_gpu_model,
            args.fake_gpu_memory,
            nvlink=not args.no_fake_nvlink,
            dev_dir=state_dir_of(args) / "fake-gpus",
            char_devices=char_devices,
        )
    return NvmlProbe()


def running_jobs(launcher: Launcher) -> list[JobGpus]:
    return [
        JobGpus(p.job_id, p.gpu_indexes, launcher.tree_pids(p.job_id), p.pid)
        for p in list(launcher.jobs.values())
        if not p.exited and p.pid
    ]


def agent_metrics(
    node: str, launcher: Launcher, publisher: TelemetryPublisher | None
) -> list[Metric]:
    jobs = GaugeMetricFamily("gshare_agent_jobs", "jobs this agent runs")
    jobs.add_metric([], sum(not p.exited for p in launcher.jobs.values()))
    fams: list[Metric] = [jobs]
    if publisher is not None:
        fams += gpu_families(publisher.latest)
        up = GaugeMetricFamily(
            "gshare_agent_mqtt_connected", "1 while the telemetry broker is connected"
        )
        up.add_metric([], float(publisher.connected))
        buffered = GaugeMetricFamily(
            "gshare_agent_telemetry_buffered", "telemetry messages waiting for the broker"
        )
        buffered.add_metric([], len(publisher.buffer))
        fams += [up, buffered]
    return fams


def tls_credentials(config: Config) -> grpc.ChannelCredentials | None:
    """TLS to the scheduler when [agent] ca_file is set: its certificate is checked against
    that CA, and this node shows its own certificate (gshare ca node NAME) when it has one."""
    if not config.agent_ca_file:
        return None
    files = {}
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(config, f"agent_{key}")
        try:
            files[key] = Path(path).read_bytes() if path else None
        except OSError as exc:
            raise ConfigError(f"[agent] {key} {path}: {exc.strerror}") from None
        marker = b"PRIVATE KEY-----" if key == "key_file" else b"-----BEGIN CERTIFICATE-----"
        if path and marker not in (files[key] or b""):
            raise ConfigError(f"[agent] {key} {path}: not a PEM file")
    return grpc.ssl_channel_credentials(files["ca_file"], files["key_file"], files["cert_file"])


async def run(
    args: argparse.Namespace,
    config: Config,
    probe: GpuProbe,
    target: str,
    token: str,
    confinement: Confinement,
    credentials: grpc.ChannelCredentials | None = None,
) -> int:
    state_dir = state_dir_of(args)
    link: SchedulerLink | None = None
    gpus = probe.inventory()
    try:
        launcher = Launcher(
            state_dir,
            lambda proc: link.report(proc) if link else None,
            lambda job_id, data: link.report_checkpoint(job_id, data) if link else None,
            confinement=confinement,
            pids_max=config.agent_pids_max,
            gpu_minors={g.index: g.minor if g.minor >= 0 else g.index for g in gpus},
        )
    except (StateDirError, OSError) as exc:
        log.error("cannot use the state dir %s: %s", state_dir, exc)
        return 2
    launcher.adopt()
    if confinement.enforced:
        log.info("jobs are confined: %s", confinement.kind)
    else:
        log.warning("jobs run unconfined: %s", confinement.kind)
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
        Lease(launcher.lease_file),
        token,
        confinement.kind,
        credentials,
        args.node_address or config.agent_address or route_address(target),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    polled = [loop.time()]

    async def watch_jobs() -> None:
        while True:
            launcher.poll()
            polled[0] = loop.time()
            await asyncio.sleep(0.2)

    async def ready() -> None:
        await link.registered_once.wait()
        sdnotify.notify(f"READY=1\nSTATUS=registered with the scheduler at {target}")

    mqtt = config.mqtt
    publisher = None
    if mqtt.enabled:
        publisher = TelemetryPublisher(
            MqttSink(mqtt, args.node),
            args.node,
            probe,
            lambda: running_jobs(launcher),
            config.telemetry_interval_s,
            __version__,
            config.fatal_xids,
        )
    else:
        log.info("telemetry is off (no [mqtt] url)")
    tasks = [
        asyncio.create_task(link.run()),
        asyncio.create_task(watch_jobs()),
        asyncio.create_task(ready()),
    ]
    if publisher is not None:
        tasks.append(asyncio.create_task(publisher.run()))
    # the watchdog is fed while the job watcher keeps turning: a wedged agent gets restarted
    dog = sdnotify.start_watchdog(lambda: loop.time() - polled[0] < 10)
    metrics = None
    listen = args.metrics if args.metrics is not None else config.agent_metrics_listen
    if listen:
        registry = CollectorRegistry()
        registry.register(
            LoopCollector(loop, lambda: agent_metrics(args.node, launcher, publisher))
        )
        try:
            metrics = MetricsServer(registry, listen, state_dir / "metrics.address")
        except (OSError, ValueError) as exc:
            log.error("cannot serve metrics on %s: %s", listen, exc)
            stop.set()
    await stop.wait()
    sdnotify.notify("STOPPING=1")
    await sdnotify.stop_task(dog)
    if metrics is not None:
        metrics.close()
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
    confinement.close()
    return 0 if metrics is not None or not listen else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level)
        config = with_mqtt_url(load_config(args.config), args.mqtt)
        target = resolve(args.address or os.environ.get("GSHARE_ADDRESS") or config.agent_scheduler)
        credentials = tls_credentials(config)
        if args.node_address is not None and not host_name_ok(args.node_address):
            raise ValueError(
                f"--node-address must be a host name or an IP address, not {args.node_address!r}"
            )
    except (ValueError, AddressError, ConfigError) as exc:
        print(f"gshare-nodeagent: {exc}", file=sys.stderr)
        return 2
    if args.token_file is None and config.agent_token_file:
        args.token_file = Path(config.agent_token_file)
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
    if token and not target.startswith("unix:") and credentials is None:
        print(
            "gshare-nodeagent: an agent token is sent only over TLS: set [agent] ca_file "
            "(the cluster's CA) to reach a scheduler over TCP",
            file=sys.stderr,
        )
        return 2
    root = args.cgroup_root if args.cgroup_root is not None else config.agent_cgroup_root
    try:
        check_cgroup_root(root)
    except ValueError as exc:
        print(f"gshare-nodeagent: --cgroup-root: {exc}", file=sys.stderr)
        return 2
    confinement = cgroups.detect(args.confine or config.agent_confine, root)
    try:
        probe = make_probe(args, char_devices=confinement.enforced)
    except OSError as exc:
        confinement.close()
        print(f"gshare-nodeagent: cannot make the fake GPUs' device files: {exc}", file=sys.stderr)
        return 2
    except (ValueError, NvmlUnavailable) as exc:
        confinement.close()
        print(
            f"gshare-nodeagent: {exc} (use --fake-gpus N on a machine without GPUs)",
            file=sys.stderr,
        )
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args, config, probe, target, token, confinement, credentials))
    return 0


if __name__ == "__main__":
    sys.exit(main())
