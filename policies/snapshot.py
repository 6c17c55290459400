"""The frozen inputs and output of one scheduling decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class GpuSlot:
    index: int
    uuid: str
    nvlink_peers: frozenset[int] = frozenset()


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
    time_limit_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RunningJob:
    job_id: int
    user: str
    queue: str
    node: str
    gpu_indexes: tuple[int, ...]
    start_time: float
    priority: int = 0
    time_limit_s: float = 0.0
    last_checkpoint: float | None = None


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    now: float
    nodes: tuple[NodeView, ...]
    pending: tuple[PendingJob, ...]
    running: tuple[RunningJob, ...] = ()


@dataclass(frozen=True, slots=True)
class Start:
    job_id: int
    node: str
    gpu_indexes: tuple[int, ...]


def _frozen_reasons() -> Mapping[int, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Plan:
    """What one cycle decided: jobs to start and, for each job left waiting, why."""

    starts: tuple[Start, ...] = ()
    reasons: Mapping[int, str] = field(default_factory=_frozen_reasons)

    @staticmethod
    def of(starts: list[Start], reasons: dict[int, str]) -> Plan:
        return Plan(tuple(starts), MappingProxyType(dict(reasons)))
