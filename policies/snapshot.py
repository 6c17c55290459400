"""The frozen inputs and output of one scheduling decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from policies.accounts import AccountTree
from policies.quota import Quotas

# A job's GPUs on one node: (node name, GPU indexes). A gang is one or more of these.
Part = tuple[str, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class GpuSlot:
    index: int
    uuid: str
    nvlink_peers: frozenset[int] = frozenset()
    model: str = ""  # normalised (policies.quota.normalise_type)


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as the scheduler sees it at snapshot time."""

    name: str
    gpus: tuple[GpuSlot, ...]
    free_gpus: frozenset[int]
    cpus: int = 0  # 0: unknown, CPU requests are not checked against it
    mem_mb: int = 0  # 0: unknown
    free_cpus: int = 0
    free_mem_mb: int = 0
    schedulable: bool = True

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)


@dataclass(frozen=True, slots=True)
class PendingJob:
    job_id: int
    user: str
    queue: str
    gpus: int
    priority: int
    submit_time: float
    cpus: int = 0
    mem_mb: int = 0
    time_limit_s: float = 0.0  # 0: none known (backfill then treats it as never ending)
    preemptible: bool = True
    restarts: int = 0
    # the node whose GPUs were freed for this job by preempting others: it starts there
    # first, before anyone else, and no one else may take that node while it waits
    claimed_node: str = ""
    # may it go to Slurm: -1 never, 0 as soon as Slurm answers, T after waiting T seconds
    # (and only while Slurm has free GPUs for it); see policies/handoff.py
    handoff_after_s: float = -1.0
    # GPU types it accepts (gsub --gpu-type; policies/quota.py says how they match); empty: any
    gpu_types: frozenset[str] = frozenset()
    # asked as `nodes` parts of `gpus_per_node` GPUs each (gpus = their total); 1: as the
    # placement sees fit (one node if it fits, else whole idle nodes)
    nodes: int = 1
    gpus_per_node: int = 0


@dataclass(frozen=True, slots=True)
class RunningJob:
    job_id: int
    user: str
    queue: str
    parts: tuple[Part, ...]
    start_time: float
    priority: int = 0
    time_limit_s: float = 0.0
    last_checkpoint: float | None = None
    preemptible: bool = True
    yielding_to: int = 0  # being preempted for this job: its GPUs are already spoken for
    cpus: int = 0
    mem_mb: int = 0
    # counted once: a cycle asks every running job's size several times
    gpus: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", sum(len(g) for _, g in self.parts))

    @property
    def node(self) -> str:
        return self.parts[0][0]

    def expected_end(self) -> float:
        return self.start_time + self.time_limit_s if self.time_limit_s else float("inf")


@dataclass(frozen=True, slots=True)
class SlurmCapacity:
    """What the Slurm cluster jobs may be handed to looked like, at its last poll."""

    reachable: bool
    free_gpus: tuple[int, ...] = ()  # per node of the configured partition
    detail: str = ""  # why it is not reachable


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    now: float
    nodes: tuple[NodeView, ...]
    pending: tuple[PendingJob, ...]
    running: tuple[RunningJob, ...] = ()
    accounts: AccountTree = field(default_factory=AccountTree.flat)
    usage: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    slurm: SlurmCapacity | None = None  # None: no Slurm to hand jobs to
    # whether a job may be placed across several nodes (the agents can launch it so);
    # when not, a job wider than every node waits with that reason and reserves nothing
    multi_node: bool = True
    quotas: Quotas | None = None  # None: no guarantees, limits or per-user caps
    # GPUs each user's jobs handed to Slurm ask there (queued or running): they count
    # against quota limits and max_running_gpus, not against guarantees (policies/quota.py)
    elsewhere: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Start:
    job_id: int
    parts: tuple[Part, ...]
    backfilled: bool = False

    @property
    def node(self) -> str:
        return self.parts[0][0]

    @property
    def gpu_indexes(self) -> tuple[int, ...]:
        return self.parts[0][1]


@dataclass(frozen=True, slots=True)
class Preemption:
    job_id: int  # the victim
    for_job: int  # the job it yields to
    reason: str
    node: str = ""  # where the GPUs are freed


@dataclass(frozen=True, slots=True)
class Handoff:
    job_id: int
    reason: str


def _frozen_reasons() -> Mapping[int, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Plan:
    """What one cycle decided: starts, preemptions, and for each job left waiting, why.

    `order` is every pending job in the policy's rank order (its position is its place in
    line); a job being started is still in it. `held` names why capacity stood idle for a
    job that would have fit (the replay's cost report reads it).
    """

    starts: tuple[Start, ...] = ()
    reasons: Mapping[int, str] = field(default_factory=_frozen_reasons)
    preemptions: tuple[Preemption, ...] = ()
    order: tuple[int, ...] = ()
    handoffs: tuple[Handoff, ...] = ()
    # waiting jobs that would fit now but that the policy held back, with the cause in a
    # word ("quota", ...); a fitting job held for a reservation need not be named here
    held: Mapping[int, str] = field(default_factory=_frozen_reasons)

    def position(self, job_id: int) -> int:
        """1-based place in line, 0 if the job was not pending."""
        try:
            return self.order.index(job_id) + 1
        except ValueError:
            return 0
