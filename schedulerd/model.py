"""The scheduler's in-memory view of jobs and nodes (the store keeps the durable copy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gshare.jobenv import task_environment
from schedulerd.jobstate import JobState


@dataclass(frozen=True, slots=True)
class JobPart:
    """One node's share of a multi-node job, and what its agent last said of it."""

    node: str
    rank: int  # NODE_RANK; rank 0's address is MASTER_ADDR
    gpus: tuple[int, ...]
    uuids: tuple[str, ...] = ()
    address: str = ""  # its node's [agent] address when it was placed
    state: str = "STARTING"  # STARTING, RUNNING, EXITED
    pid: int = 0
    exit_code: int = 0
    exit_signal: int = 0
    error: str = ""  # its launch failed, or its node lost it
    killed_after_grace: bool = False
    lease_lost: bool = False
    stopped: bool = False  # stopped by the scheduler because another part failed

    @property
    def exited(self) -> bool:
        return self.state == "EXITED"

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "rank": self.rank,
            "gpus": list(self.gpus),
            "uuids": list(self.uuids),
            "address": self.address,
            "state": self.state,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "exit_signal": self.exit_signal,
            "error": self.error,
            "killed_after_grace": self.killed_after_grace,
            "lease_lost": self.lease_lost,
            "stopped": self.stopped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobPart:
        return cls(
            node=str(data["node"]),
            rank=int(data["rank"]),
            gpus=tuple(int(i) for i in data["gpus"]),
            uuids=tuple(str(u) for u in data.get("uuids", ())),
            address=str(data.get("address", "")),
            state=str(data.get("state", "STARTING")),
            pid=int(data.get("pid", 0)),
            exit_code=int(data.get("exit_code", 0)),
            exit_signal=int(data.get("exit_signal", 0)),
            error=str(data.get("error", "")),
            killed_after_grace=bool(data.get("killed_after_grace", False)),
            lease_lost=bool(data.get("lease_lost", False)),
            stopped=bool(data.get("stopped", False)),
        )


@dataclass(slots=True)
class JobRecord:
    job_id: int
    user: str
    uid: int
    gid: int
    name: str
    queue: str
    gpus: int
    priority: int
    time_limit_s: int
    cpus: int
    mem_mb: int
    workdir: str
    env: dict[str, str]
    output: str
    args: list[str]
    script_name: str
    state: JobState
    submit_time: float
    start_time: float = 0.0
    end_time: float = 0.0
    node: str = ""
    gpu_indexes: list[int] = field(default_factory=list)
    gpu_uuids: list[str] = field(default_factory=list)
    exit_code: int = 0
    exit_signal: int = 0
    has_exit: bool = False
    restarts: int = 0
    reason: str = ""
    # the end asked for (CANCELLED or TIMEOUT) while the job's processes are being stopped
    end_request: str = ""
    # preemption
    preempt_signal: int = 10  # SIGUSR1
    grace_s: float = 0.0
    no_preempt: bool = False
    max_restarts: int = -1  # -1: no limit
    checkpoint_dir: str = ""
    last_checkpoint: float = 0.0
    preemptions: int = 0
    preempted_for: int = 0  # while PREEMPTING: the job it yields to (0: asked by hand)
    claimed_node: str = ""  # while PENDING after preempting others: where its GPUs are
    # hand-off to Slurm
    slurm: str = ""  # the job's rule: "", "never" or "always" ("": its queue's rule)
    slurm_job_id: int = 0
    slurm_state: str = ""
    slurm_charged_until: float = 0.0  # its Slurm GPU time is in the ledger up to here
    submit_key: str = ""  # the client's idempotency key ("": none)
    # arrays, dependencies, sweeps
    array_job_id: int = 0  # a task of this array (its first task's id); 0: not an array task
    array_task_id: int = 0
    array_spec: str = ""  # the array's tasks and limit, e.g. "0-99:4%16"
    dependency: str = ""  # what it waits for (gshare.arrays syntax, ids resolved)
    params: dict[str, str] = field(default_factory=dict)  # a sweep trial's parameters
    gpu_types: list[str] = field(default_factory=list)  # GPU types it accepts; empty: any
    # a multi-node job: `nodes` parts of `gpus_per_node` GPUs each (`gpus` their total);
    # 1 and 0 for a job on one node
    nodes: int = 1
    gpus_per_node: int = 0
    # placed across nodes: its parts by rank (`node`/`gpu_indexes` are rank 0's), and the
    # MASTER_PORT they meet on; never changed in place (a change replaces the list)
    parts: list[JobPart] = field(default_factory=list)
    master_port: int = 0

    # Defaults for jobs submitted since cluster ids exist; `%C` is replaced at submit by the
    # id of the cluster's database, so a new cluster's job 1 is not an old cluster's job 1.
    # Jobs stored with an empty output or checkpoint dir keep the older defaults below.
    DEFAULT_OUTPUT = "gshare-%j-%C.out"
    DEFAULT_CHECKPOINT_DIR = ".gshare/checkpoints/%C-job-%j"

    def holds(self) -> list[tuple[str, list[int]]]:
        """(node, GPU indexes) for each node it holds GPUs on while it is on a node."""
        if self.parts:
            return [(p.node, list(p.gpus)) for p in self.parts]
        return [(self.node, self.gpu_indexes)] if self.node else []

    def gpus_on(self, node: str) -> list[int]:
        if self.parts:
            return [i for p in self.parts if p.node == node for i in p.gpus]
        return self.gpu_indexes if self.node == node else []

    def part_on(self, node: str) -> JobPart | None:
        return next((p for p in self.parts if p.node == node), None)

    @property
    def checkpoint_path(self) -> str:
        return self._expand(self.checkpoint_dir or f".gshare/checkpoints/job-{self.job_id}")

    @property
    def output_path(self) -> str:
        return self._expand(self.output or f"gshare-{self.job_id}.out")

    @property
    def task_env(self) -> dict[str, str]:
        """An array task's own variables (none for a job not in an array)."""
        return task_environment(
            self.array_job_id,
            self.array_task_id,
            self.array_spec,
            self.params,
            self.checkpoint_path,
        )

    @property
    def display_id(self) -> str:
        """`12_7` for task 7 of array 12, else the job id."""
        return (
            f"{self.array_job_id}_{self.array_task_id}" if self.array_job_id else str(self.job_id)
        )

    def _expand(self, path: str) -> str:
        """%j the job id; %A the array's id and %a the task id (for a job not in an
        array: its id and 0), as Slurm's --output does; relative to the workdir."""
        path = path.replace("%j", str(self.job_id))
        if "%A" in path or "%a" in path:
            path = path.replace("%A", str(self.array_job_id or self.job_id))
            path = path.replace("%a", str(self.array_task_id))
        if not path.startswith("/"):
            path = f"{self.workdir.rstrip('/')}/{path}"
        return path


@dataclass(frozen=True, slots=True)
class EventRecord:
    seq: int
    job_id: int
    time: float
    kind: str
    from_state: str
    to_state: str
    actor: str
    reason: str


@dataclass(slots=True)
class GpuInfo:
    index: int
    uuid: str
    model: str
    memory_mb: int
    nvlink_peers: list[int] = field(default_factory=list)


class NodeState:
    UP = "UP"
    DRAINING = "DRAINING"
    DOWN = "DOWN"


@dataclass(slots=True)
class NodeRecord:
    name: str
    gpus: list[GpuInfo]
    cpus: int
    mem_mb: int
    state: str = NodeState.DOWN
    reason: str = ""
    last_seen: float = 0.0
    gpu_backend: str = ""
    agent_version: str = ""
    confinement: str = ""  # how its agent confines jobs, as it said at registration
    drained: bool = False  # an admin took it out of scheduling
    address: str = ""  # its agent's [agent] address, as it registered (not stored)
    # GPUs out of scheduling (a health event or an admin), index -> why
    gpu_health: dict[int, str] = field(default_factory=dict)


_JOB_SLOTS: tuple[str, ...] = JobRecord.__slots__


def clone_job(job: JobRecord) -> JobRecord:
    """A shallow copy, made faster than dataclasses.replace (an array makes thousands)."""
    copy = object.__new__(JobRecord)
    for name in _JOB_SLOTS:
        setattr(copy, name, getattr(job, name))
    return copy
