"""Fluent builders for policy inputs: node("a").gpus(4).busy(0, 1), job(7).gpus(2).priority(5)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from policies import (
    Account,
    AccountTree,
    ClusterSnapshot,
    GpuSlot,
    NodeView,
    PendingJob,
    RunningJob,
)
from policies.quota import AccountQuota, Quotas, UserLimits, normalise_type
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord


def quotas(
    reclaim_after_s: float = 300.0,
    users: dict[str, UserLimits] | None = None,
    everyone: UserLimits | None = None,
    **accounts: AccountQuota,
) -> Quotas:
    """quotas(vision=guarantee(4, limit=8), nlp=guarantee(0, lend=False))"""
    return Quotas(
        MappingProxyType(accounts),
        MappingProxyType(users or {}),
        everyone or UserLimits(),
        reclaim_after_s,
    )


def guarantee(
    gpus: int | dict[str, int] = 0, limit: int | dict[str, int] | None = None, lend: bool = True
) -> AccountQuota:
    """An account's quota: guarantee(4), guarantee({"a100": 4}, limit=8, lend=False)."""

    def table(value: int | dict[str, int] | None) -> MappingProxyType[str, int]:
        if value is None:
            return MappingProxyType({})
        if isinstance(value, int):
            return MappingProxyType({"": value} if value else {})
        return MappingProxyType(dict(value))

    return AccountQuota(table(gpus), table(limit), lend)


NOW = 10_000.0


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

    def model(self, name: str) -> node:
        """Every GPU of the node is of this model (as the snapshot keeps it: normalised)."""
        slots = tuple(replace(g, model=normalise_type(name)) for g in self._view.gpus)
        self._view = replace(self._view, gpus=slots)
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

    def user(self, name: str) -> job:
        self._job = replace(self._job, user=name)
        return self

    def limit(self, seconds: float) -> job:
        self._job = replace(self._job, time_limit_s=seconds)
        return self

    def across(self, nodes: int, each: int) -> job:
        """Asks for `nodes` parts of `each` GPUs (a gang across nodes)."""
        self._job = replace(self._job, gpus=nodes * each, nodes=nodes, gpus_per_node=each)
        return self

    def gpu_types(self, *names: str) -> job:
        self._job = replace(self._job, gpu_types=frozenset(normalise_type(n) for n in names))
        return self

    def handoff(self, after_s: float) -> job:
        """May go to Slurm: 0 at once, T after waiting T seconds."""
        self._job = replace(self._job, handoff_after_s=after_s)
        return self

    def claimed(self, node: str) -> job:
        """Has preempted others earlier: GPUs on `node` are (or were) freed for it."""
        self._job = replace(self._job, claimed_node=node)
        return self

    def build(self) -> PendingJob:
        return self._job


class running:
    def __init__(self, job_id: int, node: str, *gpus: int) -> None:
        self._job = RunningJob(job_id, "bob", "default", ((node, tuple(gpus)),), NOW - 3600)

    def user(self, name: str) -> running:
        self._job = replace(self._job, user=name)
        return self

    def priority(self, p: int) -> running:
        self._job = replace(self._job, priority=p)
        return self

    def started(self, ago: float) -> running:
        self._job = replace(self._job, start_time=NOW - ago)
        return self

    def limit(self, seconds: float) -> running:
        self._job = replace(self._job, time_limit_s=seconds)
        return self

    def checkpointed(self, ago: float) -> running:
        self._job = replace(self._job, last_checkpoint=NOW - ago)
        return self

    def no_preempt(self) -> running:
        self._job = replace(self._job, preemptible=False)
        return self

    def across(self, *parts: tuple[str, tuple[int, ...]]) -> running:
        """A job across nodes: these parts instead of the one given."""
        self._job = replace(self._job, parts=tuple(parts))
        return self

    def yielding_to(self, job_id: int) -> running:
        self._job = replace(self._job, yielding_to=job_id)
        return self

    def build(self) -> RunningJob:
        return self._job


def teams(**spec: tuple[float, dict[str, float]]) -> AccountTree:
    """teams(vision=(60, {"alice": 1, "bob": 1}), nlp=(40, {"carol": 1}))"""
    children = [
        Account(name, shares, (), tuple(users.items())) for name, (shares, users) in spec.items()
    ]
    children.append(Account("default", 0.0))
    return AccountTree.build(Account("root", 1.0, tuple(children)))


def snapshot(
    nodes: list[node],
    jobs: list[job],
    run: list[running] | None = None,
    accounts: AccountTree | None = None,
    usage: dict[str, float] | None = None,
    now: float = NOW,
    quotas: Quotas | None = None,
) -> ClusterSnapshot:
    running_jobs = tuple(r.build() for r in run or [])
    views = []
    for n in nodes:
        view = n.build()
        held = {g for r in running_jobs for name, gs in r.parts if name == view.name for g in gs}
        views.append(replace(view, free_gpus=view.free_gpus - held))
    return ClusterSnapshot(
        now,
        tuple(views),
        tuple(j.build() for j in jobs),
        running_jobs,
        accounts or AccountTree.flat(),
        MappingProxyType(usage or {}),
        quotas=quotas,
    )


def record(state: JobState, **kw: object) -> JobRecord:
    """A scheduler job record in `state` (job 7 of ann, 2 GPUs on n1), `kw` changed."""
    values: dict[str, object] = dict(
        job_id=7,
        user="ann",
        uid=1000,
        gid=1000,
        name="j",
        queue="default",
        gpus=2,
        priority=0,
        time_limit_s=0,
        cpus=0,
        mem_mb=0,
        workdir="/w",
        env={},
        output="",
        args=[],
        script_name="j.sh",
        state=state,
        submit_time=1.0,
        node="n1",
        gpu_indexes=[0, 1],
        restarts=2,
        preemptions=3,
        max_restarts=-1,
    )
    values.update(kw)
    return JobRecord(**values)  # type: ignore[arg-type]
