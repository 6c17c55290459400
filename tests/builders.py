"""Fluent builders for policy inputs: node("a").gpus(4).busy(0, 1), job(7).gpus(2).priority(5)."""

from __future__ import annotations

from dataclasses import replace

from policies import ClusterSnapshot, GpuSlot, NodeView, PendingJob


class node:
    def __init__(self, name: str) -> None:
        self._view = NodeView(name, (), frozenset())

    def gpus(self, count: int, nvlink: dict[int, set[int]] | None = None) -> node:
        links = nvlink or {}
        slots = tuple(
            GpuSlot(i, f"GPU-{self._view.name}-{i}", frozenset(links.get(i, set())))
            for i in range(count)
        )
        self._view = replace(self._view, gpus=slots, free_gpus=frozenset(range(count)))
        return self

    def busy(self, *indexes: int) -> node:
        self._view = replace(self._view, free_gpus=self._view.free_gpus - frozenset(indexes))
        return self

    def down(self) -> node:
        self._view = replace(self._view, schedulable=False)
        return self

    def host(self, cpus: int, mem_mb: int) -> node:
        self._view = replace(
            self._view, cpus=cpus, mem_mb=mem_mb, free_cpus=cpus, free_mem_mb=mem_mb
        )
        return self

    def build(self) -> NodeView:
        return self._view


class job:
    def __init__(self, job_id: int) -> None:
        self._job = PendingJob(job_id, "alice", "default", 1, 0, float(job_id))

    def gpus(self, n: int) -> job:
        self._job = replace(self._job, gpus=n)
        return self

    def priority(self, p: int) -> job:
        self._job = replace(self._job, priority=p)
        return self

    def submitted(self, t: float) -> job:
        self._job = replace(self._job, submit_time=t)
        return self

    def cpus(self, n: int) -> job:
        self._job = replace(self._job, cpus=n)
        return self

    def build(self) -> PendingJob:
        return self._job


def snapshot(nodes: list[node], jobs: list[job], now: float = 1000.0) -> ClusterSnapshot:
    return ClusterSnapshot(now, tuple(n.build() for n in nodes), tuple(j.build() for j in jobs))
