"""gshare.toml: the scheduler's configuration, validated at load (README: Configuration)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gshare.address import host_name_ok
from gshare.clientconfig import (
    ClientConfig,
    ClientConfigError,
    client_config,
    host_port,
    parse_client_table,
)
from gshare.limits import parse_mem_mb
from gshare.paths import SYSTEM_CONFIG, SYSTEM_SOCKET, default_state_dir
from gshare.timefmt import TimeFormatError, parse_duration

__all__ = [
    "SYSTEM_CONFIG",
    "SYSTEM_SOCKET",
    "ClientConfig",
    "Config",
    "ConfigError",
    "TlsConfig",
    "client_config",
    "default_state_dir",
]


class ConfigError(ValueError):
    """The configuration file is unreadable or holds a bad value."""


@dataclass(frozen=True)
class QueueConfig:
    name: str
    default_time_limit_s: int = 0
    max_time_limit_s: int = 0
    grace_s: int = 60  # time a preempted job has to checkpoint and exit
    # idle-GPU reclaim: a job whose GPUs all stay under idle_util_pct for idle_time_s
    # while other jobs wait is checkpoint-preempted (off unless idle_reclaim)
    idle_reclaim: bool = False
    idle_util_pct: float = 5.0
    idle_time_s: int = 1800
    # hand-off to Slurm: "never", "when_idle_capacity_lacks" (after waiting slurm_after_s,
    # while Slurm has free GPUs for the job) or "always"
    slurm: str = "never"
    slurm_after_s: int = 600
    default_mem_mb: int = 0  # a job's memory when it asks for none (--mem); 0: unlimited


@dataclass(frozen=True)
class SlurmConfig:
    """The Slurm cluster jobs may be handed to, through slurmrestd."""

    url: str = ""
    user: str = ""  # X-SLURM-USER-NAME; jobs run as this user in Slurm
    token: str = ""
    token_file: str = ""
    partition: str = ""
    cluster_name: str = ""  # in each Slurm job's comment, so two gshares never mix jobs
    poll_s: float = 5.0
    # "owner": each job runs in Slurm as its gshare owner (the token must be root's or
    # SlurmUser's, which may act for anyone); "user": every job runs as `user`
    submit_as: str = "owner"

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class MqttConfig:
    """Where telemetry goes: `url` mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)."""

    url: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    ca_file: str = ""  # TLS: the CA that signed the broker's certificate (else the system's)
    cert_file: str = ""  # TLS client certificate, for brokers that require one
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.url)


# A quota: (GPU type, GPUs); the type "" is GPUs of every type
Quota = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class TlsConfig:
    """The TCP listeners' TLS ([server.tls]): the scheduler's certificate and key, and the
    cluster CA that signed the agents' (and readers') client certificates."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True)
class AccountConfig:
    name: str
    shares: float
    users: tuple[tuple[str, float], ...]
    guaranteed: Quota = ()
    limit: Quota = ()
    lend: bool = True


@dataclass(frozen=True)
class UserLimitsConfig:
    max_running_gpus: int = 0  # 0: no limit
    max_pending_jobs: int = 0  # 0: no limit


@dataclass(frozen=True)
class Config:
    policy: str = "fairshare"
    policy_params: dict[str, Any] = field(default_factory=dict)
    admins: tuple[str, ...] = ()
    node_lease_s: float = 60.0
    heartbeat_s: float = 5.0
    kill_grace_s: float = 10.0
    max_restarts: int = 10  # for jobs that do not say (gsub --max-restarts)
    max_script_bytes: int = 1 << 20
    max_array_size: int = 10_001  # tasks ids of an array run from 0 to this - 1
    # a dependency that can never be met: end the job CANCELLED (true), or leave it pending
    # with the reason (false), as Slurm's kill_invalid_depend
    kill_invalid_depend: bool = True
    socket: str = ""
    tcp: str = ""
    munge_socket: str = ""  # the scheduler's munged: TCP clients' credentials ([server])
    munge_root: bool = False  # take uid 0 over MUNGE: only if every keyed host's root is trusted
    agent_tcp: str = ""  # HOST:PORT for agents with a node certificate (mutual TLS)
    tls: TlsConfig = field(default_factory=TlsConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    store_url: str = ""
    sqlite_synchronous: str = "FULL"
    queues: dict[str, QueueConfig] = field(
        default_factory=lambda: {"default": QueueConfig("default")}
    )
    default_queue: str = "default"
    half_life_s: float = 7 * 86400.0
    accounts: tuple[AccountConfig, ...] = ()
    default_account: str = "default"
    default_shares: float = 1.0
    reclaim_after_s: float = 300.0  # an account under its guarantee waits this, then reclaims
    user_limits: UserLimitsConfig = field(default_factory=UserLimitsConfig)  # everyone's
    users: tuple[tuple[str, UserLimitsConfig], ...] = ()  # [fairshare.users.NAME]
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    telemetry_interval_s: float = 5.0  # the agents' sampling period
    fatal_xids: frozenset[int] = frozenset()  # empty: gshare.telemetry.FATAL_XIDS
    metrics_listen: str = ""  # HOST:PORT for the scheduler's /metrics; empty: off
    agent_metrics_listen: str = ""  # HOST:PORT for each agent's /metrics; empty: off
    agent_scheduler: str = ""  # where agents find the scheduler (unix:PATH or HOST:PORT)
    agent_token_file: str = ""  # the agent token, for a scheduler reached over TCP
    agent_ca_file: str = ""  # TLS to the scheduler: the CA of its certificate
    agent_cert_file: str = ""  # the node's certificate (gshare ca node NAME), for agent_tcp
    agent_key_file: str = ""
    agent_confine: str = "auto"  # "auto": jobs in cgroups when the agent is root; "off"
    agent_cgroup_root: str = "gshare"  # below the agent's own cgroup; "/..." from the top
    agent_pids_max: int = 16384  # processes and threads per job; 0: no limit
    # where this node's jobs are reached by the other parts of a multi-node job; empty:
    # the host's address on its route to the scheduler
    agent_address: str = ""
    # MASTER_PORT of multi-node jobs: chosen from this range, never two jobs' on one node
    master_ports: tuple[int, int] = (29500, 29999)
    source: str = "(built-in defaults)"


def _section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value


def _typed(table: dict[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be a {kind.__name__}, not {value!r}")
    return value


def _duration(table: dict[str, Any], key: str, where: str) -> int:
    if key not in table:
        return 0
    value = table[key]
    try:
        seconds = value if isinstance(value, int) else parse_duration(str(value))
    except TimeFormatError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from exc
    if seconds < 0:
        raise ConfigError(f"{where}: {key} must not be negative")
    return int(seconds)


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


def _files(table: dict[str, Any], keys: tuple[str, ...], where: str) -> dict[str, str]:
    """Paths of files that must exist (certificates, keys), named by their key if not."""
    values = {k: _typed(table, k, str, where, "") for k in keys}
    for key, value in values.items():
        if value and ("\0" in value or not Path(value).is_file()):
            raise ConfigError(f"{where}: {key} {value!r} is not a readable file")
    return values


def _tls(table: dict[str, Any], where: str) -> TlsConfig:
    _known_keys(table, {"cert_file", "key_file", "ca_file"}, where)
    values = _files(table, ("cert_file", "key_file", "ca_file"), where)
    if bool(values["cert_file"]) != bool(values["key_file"]):
        raise ConfigError(f"{where}: cert_file and key_file go together")
    if values["ca_file"] and not values["cert_file"]:
        raise ConfigError(f"{where}: ca_file needs cert_file and key_file")
    return TlsConfig(**values)


def _client(table: dict[str, Any], where: str) -> ClientConfig:
    try:
        return parse_client_table(table, where)
    except ClientConfigError as exc:
        raise ConfigError(str(exc)) from None


SLURM_MODES = ("never", "when_idle_capacity_lacks", "always")


def _slurm(table: dict[str, Any], where: str) -> SlurmConfig:
    keys = {"url", "user", "token", "token_file", "partition", "cluster_name", "poll", "submit_as"}
    _known_keys(table, keys, where)
    values = {k: _typed(table, k, str, where, "") for k in keys - {"poll", "submit_as"}}
    submit_as = _typed(table, "submit_as", str, where, "owner")
    if submit_as not in ("owner", "user"):
        raise ConfigError(f"{where}: submit_as must be owner or user")
    poll = float(_duration(table, "poll", where)) if "poll" in table else 5.0
    if poll <= 0:
        raise ConfigError(f"{where}: poll must be at least 1s")
    if values["url"]:
        if not values["url"].startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url must be http://HOST:PORT or https://HOST:PORT")
        if not values["user"]:
            raise ConfigError(f"{where}: user is needed (jobs run as this Slurm user)")
        if not values["token"] and not values["token_file"]:
            raise ConfigError(f"{where}: give token or token_file (see: scontrol token)")
    if values["token"] and values["token_file"]:
        raise ConfigError(f"{where}: give token or token_file, not both")
    if values["token_file"] and not Path(values["token_file"]).is_file():
        raise ConfigError(f"{where}: token_file {values['token_file']} does not exist")
    return SlurmConfig(poll_s=poll, submit_as=submit_as, **values)


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


MAX_PIDS = 1 << 22  # Linux's PID_MAX_LIMIT


def check_cgroup_root(root: str) -> None:
    """A cgroup path for the agent's jobs: names of letters, digits, ".", "_", "-" joined
    by "/" (a leading "/": from the hierarchy's top); ValueError with the reason."""
    parts = root.strip("/").split("/")
    if not root.strip("/") or len(root) > 256:
        raise ValueError(f"{root!r} must be a path of 1 to 256 characters")
    for part in parts:
        if part in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._-]+", part):
            raise ValueError(f"{root!r}: {part!r} is not a plain name (letters, digits, . _ -)")


def _mem_mb(table: dict[str, Any], key: str, where: str) -> int:
    """A memory size: "16G", "512M" (as gsub --mem takes it); 0 or absent: none."""
    value = table.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f'{where}: {key} must be a size such as "16G", not {value!r}')
    try:
        return parse_mem_mb(str(value)) if value != 0 else 0
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from exc


def _known_keys(table: dict[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")


def _port_range(value: str, where: str) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if not (sep and low.strip().isdigit() and high.strip().isdigit()):
        raise ConfigError(f"{where}: master_ports must be a range like 29500-29999, not {value!r}")
    first, last = int(low), int(high)
    if not 1024 <= first <= last <= 65535:
        raise ConfigError(
            f"{where}: master_ports {value!r} must lie within 1024-65535, low end first"
        )
    return first, last


def _mqtt(table: dict[str, Any], where: str) -> MqttConfig:
    keys = {"url", "username", "password", "password_file", "ca_file", "cert_file", "key_file"}
    _known_keys(table, keys, where)
    values = {k: _typed(table, k, str, where, "") for k in keys}
    url = values["url"]
    if url:
        try:
            parse_mqtt_url(url)
        except ValueError as exc:
            raise ConfigError(f"{where}: url: {exc}") from exc
    if values["password"] and values["password_file"]:
        raise ConfigError(f"{where}: give password or password_file, not both")
    if bool(values["cert_file"]) != bool(values["key_file"]):
        raise ConfigError(f"{where}: cert_file and key_file go together")
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        if values[key] and not Path(values[key]).is_file():
            raise ConfigError(f"{where}: {key} {values[key]} does not exist")
    return MqttConfig(**values)


def with_mqtt_url(config: Config, url: str | None) -> Config:
    """`config` with the broker a daemon's --mqtt names ('' turns telemetry off)."""
    if url is None:
        return config
    if url:
        try:
            parse_mqtt_url(url)
        except ValueError as exc:
            raise ConfigError(f"--mqtt: {exc}") from exc
    return replace(config, mqtt=replace(config.mqtt, url=url))


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of mqtt://HOST[:PORT] or mqtts://HOST[:PORT]."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, not {url!r}")
    tls = scheme == "mqtts"
    rest = rest.rstrip("/")
    if rest.startswith("["):  # [::1]:1883
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not host or "/" in host or "@" in host:
        raise ValueError(f"bad host in {url!r} (put credentials in username/password)")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"bad port in {url!r}")
    return host, int(port_text) if port_text else (8883 if tls else 1883), tls


MAX_QUOTA_GPUS = 10_000_000
MAX_TYPE_CHARS = 64


def _count(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {key} must be a whole number of GPUs, not {value!r}")
    if not 0 <= value <= MAX_QUOTA_GPUS:
        raise ConfigError(f"{where}: {key} must be between 0 and {MAX_QUOTA_GPUS}, not {value}")
    return value


MAX_RECLAIM_AFTER_S = 30 * 86400


def _quota(table: dict[str, Any], key: str, where: str) -> tuple[tuple[str, int], ...]:
    """`key = 16` (GPUs of any type) or `key = { A100 = 8, "*" = 16 }` (per GPU type)."""
    if key not in table:
        return ()
    value = table[key]
    if not isinstance(value, dict):
        return (("", _count(value, key, where)),)
    out = []
    seen: dict[str, str] = {}  # the type as compared -> the key that named it
    for kind, count in value.items():
        if kind != "*" and (
            not kind.strip() or len(kind) > MAX_TYPE_CHARS or not all(c.isprintable() for c in kind)
        ):
            raise ConfigError(f"{where}: {key}: bad GPU type name {kind!r}")
        same = "" if kind == "*" else _type_as_compared(kind)
        if kind != "*" and not same:
            raise ConfigError(f"{where}: {key}: bad GPU type name {kind!r}")
        if same in seen:
            raise ConfigError(
                f"{where}: {key}: GPU types {seen[same]!r} and {kind!r} name the same GPUs"
            )
        seen[same] = kind
        out.append(("" if kind == "*" else kind, _count(count, f"{key}.{kind}", where)))
    return tuple(out)


def _type_as_compared(name: str) -> str:
    """A GPU type name as quotas compare it (policies.quota.normalise_type)."""
    return " ".join(name.split()).casefold().removeprefix("nvidia ").strip()


def _user_limits(table: dict[str, Any], where: str, default: UserLimitsConfig) -> UserLimitsConfig:
    return UserLimitsConfig(
        _count(table["max_running_gpus"], "max_running_gpus", where)
        if "max_running_gpus" in table
        else default.max_running_gpus,
        _count(table["max_pending_jobs"], "max_pending_jobs", where)
        if "max_pending_jobs" in table
        else default.max_pending_jobs,
    )


_ACCOUNT_KEYS = {"shares", "users", "guaranteed", "limit", "lend"}


def _fairshare(table: dict[str, Any], where: str) -> dict[str, Any]:
    known = {
        "half_life",
        "default_account",
        "default_shares",
        "accounts",
        "reclaim_after",
        "max_running_gpus",
        "max_pending_jobs",
        "users",
    }
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    half_life = 7 * 86400.0
    if "half_life" in table:
        value = table["half_life"]
        if isinstance(value, int | float) and not isinstance(value, bool):
            half_life = float(value)  # a bare number means seconds
        else:
            try:
                half_life = float(parse_duration(str(value)))
            except TimeFormatError as exc:
                raise ConfigError(f"{where}: half_life: {exc}") from exc
        if not 0 < half_life < float("inf"):
            raise ConfigError(f"{where}: half_life must be positive, not {value!r}")
    shares = _typed(table, "default_shares", float, where, 1.0)
    if not 0 <= shares < float("inf"):
        raise ConfigError(f"{where}: default_shares must be a finite number, not negative")
    accounts = []
    seen_users: dict[str, str] = {}
    for name, acct in _section(table, "accounts", where).items():
        awhere = f"{where[:-1]}.accounts.{name}]"
        if not isinstance(acct, dict):
            raise ConfigError(f"{awhere}: must be a table")
        _known_keys(acct, _ACCOUNT_KEYS, awhere)
        acct_shares = _typed(acct, "shares", float, awhere, 1.0)
        if not 0 <= acct_shares < float("inf"):
            raise ConfigError(f"{awhere}: shares must be a finite number, not negative")
        raw = acct.get("users", [])
        if isinstance(raw, list) and all(isinstance(u, str) for u in raw):
            users = [(u, 1.0) for u in raw]
        elif isinstance(raw, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in raw.values()
        ):
            users = [(u, float(v)) for u, v in raw.items()]
        else:
            raise ConfigError(
                f"{awhere}: users must be a list of names or a table of name = shares"
            )
        for user, _ in users:
            if user in seen_users:
                raise ConfigError(
                    f"{awhere}: user {user!r} is already in account {seen_users[user]!r}"
                )
            seen_users[user] = name
        guaranteed = _quota(acct, "guaranteed", awhere)
        limit = _quota(acct, "limit", awhere)
        for kind, cap in limit:
            promised = dict(guaranteed).get(kind, 0)
            if not kind:  # all its guaranteed GPUs, of any type, count under its limit
                promised = max(promised, sum(n for k, n in guaranteed if k))
            if cap < promised:
                named = f"limit.{kind}" if kind else "limit"
                raise ConfigError(
                    f"{awhere}: {named} ({cap}) must not be under guaranteed ({promised})"
                )
        lend = _typed(acct, "lend", bool, awhere, True)
        accounts.append(AccountConfig(name, acct_shares, tuple(users), guaranteed, limit, lend))
    reclaim_after = 300
    if isinstance(table.get("reclaim_after"), bool):
        raise ConfigError(f"{where}: reclaim_after must be a duration, not a boolean")
    if "reclaim_after" in table:
        reclaim_after = _duration(table, "reclaim_after", where)
        if reclaim_after > MAX_RECLAIM_AFTER_S:
            raise ConfigError(
                f"{where}: reclaim_after must be at most {MAX_RECLAIM_AFTER_S // 86400} days"
            )
    everyone = _user_limits(table, where, UserLimitsConfig())
    per_user = []
    for user, limits in _section(table, "users", where).items():
        uwhere = f"{where[:-1]}.users.{user}]"
        if not isinstance(limits, dict):
            raise ConfigError(f"{uwhere}: must be a table")
        _known_keys(limits, {"max_running_gpus", "max_pending_jobs"}, uwhere)
        per_user.append((user, _user_limits(limits, uwhere, everyone)))
    return {
        "reclaim_after_s": float(reclaim_after),
        "user_limits": everyone,
        "users": tuple(per_user),
        "half_life_s": half_life,
        "accounts": tuple(accounts),
        "default_account": _typed(table, "default_account", str, where, "default"),
        "default_shares": shares,
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
