"""One scheduling cycle, the same in the daemon and in the simulator (`gshare sim`):

1. snapshot: bring the ledger up to now; ask the gates which pending jobs are held back
             (dependencies, an array's running limit, singleton) and end those whose
             dependency can never be met; freeze the other live jobs, the schedulable
             nodes and the usage into a ClusterSnapshot.
2. decide:   the configured policy (pure, in policies/) turns it into a Plan.
3. persist:  the starts, the preemptions (with the claims of the jobs they are for), the
             hand-offs, each through ClusterState.change: one transaction each, with
             their events. Why each waiting job waits is kept in memory.
4. send:     the victims are asked to yield and the started jobs are launched, through
             the agents (real ones in the daemon, simulated ones in the simulator).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

from gshare.config import Config
from policies import (
    Account,
    AccountTree,
    ClusterSnapshot,
    GpuSlot,
    NodeView,
    PendingJob,
    Plan,
    Policy,
    RunningJob,
    SlurmCapacity,
    handoff_after,
)
from policies.engine import ordinal
from policies.quota import AccountQuota, Quotas, UserLimits, normalise_type
from schedulerd.changes import claim_change, preempt_change, start_changes
from schedulerd.gang import gang_starts
from schedulerd.gates import Gates
from schedulerd.jobstate import ON_NODE, JobState
from schedulerd.ledger import Ledger
from schedulerd.model import GpuInfo, JobRecord, NodeRecord
from schedulerd.state import ClusterState
from schedulerd.store import Change

# jobs handed to Slurm, queued or running there: their GPUs count against quota limits
IN_SLURM = frozenset({JobState.HANDED_OFF, JobState.RUNNING_REMOTE})


class Agents(Protocol):
    """Where the cycle's commands go: the agent sessions, or simulated agents."""

    async def launch(self, job: JobRecord) -> None: ...

    def preempt(self, job: JobRecord) -> None: ...

    def schedulable(self) -> list[str]: ...


class SlurmPort(Protocol):
    """The hand-off to Slurm as the cycle sees it."""

    def capacity_now(self) -> SlurmCapacity: ...

    def kick(self) -> None: ...


@dataclass
class CycleHooks:
    """Metrics: the seconds `decide` took, and each start's wait in the queue."""

    decided: Callable[[float], None] | None = None
    started: Callable[[JobRecord, float], None] | None = None


class Cycle:
    def __init__(
        self,
        config: Config,
        state: ClusterState,
        ledger: Ledger,
        policy: Policy,
        agents: Agents,
        accrue: Callable[[float], None],
        slurm: SlurmPort | None = None,
        last_checkpoint: Callable[[JobRecord, float], float] | None = None,
        multi_node: bool = False,
    ) -> None:
        self.config = config
        # whether its agents start jobs across nodes (the daemon's do; the simulator's not yet)
        self.multi_node = multi_node
        self.state = state
        self.ledger = ledger
        self.policy = policy
        self.agents = agents
        self.accrue = accrue
        self.slurm = slurm
        self.last_checkpoint = last_checkpoint  # the simulator's; else the agents' reports
        self.accounts = account_tree(config)
        self.gates = Gates()
        self.held: Mapping[int, str] = {}  # held back by the gates at the last cycle
        self.gates.bind(state.jobs)
        state.job_listeners.append(self.gates.job_changed)
        self.quotas = quotas_of(config)
        self.views = SnapshotCache()
        self._order: tuple[int, ...] = ()
        self._positions: dict[int, int] | None = {}
        self._team_places: dict[int, tuple[int, str]] | None = None  # (place, team)
        self.count = 0
        self.last_s = 0.0
        self.hooks = CycleHooks()

    @property
    def positions(self) -> dict[int, int]:
        """Each waiting job's place in line at the last cycle (1: next), among the jobs
        still waiting (the cycle's order holds the jobs it started or handed off too)."""
        if self._positions is None:
            self._positions = {job_id: i for i, job_id in enumerate(self._waiting(), start=1)}
        return self._positions

    def _waiting(self) -> list[int]:
        jobs, pending = self.state.jobs, JobState.PENDING
        return [
            job_id
            for job_id in self._order
            if (job := jobs.get(job_id)) is not None and job.state is pending
        ]

    def team_place(self, job: JobRecord) -> str:
        """'2nd in team vision': the job's place among its team's waiting jobs at the last
        cycle ('' when it was not in line, or when there is one team). Worked out when
        first asked after a cycle (`gshare why`), for every job at once, from the last
        order: reasons leave it out, as it moves whenever a job ahead starts or leaves."""
        if len(self.accounts.teams()) < 2:
            return ""
        if self._team_places is None:
            team_of, jobs = self.accounts.team_of, self.state.jobs
            seen: dict[str, int] = {}
            places: dict[int, tuple[int, str]] = {}
            for job_id in self._waiting():
                team = team_of(jobs[job_id].user)
                seen[team] = place = seen.get(team, 0) + 1
                places[job_id] = (place, team)
            self._team_places = places
        found = self._team_places.get(job.job_id)
        return f"{ordinal(found[0])} in team {found[1]}" if found is not None else ""

    def handoff_after(self, job: JobRecord) -> float:
        queue = self.config.queues.get(job.queue)
        return handoff_after(
            job.slurm,
            queue.slurm if queue is not None else "never",
            queue.slurm_after_s if queue is not None else 0.0,
            self.slurm is not None,
        )

    def snapshot(self, now: float, held: Collection[int] = ()) -> ClusterSnapshot:
        return take_snapshot(
            now,
            self.state.jobs.values(),
            self.state.nodes,
            self.agents.schedulable(),
            self.views,
            self.accounts,
            self.ledger.usage,
            self.slurm.capacity_now() if self.slurm is not None else None,
            self.handoff_after,
            multi_node=self.multi_node,
            last_checkpoint=self.last_checkpoint,
            held=held,
            quotas=self.quotas,
        )

    async def run(self) -> Plan:
        state = self.state
        async with state.lock:
            t0 = time.perf_counter()
            now = state.clock()
            # 1. snapshot
            self.accrue(now)
            held = self.held = await self._gate(now)
            snapshot = self.snapshot(now, held)
            # 2. decide
            plan = self.policy.decide(snapshot)
            if self.hooks.decided is not None:
                self.hooks.decided(time.perf_counter() - t0)
            self._order, self._positions, self._team_places = plan.order, None, None
            # 3. persist
            started = await state.change(start_changes(plan, state.nodes, now))
            if self.multi_node:
                gangs, waits = gang_starts(
                    plan, state.nodes, state.jobs.values(), self.config.master_ports, now
                )
                started += await state.change(gangs)
                self._explain(waits)
            victims = await self._persist_preemptions(plan)
            await self._lapse_claims(snapshot, plan)
            await self._persist_handoffs(plan)
            self._explain(plan.reasons)
            self._explain(held)
            # 4. send
            for victim in victims:
                self.agents.preempt(victim)
            for job in started:
                await self.agents.launch(job)
                if self.hooks.started is not None:
                    self.hooks.started(job, now - job.submit_time)
            for name in {n for j in started for n, _ in j.holds()}:
                state.publish_node(state.nodes[name])
            self.count += 1
            self.last_s = time.perf_counter() - t0
            return plan

    async def _gate(self, now: float) -> dict[int, str]:
        """The pending jobs held back, with why. A job whose dependency can never be met
        ends CANCELLED with the reason, or (kill_invalid_depend = false) waits with it."""
        verdict = self.gates.check()
        held = verdict.held
        if not verdict.doomed:
            return held
        if not self.config.kill_invalid_depend:
            for job_id, why in verdict.doomed.items():
                held[job_id] = f"{why} (it stays pending: kill_invalid_depend is off)"
            return held
        await self.state.change(
            [
                Change(
                    job_id,
                    JobState.CANCELLED,
                    "dependency",
                    "scheduler",
                    why,
                    (("end_time", now), ("reason", why)),
                )
                for job_id, why in verdict.doomed.items()
            ]
        )
        return held

    async def _persist_preemptions(self, plan: Plan) -> list[JobRecord]:
        """Victims go PREEMPTING; each preemptor claims the node being freed for it."""
        victims = []
        for p in plan.preemptions:
            victim = self.state.jobs.get(p.job_id)
            if victim is None or victim.state is not JobState.RUNNING or victim.no_preempt:
                continue
            why = f"preempted for job {p.for_job}: {p.reason}"
            [victim] = await self.state.change(
                [preempt_change(victim, "scheduler", why, p.for_job)]
            )
            victims.append(victim)
            claimant = self.state.jobs.get(p.for_job)
            if (
                claimant is not None
                and claimant.state is JobState.PENDING
                and claimant.claimed_node != p.node
            ):
                why = f"GPUs on {p.node} are being freed for it"
                await self.state.change([claim_change(claimant, p.node, why)])
        return victims

    async def _lapse_claims(self, snapshot: ClusterSnapshot, plan: Plan) -> None:
        """A claim no victim yields to any more, for a job that did not start on it now,
        lapses: the job waits in line like any other (its node is no longer kept for it)."""
        keep = {r.yielding_to for r in snapshot.running if r.yielding_to}
        keep |= {p.for_job for p in plan.preemptions} | {s.job_id for s in plan.starts}
        changes = []
        for pending in snapshot.pending:
            if not pending.claimed_node or pending.job_id in keep:
                continue
            job = self.state.jobs.get(pending.job_id)
            if job is not None and job.state is JobState.PENDING and job.claimed_node:
                why = f"claim on {job.claimed_node} lapsed: no job is yielding GPUs to it"
                changes.append(claim_change(job, "", why))
        if changes:
            await self.state.change(changes)

    async def _persist_handoffs(self, plan: Plan) -> None:
        if not plan.handoffs:
            return
        jobs = self.state.jobs
        await self.state.change(
            [
                Change(
                    h.job_id,
                    JobState.HANDED_OFF,
                    "handoff",
                    "scheduler",
                    h.reason,
                    (("reason", "being handed to Slurm"),),
                )
                for h in plan.handoffs
                if h.job_id in jobs and jobs[h.job_id].state is JobState.PENDING
            ]
        )
        if self.slurm is not None:
            self.slurm.kick()

    def _explain(self, reasons: Mapping[int, str]) -> None:
        # Why a job waits is recomputed every cycle, so it lives in memory only; the store
        # keeps the reasons that end or requeue a job, written with their change.
        jobs = self.state.jobs
        for job_id, reason in reasons.items():
            job = jobs.get(job_id)
            if job is not None and job.reason != reason:
                job.reason = reason
                self.state.publish_job(job)


@dataclass
class SnapshotCache:
    """Frozen views of jobs kept from one snapshot to the next, by job id, with the record
    (and the drained GPUs) they were made from, and of nodes, by name. A view that did not
    change is the same object in the next snapshot: the policies tell what changed by
    identity (policies/memo.py)."""

    pending: dict[int, tuple[JobRecord, PendingJob]] = field(default_factory=dict)
    running: dict[int, tuple[JobRecord, tuple[int, ...], RunningJob]] = field(default_factory=dict)
    nodes: dict[str, NodeView] = field(default_factory=dict)  # by name


def take_snapshot(
    now: float,
    jobs: Iterable[JobRecord],
    nodes: Mapping[str, NodeRecord],
    schedulable: Iterable[str],
    cache: SnapshotCache | None = None,
    accounts: AccountTree | None = None,
    usage: Mapping[str, float] | None = None,
    slurm: SlurmCapacity | None = None,
    handoff_after: Callable[[JobRecord], float] | None = None,
    multi_node: bool = False,
    last_checkpoint: Callable[[JobRecord, float], float] | None = None,
    held: Collection[int] = (),
    quotas: Quotas | None = None,
) -> ClusterSnapshot:
    """`cache` keeps each job's frozen view while its record is the same object (records
    are replaced on every change), so a long queue costs little to snapshot. Pending jobs
    in `held` (held back by the gates) are left out."""
    kept = SnapshotCache() if cache is None else cache
    running_cache = kept.running
    pending_cache = kept.pending
    busy: dict[str, set[int]] = {}
    used_cpus: dict[str, int] = {}
    used_mem: dict[str, int] = {}
    running: list[RunningJob] = []
    pending: list[PendingJob] = []
    pending_state = JobState.PENDING
    elsewhere: dict[str, int] = {}  # GPUs of jobs handed to Slurm, by user
    for job in jobs:
        state = job.state
        if state in IN_SLURM:
            elsewhere[job.user] = elsewhere.get(job.user, 0) + job.gpus
            continue
        if state in ON_NODE:
            for where, gpus in job.holds() if job.parts else ((job.node, job.gpu_indexes),):
                busy.setdefault(where, set()).update(gpus)
                used_cpus[where] = used_cpus.get(where, 0) + job.cpus
                used_mem[where] = used_mem.get(where, 0) + job.mem_mb
            checkpoint = (
                last_checkpoint(job, now) if last_checkpoint else job.last_checkpoint
            ) or None
            # a drained GPU is not there for scheduling, not even as one a victim frees
            sick = nodes[job.node].gpu_health if job.node in nodes else {}
            seen = running_cache.get(job.job_id)
            if job.parts:
                view = _gang_view(job, nodes, checkpoint)
                if seen is None or seen[0] is not job or seen[2] != view:
                    running_cache[job.job_id] = (job, (), view)
                else:
                    view = seen[2]  # the same object: the policies see it unchanged
                running.append(view)
                continue
            if seen is not None and seen[0] is job and seen[1] == tuple(sick):
                view = seen[2]
                if view.last_checkpoint != checkpoint:
                    view = replace(view, last_checkpoint=checkpoint)
                    running_cache[job.job_id] = (job, seen[1], view)
                running.append(view)
                continue
            held_here = tuple(i for i in job.gpu_indexes if i not in sick)
            view = _running_view(job, ((job.node, held_here),), checkpoint)
            running_cache[job.job_id] = (job, tuple(sick), view)
            running.append(view)
        elif state is pending_state:
            if held and job.job_id in held:
                continue
            if job.nodes > 1 and not multi_node:
                continue  # never on one node, as if it were a single-node job of N*G GPUs
            cached = pending_cache.get(job.job_id)
            if cached is not None and cached[0] is job:
                pending.append(cached[1])
                continue
            waiting = PendingJob(
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
                gpu_types=frozenset(normalise_type(t) for t in job.gpu_types),
                nodes=job.nodes,
                gpus_per_node=job.gpus_per_node,
            )
            pending_cache[job.job_id] = (job, waiting)
            pending.append(waiting)
    if len(pending_cache) > len(pending):
        live = {view.job_id for view in pending}
        for job_id in [j for j in pending_cache if j not in live]:
            del pending_cache[job_id]
    if len(running_cache) > len(running):
        live = {view.job_id for view in running}
        for job_id in [j for j in running_cache if j not in live]:
            del running_cache[job_id]
    ok = set(schedulable)
    views = []
    node_cache = kept.nodes
    for name in sorted(nodes):
        node = nodes[name]
        taken = busy.get(name, set())
        slots = _slots(node)
        shown = NodeView(
            name=name,
            gpus=slots,
            free_gpus=frozenset(g.index for g in slots if g.index not in taken),
            cpus=node.cpus,
            mem_mb=node.mem_mb,
            free_cpus=node.cpus - used_cpus.get(name, 0),
            free_mem_mb=node.mem_mb - used_mem.get(name, 0),
            schedulable=name in ok,
        )
        before = node_cache.get(name)
        if before is not None and before == shown:
            shown = before  # the same object as last time: the policies see it unchanged
        else:
            node_cache[name] = shown
        views.append(shown)
    if len(node_cache) > len(nodes):
        for name in [n for n in node_cache if n not in nodes]:
            del node_cache[name]
    return ClusterSnapshot(
        now,
        tuple(views),
        tuple(pending),
        tuple(running),
        accounts or AccountTree.flat(),
        MappingProxyType(dict(usage or {})),
        slurm,
        multi_node,
        quotas,
        MappingProxyType(elsewhere),
    )


def _gang_view(
    job: JobRecord, nodes: Mapping[str, NodeRecord], checkpoint: float | None
) -> RunningJob:
    """A multi-node job as the policies see it: every part, drained GPUs left out."""
    parts = []
    for p in job.parts:
        sick = nodes[p.node].gpu_health if p.node in nodes else {}
        parts.append((p.node, tuple(i for i in p.gpus if i not in sick)))
    return _running_view(job, tuple(parts), checkpoint)


def _running_view(
    job: JobRecord, parts: tuple[tuple[str, tuple[int, ...]], ...], checkpoint: float | None
) -> RunningJob:
    """A running job as the policies see it, holding `parts` (drained GPUs left out)."""
    return RunningJob(
        job.job_id,
        job.user,
        job.queue,
        parts,
        job.start_time,
        job.priority,
        job.time_limit_s,
        checkpoint,
        preemptible=not job.no_preempt,
        yielding_to=job.preempted_for if job.state is JobState.PREEMPTING else 0,
        cpus=job.cpus,
        mem_mb=job.mem_mb,
    )


_SLOTS: dict[tuple[int, tuple[int, ...]], tuple[list[GpuInfo], tuple[GpuSlot, ...]]] = {}


def _slots(node: NodeRecord) -> tuple[GpuSlot, ...]:
    """A node's schedulable GPUs (drained ones left out), made again only when its GPU
    list or its drained GPUs change."""
    key = (id(node.gpus), tuple(sorted(node.gpu_health)))
    kept = _SLOTS.get(key)
    if kept is not None and kept[0] is node.gpus:
        return kept[1]
    sick = node.gpu_health
    slots = tuple(
        GpuSlot(
            g.index,
            g.uuid,
            frozenset(p for p in g.nvlink_peers if p not in sick),
            normalise_type(g.model),
        )
        for g in node.gpus
        if g.index not in sick
    )
    if len(_SLOTS) > 100_000:
        _SLOTS.clear()
    _SLOTS[key] = (node.gpus, slots)
    return slots


def account_tree(config: Config) -> AccountTree:
    teams = [Account(a.name, a.shares, (), a.users) for a in config.accounts]
    if config.default_account not in {a.name for a in config.accounts}:
        teams.append(Account(config.default_account, config.default_shares))
    return AccountTree.build(Account("root", 1.0, tuple(teams)), config.default_account)


def quotas_of(config: Config) -> Quotas | None:
    """The quotas of [fairshare] as the policies take them; None when there are none."""
    accounts = {
        a.name: AccountQuota(
            MappingProxyType(dict(a.guaranteed)), MappingProxyType(dict(a.limit)), a.lend
        )
        for a in config.accounts
        if a.guaranteed or a.limit or not a.lend
    }
    users = {name: UserLimits(u.max_running_gpus, u.max_pending_jobs) for name, u in config.users}
    default = UserLimits(config.user_limits.max_running_gpus, config.user_limits.max_pending_jobs)
    quotas = Quotas(
        MappingProxyType(accounts), MappingProxyType(users), default, config.reclaim_after_s
    )
    return quotas if quotas.active else None
