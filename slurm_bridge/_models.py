"""What the bridge says about Slurm, independent of the REST API version that carried it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class JobState(enum.Enum):
    """A Slurm job's state, folded into the few cases the scheduler acts on.

    Slurm's own state (with its flags, e.g. `CANCELLED+COMPLETING`) is kept in
    `SlurmJob.slurm_state`.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        """The job has ended and Slurm has released its resources."""
        return self in _FINAL


_FINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.OUT_OF_MEMORY,
    }
)

# Slurm base states and flags (slurm.h, job_state_string), and what each means here.
# A flag that says the job is still on its way out wins over the base state.
_WINDING_DOWN = frozenset({"COMPLETING", "STAGE_OUT"})
_BACK_IN_QUEUE = frozenset({"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
_SLURM_STATES: Mapping[str, JobState] = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "CONFIGURING": JobState.RUNNING,  # allocated, nodes still booting
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,  # holds its resources; slurm_state says suspended
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "LAUNCH_FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,  # another federated cluster runs it
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "NODE_FAIL": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
}


def job_state_from_slurm(states: list[str] | tuple[str, ...]) -> JobState:
    """Fold Slurm's state words (one string in v0.0.38, base state plus flags in v0.0.40+)."""
    words = [s.upper() for s in states if s]
    if any(w in _WINDING_DOWN for w in words):
        return JobState.COMPLETING
    if any(w in _BACK_IN_QUEUE for w in words):
        return JobState.PENDING
    for word in words:
        if word in _SLURM_STATES:
            return _SLURM_STATES[word]
    return JobState.UNKNOWN


@dataclass(frozen=True)
class SlurmJobSpec:
    """A batch job to hand to Slurm.

    `script` must start with `#!` (slurmrestd accepts a script without it and the job
    then fails at launch). `argv` are the script's arguments ($1 ...). Slurm demands a
    non-empty environment: an empty `environment` is sent as `PATH` alone. `comment` is
    stored with the job and can be searched (`SlurmClient.find_job_by_comment`): use it as
    an idempotency key. Relative `stdout`/`stderr` paths are relative to `working_dir`;
    Slurm expands `%j` (job id), `%x` (name), `%u` (user) in them.
    """

    name: str
    script: str
    working_dir: str
    argv: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    comment: str = ""
    gpus: int = 0  # on each node
    cpus: int = 1
    nodes: int = 1
    time_limit_minutes: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    partition: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.script.startswith("#!"):
            problems.append("script must start with #! (Slurm would accept it, then fail)")
        if not PurePosixPath(self.working_dir).is_absolute():
            problems.append(f"working_dir must be an absolute path, not {self.working_dir!r}")
        if self.gpus < 0:
            problems.append(f"gpus must be 0 or more, not {self.gpus}")
        if self.nodes < 1:
            problems.append(f"nodes must be 1 or more, not {self.nodes}")
        if self.cpus < 1:
            problems.append(f"cpus must be 1 or more, not {self.cpus}")
        if self.time_limit_minutes is not None and self.time_limit_minutes < 1:
            problems.append(f"time_limit_minutes must be 1 or more, not {self.time_limit_minutes}")
        if any("=" in key or not key for key in self.environment):
            problems.append("environment names must be non-empty and contain no '='")
        if problems:
            raise ValueError(f"bad SlurmJobSpec {self.name!r}: " + "; ".join(problems))

    def environment_or_default(self) -> dict[str, str]:
        return dict(self.environment) or {"PATH": DEFAULT_PATH}


@dataclass(frozen=True)
class SlurmJob:
    """A job as slurmctld reports it.

    `exit_code` and `signal` are set once the job has ended (`state.is_final`): a job
    killed by a signal has `signal` set and the exit code Slurm recorded (usually 0).
    Times are epoch seconds; `end_time` is None until the job has ended (Slurm reports a
    projected end for a running job). `gpus` is what the job holds while it runs, else
    what it asked for. `stdout_path` is the output file with `%j`, `%x`, `%u` expanded
    (other patterns, such as `%N`, are left as Slurm wrote them).
    """

    job_id: int
    name: str
    state: JobState
    slurm_state: str
    comment: str = ""
    user: str = ""
    partition: str = ""
    exit_code: int | None = None
    signal: int | None = None
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    gpus: int = 0
    nodes: tuple[str, ...] = ()
    stdout_path: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class SlurmNode:
    """A node with its GPUs counted from its generic resources (`gres`, `gres_used`).
    `state` is Slurm's state with its flags, upper case, e.g. `IDLE`, `MIXED+DRAIN`."""

    name: str
    state: str
    gpus_total: int
    gpus_used: int
    partitions: tuple[str, ...] = ()
    cpus: int = 0

    @property
    def gpus_free(self) -> int:
        return max(0, self.gpus_total - self.gpus_used)


@dataclass(frozen=True)
class SlurmPartition:
    name: str
    state: str
    nodes: tuple[str, ...] = ()
    total_cpus: int | None = None
    total_nodes: int | None = None
