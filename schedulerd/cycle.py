"""One scheduling cycle: snapshot -> decide -> apply.

1. snapshot: freeze the live jobs and the schedulable nodes into a ClusterSnapshot.
2. decide:   the configured policy (pure, in policies/) turns it into a Plan.
3. apply:    persist the starts in one transaction, then send launches to the agents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from gshare.config import Config
from policies import (
    Account,
    AccountTree,
    ClusterSnapshot,
    GpuSlot,
    NodeView,
    PendingJob,
    Plan,
    RunningJob,
    SlurmCapacity,
)
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord, NodeRecord
from schedulerd.store import Change


def take_snapshot(
    now: float,
    jobs: Iterable[JobRecord],
    nodes: Mapping[str, NodeRecord],
    schedulable: Iterable[str],
    cache: dict[int, tuple[JobRecord, PendingJob]] | None = None,
    accounts: AccountTree | None = None,
    usage: Mapping[str, float] | None = None,
    slurm: SlurmCapacity | None = None,
    handoff_after: Callable[[JobRecord], float] | None = None,
) -> ClusterSnapshot:
    """`cache` caches each pending job's frozen view while its record is the same object
    (records are replaced on every change), so a long queue costs little to snapshot."""
    cache = {} if cache is None else cache
    jobs = list(jobs)
    busy: dict[str, set[int]] = {}
    used_cpus: dict[str, int] = {}
    used_mem: dict[str, int] = {}
    running: list[RunningJob] = []
    pending: list[PendingJob] = []
    for job in jobs:
        if job.state.on_node:
            busy.setdefault(job.node, set()).update(job.gpu_indexes)
            used_cpus[job.node] = used_cpus.get(job.node, 0) + job.cpus
            used_mem[job.node] = used_mem.get(job.node, 0) + job.mem_mb
            # a drained GPU is not there for scheduling, not even as one a victim frees
            sick = nodes[job.node].gpu_health if job.node in nodes else {}
            running.append(
                RunningJob(
                    job.job_id,
                    job.user,
                    job.queue,
                    ((job.node, tuple(i for i in job.gpu_indexes if i not in sick)),),
                    job.start_time,
                    job.priority,
                    job.time_limit_s,
                    job.last_checkpoint or None,
                    preemptible=not job.no_preempt,
                    yielding_to=job.preempted_for if job.state is JobState.PREEMPTING else 0,
                )
            )
        elif job.state is JobState.PENDING:
            cached = cache.get(job.job_id)
            if cached is not None and cached[0] is job:
                pending.append(cached[1])
                continue
            view = PendingJob(
                job.job_id,
                job.user,
                job.queue,
                job.gpus,
                job.priority,
                job.submit_time,
                job.cpus,
                job.mem_mb,
                job.time_limit_s,
                preemptible=not job.no_preempt,
                restarts=job.restarts,
                claimed_node=job.claimed_node,
                handoff_after_s=handoff_after(job) if handoff_after is not None else -1.0,
            )
            cache[job.job_id] = (job, view)
            pending.append(view)
    if len(cache) > len(pending):
        live = {view.job_id for view in pending}
        for job_id in [j for j in cache if j not in live]:
            del cache[job_id]
    ok = set(schedulable)
    views = []
    for name in sorted(nodes):
        node = nodes[name]
        taken = busy.get(name, set())
        usable = [g for g in node.gpus if g.index not in node.gpu_health]  # drained: left out
        views.append(
            NodeView(
                name=name,
                gpus=tuple(
                    GpuSlot(
                        g.index,
                        g.uuid,
                        frozenset(p for p in g.nvlink_peers if p not in node.gpu_health),
                    )
                    for g in usable
                ),
                free_gpus=frozenset(g.index for g in usable if g.index not in taken),
                cpus=node.cpus,
                mem_mb=node.mem_mb,
                free_cpus=node.cpus - used_cpus.get(name, 0),
                free_mem_mb=node.mem_mb - used_mem.get(name, 0),
                schedulable=name in ok,
            )
        )
    return ClusterSnapshot(
        now,
        tuple(views),
        tuple(pending),
        tuple(running),
        accounts or AccountTree.flat(),
        MappingProxyType(dict(usage or {})),
        slurm,
    )


def account_tree(config: Config) -> AccountTree:
    teams = [Account(a.name, a.shares, (), a.users) for a in config.accounts]
    if config.default_account not in {a.name for a in config.accounts}:
        teams.append(Account(config.default_account, config.default_shares))
    return AccountTree.build(Account("root", 1.0, tuple(teams)), config.default_account)


def start_changes(plan: Plan, nodes: Mapping[str, NodeRecord], now: float) -> list[Change]:
    changes = []
    for start in plan.starts:
        if len(start.parts) != 1:
            continue  # multi-node launches are not supported by the agents; see run_cycle
        uuids = {g.index: g.uuid for g in nodes[start.node].gpus}
        changes.append(
            Change(
                start.job_id,
                JobState.STARTING,
                kind="start",
                actor="scheduler",
                reason=f"placed on {start.node} GPUs {','.join(map(str, start.gpu_indexes))}",
                fields=(
                    ("node", start.node),
                    ("gpu_indexes", list(start.gpu_indexes)),
                    ("gpu_uuids", [uuids[i] for i in start.gpu_indexes]),
                    ("start_time", now),
                    ("reason", ""),
                    ("claimed_node", ""),
                ),
            )
        )
    return changes
