"""The configuration's settings, their types and their built-in defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gshare.clientconfig import ClientConfig


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
