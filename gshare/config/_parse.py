"""The whole file: its sections read and checked against each other into a `Config`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from gshare.address import host_name_ok
from gshare.clientconfig import host_port
from gshare.config._fairshare import _fairshare
from gshare.config._fields import (
    MAX_PIDS,
    _duration,
    _files,
    _known_keys,
    _mem_mb,
    _port_range,
    _section,
    _typed,
    check_cgroup_root,
)
from gshare.config._model import Config, ConfigError, QueueConfig
from gshare.config._sections import SLURM_MODES, _client, _mqtt, _slurm, _tls
from gshare.paths import SYSTEM_CONFIG


def parse_config(data: dict[str, Any], source: str) -> Config:
    known = {
        "scheduler",
        "server",
        "store",
        "queues",
        "agent",
        "fairshare",
        "mqtt",
        "telemetry",
        "slurm",
        "client",
    }
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{source}: unknown section [{key}] (known: {', '.join(sorted(known))})"
            )
    sched = _section(data, "scheduler", source)
    server = _section(data, "server", source)
    store = _section(data, "store", source)
    where = f"{source} [scheduler]"
    admins = _typed(sched, "admins", list, where, [])
    if not all(isinstance(a, str) for a in admins):
        raise ConfigError(f"{where}: admins must be a list of user names")
    lease = _typed(sched, "node_lease_s", float, where, 60.0)
    heartbeat = _typed(sched, "heartbeat_s", float, where, 5.0)
    if heartbeat <= 0 or lease <= heartbeat:
        raise ConfigError(f"{where}: need 0 < heartbeat_s < node_lease_s")
    grace = _typed(sched, "kill_grace_s", float, where, 10.0)
    if grace < 0:
        raise ConfigError(f"{where}: kill_grace_s must not be negative")
    max_restarts = _typed(sched, "max_restarts", int, where, 10)
    if max_restarts < -1:
        raise ConfigError(f"{where}: max_restarts must be -1 (no limit) or more")
    max_script = _typed(sched, "max_script_bytes", int, where, 1 << 20)
    if max_script <= 0:
        raise ConfigError(f"{where}: max_script_bytes must be positive")
    max_array = _typed(sched, "max_array_size", int, where, 10_001)
    if not 1 <= max_array <= 1_000_001:
        raise ConfigError(f"{where}: max_array_size must be between 1 and 1000001")
    kill_invalid = _typed(sched, "kill_invalid_depend", bool, where, True)
    master_ports = _port_range(_typed(sched, "master_ports", str, where, "29500-29999"), where)
    sync = _typed(store, "sqlite_synchronous", str, f"{source} [store]", "FULL").upper()
    if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError(f"{source} [store]: sqlite_synchronous must be NORMAL, FULL or EXTRA")
    queues: dict[str, QueueConfig] = {}
    for name, table in _section(data, "queues", source).items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [queues.{name}] must be a table")
        qwhere = f"{source} [queues.{name}]"
        _known_keys(table, _QUEUE_KEYS, qwhere)
        idle_pct = _typed(table, "idle_util_pct", float, qwhere, 5.0)
        if not 0 < idle_pct <= 100:
            raise ConfigError(f"{qwhere}: idle_util_pct must be within 0 (excluded) and 100")
        idle_time = _duration(table, "idle_time", qwhere) if "idle_time" in table else 1800
        if idle_time <= 0:
            raise ConfigError(f"{qwhere}: idle_time must be positive")
        mode = _typed(table, "slurm", str, qwhere, "never")
        if mode not in SLURM_MODES:
            raise ConfigError(f"{qwhere}: slurm must be one of {', '.join(SLURM_MODES)}")
        after = _duration(table, "slurm_after", qwhere) if "slurm_after" in table else 600
        default_mem = _mem_mb(table, "default_mem", qwhere)
        queues[name] = QueueConfig(
            name,
            _duration(table, "default_time_limit", qwhere),
            _duration(table, "max_time_limit", qwhere),
            _duration(table, "grace", qwhere) if "grace" in table else 60,
            idle_reclaim=_typed(table, "idle_reclaim", bool, qwhere, False),
            idle_util_pct=idle_pct,
            idle_time_s=idle_time,
            slurm=mode,
            slurm_after_s=after,
            default_mem_mb=default_mem,
        )
    if not queues:
        queues = {"default": QueueConfig("default")}
    default_queue = _typed(sched, "default_queue", str, where, next(iter(queues)))
    if default_queue not in queues:
        raise ConfigError(f"{where}: default_queue {default_queue!r} is not a configured queue")
    params = _typed(sched, "policy_params", dict, where, {})
    fair = _fairshare(_section(data, "fairshare", source), f"{source} [fairshare]")
    mqtt = _mqtt(_section(data, "mqtt", source), f"{source} [mqtt]")
    slurm = _slurm(_section(data, "slurm", source), f"{source} [slurm]")
    if slurm.url == "" and any(q.slurm != "never" for q in queues.values()):
        raise ConfigError(f"{source}: a queue hands jobs to Slurm, but [slurm] has no url")
    tele = _section(data, "telemetry", source)
    twhere = f"{source} [telemetry]"
    _known_keys(tele, {"interval", "fatal_xids"}, twhere)
    interval = float(_duration(tele, "interval", twhere)) if "interval" in tele else 5.0
    if interval <= 0:
        raise ConfigError(f"{twhere}: interval must be at least 1s")
    xids = _typed(tele, "fatal_xids", list, twhere, [])
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in xids):
        raise ConfigError(f"{twhere}: fatal_xids must be a list of positive Xid numbers")
    metrics_listen = _typed(server, "metrics", str, f"{source} [server]", "")
    agent = _section(data, "agent", source)
    awhere = f"{source} [agent]"
    _known_keys(
        agent,
        {
            "metrics",
            "scheduler",
            "token_file",
            "ca_file",
            "cert_file",
            "key_file",
            "confine",
            "cgroup_root",
            "pids_max",
            "address",
        },
        awhere,
    )
    confine = _typed(agent, "confine", str, awhere, "auto")
    if confine not in ("auto", "off"):
        raise ConfigError(f"{awhere}: confine must be auto or off, not {confine!r}")
    cgroup_root = _typed(agent, "cgroup_root", str, awhere, "gshare")
    try:
        check_cgroup_root(cgroup_root)
    except ValueError as exc:
        raise ConfigError(f"{awhere}: cgroup_root: {exc}") from exc
    pids_max = _typed(agent, "pids_max", int, awhere, 16384)
    if not 0 <= pids_max <= MAX_PIDS:
        raise ConfigError(f"{awhere}: pids_max must be between 0 and {MAX_PIDS}")
    agent_address = _typed(agent, "address", str, awhere, "")
    if agent_address and not host_name_ok(agent_address):
        raise ConfigError(
            f"{awhere}: address must be a host name or an IP address, not {agent_address!r}"
        )
    agent_metrics = _typed(agent, "metrics", str, awhere, "")
    agent_scheduler = _typed(agent, "scheduler", str, awhere, "")
    agent_token_file = _typed(agent, "token_file", str, awhere, "")
    agent_files = _files(agent, ("ca_file", "cert_file", "key_file"), awhere)
    if bool(agent_files["cert_file"]) != bool(agent_files["key_file"]):
        raise ConfigError(f"{awhere}: cert_file and key_file go together")
    if agent_files["cert_file"] and not agent_files["ca_file"]:
        raise ConfigError(f"{awhere}: cert_file needs ca_file (the scheduler's CA)")
    swhere = f"{source} [server]"
    _known_keys(
        server,
        {"socket", "tcp", "metrics", "munge_socket", "munge_root", "agent_tcp", "tls"},
        swhere,
    )
    tcp = _typed(server, "tcp", str, swhere, "")
    agent_tcp = _typed(server, "agent_tcp", str, swhere, "")
    for key, value in (
        ("[server] metrics", metrics_listen),
        ("[agent] metrics", agent_metrics),
        ("[server] tcp", tcp),
        ("[server] agent_tcp", agent_tcp),
    ):
        if value and not host_port(value, listen=True):
            raise ConfigError(f"{source} {key}: expected HOST:PORT, not {value!r}")
    tls = _tls(_section(server, "tls", swhere), f"{source} [server.tls]")
    if agent_tcp and not (tls.enabled and tls.ca_file):
        raise ConfigError(
            f"{swhere}: agent_tcp needs [server.tls] cert_file, key_file and ca_file "
            "(agents prove their node with a certificate from that CA)"
        )
    client = _client(_section(data, "client", source), f"{source} [client]")
    return Config(
        policy=_typed(sched, "policy", str, where, "fairshare"),
        policy_params=params,
        admins=tuple(admins),
        node_lease_s=lease,
        heartbeat_s=heartbeat,
        kill_grace_s=grace,
        max_restarts=max_restarts,
        max_script_bytes=max_script,
        max_array_size=max_array,
        kill_invalid_depend=kill_invalid,
        socket=_typed(server, "socket", str, f"{source} [server]", ""),
        tcp=tcp,
        munge_socket=_typed(server, "munge_socket", str, swhere, ""),
        munge_root=_typed(server, "munge_root", bool, swhere, False),
        agent_tcp=agent_tcp,
        tls=tls,
        client=client,
        store_url=_typed(store, "url", str, f"{source} [store]", ""),
        sqlite_synchronous=sync,
        queues=queues,
        default_queue=default_queue,
        source=source,
        mqtt=mqtt,
        slurm=slurm,
        telemetry_interval_s=interval,
        fatal_xids=frozenset(xids),
        metrics_listen=metrics_listen,
        agent_metrics_listen=agent_metrics,
        agent_scheduler=agent_scheduler,
        agent_token_file=agent_token_file,
        agent_ca_file=agent_files["ca_file"],
        agent_cert_file=agent_files["cert_file"],
        agent_key_file=agent_files["key_file"],
        agent_confine=confine,
        agent_cgroup_root=cgroup_root,
        agent_pids_max=pids_max,
        agent_address=agent_address,
        master_ports=master_ports,
        **fair,
    )


_QUEUE_KEYS = {
    "default_time_limit",
    "max_time_limit",
    "grace",
    "idle_reclaim",
    "idle_util_pct",
    "idle_time",
    "slurm",
    "slurm_after",
    "default_mem",
}


def load_config(path: Path | None) -> Config:
    """Load `path`, or /etc/gshare/gshare.toml when it exists, or the built-in defaults."""
    if path is None:
        if not SYSTEM_CONFIG.exists():
            return Config()
        path = SYSTEM_CONFIG
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path))
