"""The scheduler's core: live state, the agents' sessions, and every state change.

All job changes go through `change()`, under one lock: the store writes the change and its
event in one transaction, then the in-memory view and the watchers follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gshare.api import gshare_pb2 as pb
from gshare.checkpoint import YIELD_EXIT_CODE
from gshare.config import Config
from gshare.timefmt import format_duration
from policies import FairTree, PendingJob, Plan, Policy, decayed_usage, fair_tree
from schedulerd import cycle, requests
from schedulerd.handoff import SlurmLink
from schedulerd.jobstate import JobState
from schedulerd.model import EventRecord, GpuInfo, JobRecord, NodeRecord, NodeState
from schedulerd.peercred import Caller
from schedulerd.requests import MAX_GPUS_PER_JOB as MAX_GPUS_PER_JOB  # re-exported
from schedulerd.requests import MAX_PRIORITY, Refused
from schedulerd.store import Change, NewJob, Store
from schedulerd.telemetry import HeldGpu, Telemetry, TelemetryIntake

log = logging.getLogger(__name__)

T = TypeVar("T")

USAGE_SAVE_EVERY_S = 10.0  # a scheduler crash loses at most this much accounting


@dataclass(eq=False)
class AgentSession:
    node: str
    outbox: asyncio.Queue[pb.SchedulerMessage] = field(default_factory=asyncio.Queue)
    connected_at: float = 0.0

    def send(self, msg: pb.SchedulerMessage) -> None:
        self.outbox.put_nowait(msg)


class Scheduler:
    def __init__(
        self,
        config: Config,
        store: Store,
        policy: Policy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.policy = policy
        self.clock = clock
        self.jobs: dict[int, JobRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.sessions: dict[str, AgentSession] = {}
        self.watchers: set[asyncio.Queue[pb.ClusterChange | None]] = set()
        self.lock = asyncio.Lock()
        self.last_cycle_s = 0.0
        self.cycles = 0
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._wake = asyncio.Event()
        self._submits: asyncio.Queue[tuple[NewJob, asyncio.Future[int]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._views: dict[int, tuple[JobRecord, PendingJob]] = {}
        self.positions: dict[int, int] = {}  # place in line at the last cycle
        self.accounts = cycle.account_tree(config)
        self.usage: dict[str, float] = {}  # decayed GPU-seconds per user
        self.usage_at = 0.0
        self._usage_saved_at = 0.0
        self.idle_usage: dict[str, float] = {}  # decayed idle GPU-seconds per user
        self.telemetry = Telemetry(config.telemetry_interval_s, clock)
        self._node_published: dict[str, float] = {}
        self._nodes_dirty: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._cycle_at = time.monotonic()
        self.on_cycle: Callable[[float], None] | None = None  # metrics: the cycle's seconds
        self.on_start: Callable[[JobRecord, float], None] | None = None  # metrics: queue wait
        self.slurm: SlurmLink | None = None

    # ------------------------------------------------------------ life

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, fn, *args)

    async def start(self) -> None:
        for node in await self.db(self.store.nodes):
            node.state = NodeState.DOWN
            self.nodes[node.name] = node
        for job in await self.db(self.store.live_jobs):
            self.jobs[job.job_id] = job
        self.usage, self.idle_usage, self.usage_at = await self.db(self.store.usage)
        # jobs that ran while the scheduler was down are charged for that time too
        self.accrue_usage(self.clock())
        log.info("loaded %d live jobs and %d known nodes", len(self.jobs), len(self.nodes))
        self._tasks = [
            asyncio.create_task(self._cycle_loop(), name="cycle"),
            asyncio.create_task(self._submit_loop(), name="submits"),
            asyncio.create_task(self._tick_loop(), name="tick"),
        ]
        if self.config.mqtt.enabled:
            intake = TelemetryIntake(self.config.mqtt, self.telemetry, self.on_telemetry)
            self._tasks.append(asyncio.create_task(intake.run(), name="telemetry"))
        if self.config.slurm.enabled:
            self.slurm = SlurmLink.from_config(self.config.slurm, self)
            self._tasks.append(asyncio.create_task(self.slurm.run(), name="slurm"))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.save_usage()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.slurm is not None:
            await self.slurm.aclose()
        for q in list(self.watchers):
            q.put_nowait(None)
        self._db_thread.shutdown(wait=True)

    def alive(self) -> bool:
        """The cycle loop still turns (it runs at least every heartbeat_s)."""
        return time.monotonic() - self._cycle_at < max(60.0, 10 * self.config.heartbeat_s)

    def kick(self) -> None:
        """Ask for a scheduling cycle soon (several kicks close together make one cycle)."""
        self._wake.set()

    # ------------------------------------------------------------ changes

    async def change(self, changes: list[Change]) -> list[JobRecord]:
        """Persist changes with their events, then update the live view. Caller holds the lock."""
        if not changes:
            return []
        if any(
            (job := self.jobs.get(c.job_id)) is not None
            and job.state.on_node
            and not c.to_state.on_node
            for c in changes
        ):
            self.accrue_usage(self.clock())  # charge the GPUs up to the moment they are freed
        records = await self.db(self.store.apply, changes)
        left: list[int] = []
        for record in records:
            old = self.jobs.get(record.job_id)
            if old is not None and old.state.on_node and not record.state.on_node:
                left.append(record.job_id)
            if record.state.final:
                self.jobs.pop(record.job_id, None)
            else:
                self.jobs[record.job_id] = record
            self.publish_job(record)
        for job_id in left:  # after the live view follows the store: this may fail alone
            try:
                await self._keep_gpu_stats(job_id)
            except Exception:
                log.exception("job %d: keeping its GPU figures failed", job_id)
        return records

    async def _keep_gpu_stats(self, job_id: int) -> None:
        """A job leaves its node: store what telemetry saw of its GPUs."""
        stats = self.telemetry.jobs.pop(job_id, None)
        if stats is not None and stats.sampled_s:
            await self.db(
                self.store.save_gpu_stats,
                job_id,
                stats.util_avg,
                stats.mem_peak_mb,
                stats.sampled_s,
                stats.idle_gpu_s,
            )

    async def annotate(
        self, job: JobRecord, kind: str, actor: str, why: str, *fields: tuple[str, Any]
    ) -> JobRecord:
        """An event that leaves the state as it is (a cancel asked for, a checkpoint, a new
        priority), with the fields it sets. Caller holds the lock."""
        [job] = await self.change([Change(job.job_id, job.state, kind, actor, why, fields)])
        return job

    def publish_job(self, job: JobRecord) -> None:
        from schedulerd.convert import job_to_pb

        if not self.watchers:
            return
        self._publish(pb.ClusterChange(job=job_to_pb(job)))

    def publish_node(self, node: NodeRecord) -> None:

        if not self.watchers:
            return
        self._node_published[node.name] = time.monotonic()
        self._nodes_dirty.discard(node.name)
        self._publish(pb.ClusterChange(node=self.node_pb(node)))

    def node_pb(self, node: NodeRecord) -> pb.Node:
        from schedulerd.convert import node_to_pb

        return node_to_pb(node, self.busy_gpus(node.name), self.telemetry)

    def job_pb(
        self, job: JobRecord, events: list[EventRecord] | None = None, position: int = 0
    ) -> pb.Job:
        from schedulerd.convert import job_to_pb, set_gpu_stats

        msg = job_to_pb(job, events, position)
        stats = self.telemetry.jobs.get(job.job_id)
        if stats is not None and job.state.on_node:
            set_gpu_stats(
                msg,
                stats.util_avg,
                stats.util_current,
                stats.mem_peak_mb,
                self.telemetry.idle_for(job.job_id),
                stats.idle_gpu_s,
                self.telemetry.warnings_of(job.node, job.job_id),
            )
        return msg

    def _publish(self, change: pb.ClusterChange) -> None:
        for q in list(self.watchers):
            try:
                q.put_nowait(change)
            except asyncio.QueueFull:
                # a watcher that cannot keep up is dropped; it reconnects and resyncs
                self.watchers.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                q.put_nowait(None)

    def busy_gpus(self, node: str) -> list[int]:
        return sorted(
            i
            for j in self.jobs.values()
            if j.node == node and j.state.on_node
            for i in j.gpu_indexes
        )

    # ------------------------------------------------------------ client requests

    def _can_manage(self, caller: Caller, job: JobRecord) -> bool:
        return caller.uid == 0 or caller.uid == job.uid or caller.user in self.config.admins

    def is_admin(self, caller: Caller) -> bool:
        return caller.uid == 0 or caller.user in self.config.admins

    def validate(self, caller: Caller, spec: pb.JobSpec) -> JobRecord:
        """Turn a submission into a job record, or refuse it with the reason."""
        return requests.validate(caller, spec, self.config, self.nodes, self.is_admin, self.clock())

    async def submit(self, caller: Caller, spec: pb.JobSpec) -> int:
        record = self.validate(caller, spec)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._submits.put_nowait((NewJob(record, spec.script), future))
        return await future

    async def _submit_loop(self) -> None:
        """Group commit: every submission that arrived while the last batch was being written
        goes into the next transaction, and each is acknowledged only after its commit.

        If a batch's transaction fails, nothing of it was written: each of its submissions is
        then written alone, so a bad one fails by itself and never takes the others with it.
        """
        Batch = list[tuple[NewJob, asyncio.Future[int]]]

        async def commit(batch: Batch) -> None:
            now = self.clock()
            ids = await self.db(self.store.submit_many, [n for n, _ in batch], now)
            for (new, future), job_id in zip(batch, ids, strict=True):
                record = new.record  # made by validate() for this submission alone
                record.job_id, record.submit_time = job_id, now
                self.jobs[job_id] = record
                self.publish_job(record)
                if not future.done():
                    future.set_result(job_id)

        def fail(batch: Batch, exc: Exception) -> None:
            log.warning("storing a submission failed: %s", exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)

        while True:
            batch = [await self._submits.get()]
            while not self._submits.empty() and len(batch) < 1024:
                batch.append(self._submits.get_nowait())
            try:
                await commit(batch)
            except Exception as exc:
                if len(batch) == 1:
                    fail(batch, exc)
                else:
                    log.warning("storing %d submissions failed (%s); each alone", len(batch), exc)
                    for one in batch:
                        try:
                            await commit([one])
                        except Exception as alone:
                            fail([one], alone)
            self.kick()

    async def get_job(self, job_id: int) -> tuple[JobRecord, list[EventRecord]]:
        job = self.jobs.get(job_id) or await self.db(self.store.job, job_id)
        if job is None:
            raise Refused(f"no job {job_id}", "NOT_FOUND")
        return job, await self.db(self.store.events, job_id)

    async def list_jobs(
        self,
        users: Iterable[str],
        states: Iterable[JobState],
        queues: Iterable[str],
        include_finished: bool,
        limit: int,
    ) -> list[JobRecord]:
        users, states, queues = set(users), set(states), set(queues)
        jobs = list(self.jobs.values())
        if include_finished or (states & {s for s in JobState if s.final}):
            jobs += await self.db(self.store.finished_jobs, limit or 1000, sorted(users))
        out = [
            j
            for j in jobs
            if (not users or j.user in users)
            and (not states or j.state in states)
            and (not queues or j.queue in queues)
        ]
        out.sort(key=lambda j: j.job_id)
        return out[-limit:] if limit else out

    async def _owned(
        self, caller: Caller, job_id: int, need: JobState | None = None, verb: str = ""
    ) -> JobRecord:
        """The live job `job_id` if `caller` may manage it (and it is in state `need`)."""
        job = self.jobs.get(job_id)
        if job is None:
            ended = await self.db(self.store.job, job_id)
            if ended is None:
                raise Refused(f"no job {job_id}", "NOT_FOUND")
            raise Refused(f"job {job_id} has already ended ({ended.state})", "FAILED_PRECONDITION")
        if not self._can_manage(caller, job):
            raise Refused(f"job {job_id} belongs to {job.user}", "PERMISSION_DENIED")
        if need is not None and job.state is not need:
            raise Refused(
                f"job {job_id} is {job.state}; only a {need.lower()} job can be {verb}",
                "FAILED_PRECONDITION",
            )
        return job

    async def cancel(self, caller: Caller, job_id: int) -> JobRecord:
        async with self.lock:
            job = await self._owned(caller, job_id)
            why = f"cancelled by {caller.user}"
            remote = job.state in (JobState.HANDED_OFF, JobState.RUNNING_REMOTE)
            if remote and self.slurm is not None:
                if job.end_request:
                    return job
                job = await self.annotate(
                    job,
                    "cancel_requested",
                    caller.user,
                    why + "; cancelling it in Slurm",
                    ("end_request", JobState.CANCELLED.value),
                    ("reason", why + "; cancelling it in Slurm"),
                )
                self.slurm.kick()
                return job
            if remote:  # and no [slurm] any more: it can only end here
                why += "; no Slurm is configured any more, so it may still run there"
            if remote or job.state in (JobState.PENDING, JobState.HELD, JobState.LOST):
                [job] = await self.change(
                    [
                        Change(
                            job_id,
                            JobState.CANCELLED,
                            "cancel",
                            caller.user,
                            why,
                            (("end_time", self.clock()), ("reason", why)),
                        )
                    ]
                )
                self.kick()
                return job
            if job.state.on_node:
                job = await self.annotate(
                    job,
                    "cancel_requested",
                    caller.user,
                    why,
                    ("end_request", JobState.CANCELLED.value),
                    ("reason", why),
                )
                self._send_kill(job)
                return job
            raise Refused(
                f"job {job_id} is {job.state} and cannot be cancelled", "FAILED_PRECONDITION"
            )

    async def set_priority(self, caller: Caller, job_id: int, priority: int) -> JobRecord:
        """Admins may set any priority; owners may only lower their own jobs (<= 0)."""
        if abs(priority) > MAX_PRIORITY:
            raise Refused(f"priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}")
        async with self.lock:
            job = await self._owned(caller, job_id)
            if priority > 0 and not self.is_admin(caller):
                raise Refused(
                    "only an admin may give a job a positive priority", "PERMISSION_DENIED"
                )
            why = f"priority {job.priority} -> {priority} by {caller.user}"
            job = await self.annotate(job, "priority", caller.user, why, ("priority", priority))
        self.kick()
        return job

    async def hold(self, caller: Caller, job_id: int) -> JobRecord:
        async with self.lock:
            job = await self._owned(caller, job_id, JobState.PENDING, "held")
            why = f"held by {caller.user}"
            [job] = await self.change(
                [Change(job_id, JobState.HELD, "hold", caller.user, why, (("reason", why),))]
            )
            return job

    async def release(self, caller: Caller, job_id: int) -> JobRecord:
        async with self.lock:
            job = await self._owned(caller, job_id, JobState.HELD, "released")
            [job] = await self.change(
                [
                    Change(
                        job_id,
                        JobState.PENDING,
                        "release",
                        caller.user,
                        f"released by {caller.user}",
                        (("reason", ""),),
                    )
                ]
            )
            self.kick()
            return job

    def usage_report(self) -> tuple[FairTree, dict[tuple[str, ...], list[int]]]:
        """Fair Tree standings now, and the running and pending GPUs under each path."""
        self.accrue_usage(self.clock())
        tree = self.accounts.with_users({j.user for j in self.jobs.values()} | set(self.usage))
        standings = fair_tree(tree, self.usage)
        gpus: dict[tuple[str, ...], list[int]] = {}
        for job in self.jobs.values():
            slot = 0 if job.state.on_node else 1 if job.state is JobState.PENDING else None
            if slot is None:
                continue
            path = (*tree.path_of(job.user), job.user)
            for depth in range(1, len(path) + 1):
                gpus.setdefault(path[:depth], [0, 0])[slot] += job.gpus
        return standings, gpus

    # ------------------------------------------------------------ the cycle

    def schedulable_nodes(self) -> list[str]:
        return [
            name
            for name, node in self.nodes.items()
            if name in self.sessions and node.state == NodeState.UP and not node.drained
        ]

    async def run_cycle(self) -> Plan:
        async with self.lock:
            t0 = time.perf_counter()
            now = self.clock()
            self.accrue_usage(now)
            snapshot = cycle.take_snapshot(
                now,
                self.jobs.values(),
                self.nodes,
                self.schedulable_nodes(),
                self._views,
                self.accounts,
                self.usage,
                self.slurm.capacity_now() if self.slurm is not None else None,
                self.handoff_after,
            )
            plan = self.policy.decide(snapshot)
            decided = time.perf_counter() - t0
            self.positions = {job_id: i for i, job_id in enumerate(plan.order, start=1)}
            reasons = dict(plan.reasons)
            for start in plan.starts:
                if len(start.parts) != 1:
                    reasons[start.job_id] = (
                        f"would take {len(start.parts)} whole nodes; jobs across nodes "
                        "are not launched yet"
                    )
            started = await self.change(cycle.start_changes(plan, self.nodes, now))
            await self._apply_preemptions(plan)
            if plan.handoffs:
                await self.change(
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
                        if h.job_id in self.jobs and self.jobs[h.job_id].state is JobState.PENDING
                    ]
                )
                if self.slurm is not None:
                    self.slurm.kick()
            changed = {
                job_id: reason
                for job_id, reason in reasons.items()
                if job_id in self.jobs and self.jobs[job_id].reason != reason
            }
            # Why a job waits is recomputed every cycle, so it lives in memory only; the
            # store keeps the reasons that end or requeue a job, written with their change.
            for job_id, reason in changed.items():
                self.jobs[job_id].reason = reason
                self.publish_job(self.jobs[job_id])
            for job in started:
                await self._send_launch(job)
                if self.on_start is not None:
                    self.on_start(job, now - job.submit_time)
            if started:
                for name in {j.node for j in started}:
                    self.publish_node(self.nodes[name])
            self.cycles += 1
            self.last_cycle_s = time.perf_counter() - t0
            if self.on_cycle is not None:
                self.on_cycle(decided)
            return plan

    async def _cycle_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.heartbeat_s)
            # Debounce: a burst of events makes one cycle, and cycles never take more than
            # about a quarter of the loop's time, so a long queue cannot starve the API.
            await asyncio.sleep(0.05 + 5 * self.last_cycle_s)
            self._wake.clear()
            self._cycle_at = time.monotonic()
            try:
                await self.run_cycle()
            except Exception:
                log.exception("scheduling cycle failed")

    def accrue_usage(self, now: float) -> None:
        """Decay the ledger to `now` and charge the GPUs held since it was last brought up."""
        if self.usage_at <= 0:
            self.usage_at = now
            return
        held: dict[str, int] = {}
        for job in self.jobs.values():
            if job.state.on_node:
                held[job.user] = held.get(job.user, 0) + len(job.gpu_indexes)
        dt = now - self.usage_at
        if dt > 0:
            self.usage = decayed_usage(self.usage, held, dt, self.config.half_life_s)
            self.idle_usage = decayed_usage(self.idle_usage, {}, dt, self.config.half_life_s)
            self.usage_at = now
        for user, seconds in self.telemetry.take_idle().items():
            self.idle_usage[user] = self.idle_usage.get(user, 0.0) + seconds

    def charge(self, user: str, gpu_seconds: float) -> None:
        """Put GPU time used elsewhere (a handed-off job in Slurm) in the ledger, now."""
        self.accrue_usage(self.clock())
        self.usage[user] = self.usage.get(user, 0.0) + gpu_seconds

    def handoff_after(self, job: JobRecord) -> float:
        """The job's hand-off rule for the policies: -1 never, 0 at once, T after T s."""
        if self.slurm is None or job.slurm == "never":
            return -1.0
        if job.slurm == "always":
            return 0.0
        queue = self.config.queues.get(job.queue)
        if queue is None or queue.slurm == "never":
            return -1.0
        return 0.0 if queue.slurm == "always" else float(max(1, queue.slurm_after_s))

    async def save_usage(self) -> None:
        self.accrue_usage(self.clock())
        await self.db(self.store.save_usage, dict(self.usage), self.usage_at, dict(self.idle_usage))
        self._usage_saved_at = self.usage_at

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._expire_leases()
                await self._enforce_time_limits()
                await self._reclaim_idle()
                for name in list(self._nodes_dirty):
                    if name in self.nodes:
                        self.publish_node(self.nodes[name])
                if self.clock() - self._usage_saved_at >= USAGE_SAVE_EVERY_S:
                    await self.save_usage()
            except Exception:
                log.exception("periodic checks failed")

    async def _enforce_time_limits(self) -> None:
        now = self.clock()
        async with self.lock:
            over = [
                j
                for j in self.jobs.values()
                if j.state is JobState.RUNNING
                and j.time_limit_s
                and not j.end_request
                and now - j.start_time > j.time_limit_s
            ]
            for job in over:
                why = f"time limit of {job.time_limit_s}s reached"
                job = await self.annotate(
                    job,
                    "timeout",
                    "scheduler",
                    why,
                    ("end_request", JobState.TIMEOUT.value),
                    ("reason", why),
                )
                self._send_kill(job)

    async def _expire_leases(self) -> None:
        now = self.clock()
        async with self.lock:
            for node in list(self.nodes.values()):
                if node.name in self.sessions or node.state == NodeState.DOWN:
                    continue
                if now - node.last_seen < self.config.node_lease_s:
                    continue
                node.state = NodeState.DOWN
                node.reason = f"agent silent for more than {self.config.node_lease_s:.0f}s"
                log.warning("node %s is down: %s", node.name, node.reason)
                self.publish_node(node)
                await self._lose_jobs_on(node.name, node.reason)
            self.kick()

    async def _lose_jobs_on(self, node: str, why: str) -> None:
        on_node = [j for j in self.jobs.values() if j.node == node and j.state.on_node]
        for job in on_node:
            await self.change(
                [Change(job.job_id, JobState.LOST, "lost", "scheduler", why, (("reason", why),))]
            )
            if job.end_request:
                end = JobState(job.end_request)
                await self.change(
                    [
                        Change(
                            job.job_id, end, "end", "scheduler", why, (("end_time", self.clock()),)
                        )
                    ]
                )
            else:
                await self.change(
                    [
                        Change(
                            job.job_id,
                            JobState.PENDING,
                            "requeue",
                            "scheduler",
                            f"requeued: {why}",
                            _requeue_fields(job, f"requeued after node {node} was lost"),
                        )
                    ]
                )

    # ------------------------------------------------------------ preemption

    async def _apply_preemptions(self, plan: Plan) -> None:
        """Victims go PREEMPTING and are asked to yield; each preemptor claims the node."""
        for p in plan.preemptions:
            victim = self.jobs.get(p.job_id)
            if victim is None or victim.state is not JobState.RUNNING or victim.no_preempt:
                continue
            why = f"preempted for job {p.for_job}: {p.reason}"
            [victim] = await self.change([_preempt_change(victim, "scheduler", why, p.for_job)])
            self._send_preempt(victim)
            claimant = self.jobs.get(p.for_job)
            if (
                claimant is not None
                and claimant.state is JobState.PENDING
                and claimant.claimed_node != p.node
            ):
                why = f"GPUs on {p.node} are being freed for it"
                await self.annotate(claimant, "claim", "scheduler", why, ("claimed_node", p.node))

    def _send_preempt(self, job: JobRecord) -> None:
        session = self.sessions.get(job.node)
        if session is not None:
            msg = pb.Preempt(job_id=job.job_id, signal=job.preempt_signal, grace_s=job.grace_s)
            session.send(pb.SchedulerMessage(preempt=msg))

    async def preempt(self, caller: Caller, job_id: int) -> JobRecord:
        """`gshare preempt JOB`: ask a running job to checkpoint and yield, by hand."""
        async with self.lock:
            job = await self._owned(caller, job_id, JobState.RUNNING, "preempted")
            why = f"preempted by {caller.user}"
            [job] = await self.change([_preempt_change(job, caller.user, why)])
            self._send_preempt(job)
            return job

    async def _yielded(self, node: str, job: JobRecord, update: pb.AgentJob) -> bool:
        """A job asked to yield has ended. Requeue it if it yielded (or was killed at the
        end of its grace); False if it ended some other way, to be handled as any end."""
        signame = _signal_name(job.preempt_signal)
        if update.exit_code == YIELD_EXIT_CODE and not update.exit_signal:
            why = "yielded after its checkpoint"
        elif update.killed_after_grace:
            why = f"ignored {signame} and was killed at the end of its {job.grace_s:.0f}s grace"
        elif update.exit_signal == job.preempt_signal:
            why = f"ended by {signame} before it could checkpoint (it does not handle it)"
        else:
            return False
        session = self.sessions.get(node)
        if job.max_restarts >= 0 and job.restarts + 1 > job.max_restarts:
            final = (
                f"{why}; preempted {job.preemptions} times, over --max-restarts {job.max_restarts}"
            )
            await self.change(
                [
                    Change(
                        job.job_id,
                        JobState.FAILED,
                        "end",
                        f"agent:{node}",
                        final,
                        (
                            ("end_time", update.end_time or self.clock()),
                            ("exit_code", update.exit_code),
                            ("exit_signal", update.exit_signal),
                            ("has_exit", True),
                            ("reason", final),
                        ),
                    )
                ]
            )
        else:
            await self.change(
                [
                    Change(
                        job.job_id,
                        JobState.PENDING,
                        "requeue",
                        f"agent:{node}",
                        why,
                        (
                            *_requeue_fields(job, f"{why}; waiting to resume"),
                            ("preempted_for", 0),
                            ("exit_code", update.exit_code),
                            ("exit_signal", update.exit_signal),
                        ),
                    )
                ]
            )
        if session is not None:
            session.send(pb.SchedulerMessage(forget=pb.Forget(job_id=job.job_id)))
        self.publish_node(self.nodes[node])
        self.kick()
        return True

    async def agent_checkpoint(self, session: AgentSession, report: pb.CheckpointReport) -> None:
        async with self.lock:
            job = self.jobs.get(report.job_id)
            if job is None or job.node != session.node or not job.state.on_node:
                return
            why = f"step {report.step}, {report.size / (1 << 20):.1f} MB"
            actor = f"agent:{session.node}"
            await self.annotate(job, "checkpoint", actor, why, ("last_checkpoint", report.time))

    # ------------------------------------------------------------ agents

    def _send_kill(self, job: JobRecord) -> None:
        session = self.sessions.get(job.node)
        if session is not None:
            session.send(
                pb.SchedulerMessage(
                    kill=pb.KillJob(job_id=job.job_id, grace_s=self.config.kill_grace_s)
                )
            )

    async def _send_launch(self, job: JobRecord) -> None:
        session = self.sessions.get(job.node)
        if session is None:
            return
        script = await self.db(self.store.script, job.job_id)
        from schedulerd.convert import spec_of

        session.send(
            pb.SchedulerMessage(
                launch=pb.Launch(
                    job_id=job.job_id,
                    spec=spec_of(job, script),
                    gpu_indexes=job.gpu_indexes,
                    gpu_uuids=job.gpu_uuids,
                    user=job.user,
                    uid=job.uid,
                    gid=job.gid,
                    output_path=job.output_path,
                    restart_count=job.restarts,
                    checkpoint_dir=job.checkpoint_path,
                )
            )
        )

    async def agent_connected(self, session: AgentSession, reg: pb.Register) -> None:
        """A (re)connecting agent: record its node and reconcile the jobs it reports."""
        async with self.lock:
            old = self.sessions.get(reg.node)
            if old is not None and old is not session:
                old.send(pb.SchedulerMessage())  # empty message: tells the old stream to end
            self.sessions[reg.node] = session
            node = self.nodes.get(reg.node)
            gpus = [
                GpuInfo(g.index, g.uuid, g.model, g.memory_mb, list(g.nvlink_peers))
                for g in reg.gpus
            ]
            if node is None:
                node = NodeRecord(reg.node, gpus, reg.cpus, reg.mem_mb)
                self.nodes[reg.node] = node
            node.gpus, node.cpus, node.mem_mb = gpus, reg.cpus, reg.mem_mb
            node.state = NodeState.DRAINING if node.drained else NodeState.UP
            if not node.drained:
                node.reason = ""
            node.last_seen = self.clock()
            node.gpu_backend, node.agent_version = reg.gpu_backend, reg.agent_version
            await self.db(self.store.save_node, node)
            session.send(
                pb.SchedulerMessage(
                    registered=pb.Registered(
                        lease_s=self.config.node_lease_s, heartbeat_s=self.config.heartbeat_s
                    )
                )
            )
            reported = {j.job_id: j for j in reg.jobs}
            for job in [j for j in self.jobs.values() if j.node == reg.node and j.state.on_node]:
                seen = reported.pop(job.job_id, None)
                if seen is not None:
                    await self._job_update(reg.node, seen)
                    if not seen.exited and job.end_request:
                        self._send_kill(job)
                elif job.state is JobState.STARTING:
                    why = f"node {reg.node} came back without the job; starting it again"
                    await self.change(
                        [
                            Change(
                                job.job_id,
                                JobState.PENDING,
                                "requeue",
                                "scheduler",
                                why,
                                _requeue_fields(job, why, count=False),
                            )
                        ]
                    )
                else:
                    why = f"node {reg.node} no longer knows the job (its agent state was lost)"
                    await self.change(
                        [
                            Change(
                                job.job_id,
                                JobState.FAILED,
                                "lost",
                                "scheduler",
                                why,
                                (("reason", why), ("end_time", self.clock())),
                            )
                        ]
                    )
            for stray in reported.values():
                # ours no more (requeued, cancelled, or unknown): stop it, forget its end
                if stray.exited:
                    session.send(pb.SchedulerMessage(forget=pb.Forget(job_id=stray.job_id)))
                else:
                    log.warning(
                        "node %s runs job %d that is not its own; killing it",
                        reg.node,
                        stray.job_id,
                    )
                    session.send(
                        pb.SchedulerMessage(
                            kill=pb.KillJob(job_id=stray.job_id, grace_s=self.config.kill_grace_s)
                        )
                    )
            self.publish_node(node)
        self.kick()

    async def agent_disconnected(self, session: AgentSession) -> None:
        async with self.lock:
            if self.sessions.get(session.node) is not session:
                return
            del self.sessions[session.node]
            node = self.nodes[session.node]
            node.reason = "agent disconnected"
            log.warning("agent of node %s disconnected", session.node)
            self.publish_node(node)

    def heartbeat(self, session: AgentSession) -> None:
        node = self.nodes.get(session.node)
        if node is not None:
            node.last_seen = self.clock()

    async def agent_job_update(self, session: AgentSession, update: pb.AgentJob) -> None:
        async with self.lock:
            await self._job_update(session.node, update)
        if update.exited:
            self.kick()

    async def _job_update(self, node: str, update: pb.AgentJob) -> None:
        job = self.jobs.get(update.job_id)
        session = self.sessions.get(node)
        if job is None or job.node != node or not job.state.on_node:
            if update.exited and session is not None:
                session.send(pb.SchedulerMessage(forget=pb.Forget(job_id=update.job_id)))
            return
        if not update.exited:
            if job.state is JobState.STARTING:
                await self.change(
                    [
                        Change(
                            job.job_id,
                            JobState.RUNNING,
                            "running",
                            f"agent:{node}",
                            f"pid {update.pid}",
                            (("start_time", update.start_time or self.clock()),),
                        )
                    ]
                )
            return
        yielding = job.state is JobState.PREEMPTING and not job.end_request and not update.error
        if yielding and await self._yielded(node, job, update):
            return
        end, why = _end_of(job, update)
        fields = (
            ("end_time", update.end_time or self.clock()),
            ("exit_code", update.exit_code),
            ("exit_signal", update.exit_signal),
            ("has_exit", not update.error),
            ("reason", why),
        )
        await self.change([Change(job.job_id, end, "end", f"agent:{node}", why, fields)])
        if session is not None:
            session.send(pb.SchedulerMessage(forget=pb.Forget(job_id=job.job_id)))
        self.publish_node(self.nodes[node])

    # ------------------------------------------------------------ telemetry

    def held_gpus(self, node: str) -> dict[int, HeldGpu]:
        held = {}
        for job in self.jobs.values():
            if job.node == node and job.state.on_node:
                queue = self.config.queues.get(job.queue)
                pct = queue.idle_util_pct if queue is not None else 5.0
                for i in job.gpu_indexes:
                    held[i] = HeldGpu(job.job_id, job.user, tuple(job.gpu_indexes), pct)
        return held

    def on_telemetry(self, topic: str, payload: bytes) -> None:
        """One MQTT message (called by the intake, on the event loop; never blocks)."""
        misuse, event, node = self.telemetry.handle(topic, payload, self.held_gpus)
        for job_id, text in misuse:
            job = self.jobs.get(job_id)
            if job is not None and job.state.on_node:
                self._spawn(self._note_misuse(job_id, text))
        if event is not None:
            self._spawn(
                self.drain(None, node, event.index, False, event.describe(), uuid=event.uuid)
            )
        if node in self.nodes:
            if time.monotonic() - self._node_published.get(node, 0.0) >= 1.0:
                self.publish_node(self.nodes[node])
            else:
                self._nodes_dirty.add(node)  # the tick publishes it

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _note_misuse(self, job_id: int, text: str) -> None:
        async with self.lock:
            job = self.jobs.get(job_id)
            if job is not None:
                await self.annotate(job, "gpu-misuse", "telemetry", text)

    async def drain(
        self,
        caller: Caller | None,
        node_name: str,
        gpu: int,
        resume: bool,
        reason: str,
        uuid: str = "",
    ) -> NodeRecord:
        """Take a node or one of its GPUs out of scheduling (or put it back).

        `caller` None: a health event from telemetry; `uuid` then names the GPU that had
        it, so an event about a GPU that has since been swapped out drains nothing."""
        if caller is not None and not self.is_admin(caller):
            raise Refused("only root and admins may drain or resume nodes", "PERMISSION_DENIED")
        async with self.lock:
            node = self.nodes.get(node_name)
            if node is None:
                raise Refused(f"no node {node_name!r}", "NOT_FOUND")
            who = caller.user if caller is not None else "telemetry"
            if gpu >= 0:
                info = next((g for g in node.gpus if g.index == gpu), None)
                if info is None:
                    raise Refused(f"node {node_name} has no GPU {gpu}", "NOT_FOUND")
                if uuid and info.uuid != uuid:
                    log.warning(
                        "health event for %s on %s ignored: GPU %d is now %s",
                        uuid,
                        node_name,
                        gpu,
                        info.uuid,
                    )
                    return node
                if resume:
                    node.gpu_health.pop(gpu, None)
                elif gpu not in node.gpu_health:
                    node.gpu_health[gpu] = f"{reason or 'drained'} ({who})"
                    log.warning("node %s GPU %d drained: %s", node_name, gpu, reason)
            else:
                node.drained = not resume
                if resume:
                    node.gpu_health.clear()
                if node_name in self.sessions:
                    node.state = NodeState.DRAINING if node.drained else NodeState.UP
                node.reason = (
                    f"drained by {who}: {reason}"
                    if node.drained and reason
                    else (f"drained by {who}" if node.drained else "")
                )
                session = self.sessions.get(node_name)
                if session is not None and node.drained:
                    session.send(pb.SchedulerMessage(drain=pb.Drain(reason=node.reason)))
            await self.db(self.store.save_node, node)
            self.publish_node(node)
        self.kick()
        return node

    async def _reclaim_idle(self) -> None:
        """Checkpoint-preempt jobs whose GPUs idled past their queue's limit while others wait."""
        if not any(j.state is JobState.PENDING for j in self.jobs.values()):
            return
        async with self.lock:
            # read under the lock: a cycle may have started or handed off a waiting job
            waiting = [j for j in self.jobs.values() if j.state is JobState.PENDING]
            for job in list(self.jobs.values()):
                queue = self.config.queues.get(job.queue)
                if (
                    queue is None
                    or not queue.idle_reclaim
                    or job.state is not JobState.RUNNING
                    or job.no_preempt
                    or job.end_request
                ):
                    continue
                idle = self.telemetry.idle_for(job.job_id)
                if idle < queue.idle_time_s:
                    continue
                claimant = self._claimant_for(job, waiting)
                if claimant is None:
                    continue  # no one waiting could use these GPUs: nothing to reclaim for
                why = (
                    f"idle GPUs reclaimed for job {claimant.job_id}: under "
                    f"{queue.idle_util_pct:g}% utilization for {format_duration(int(idle))}"
                )
                [job] = await self.change([_preempt_change(job, "scheduler", why, claimant.job_id)])
                log.info("job %d: %s", job.job_id, why)
                self._send_preempt(job)
                waiting.remove(claimant)
                claimant = self.jobs[claimant.job_id]  # the current record, still PENDING
                note = f"idle GPUs on {job.node} are being reclaimed for it"
                await self.annotate(
                    claimant, "claim", "scheduler", note, ("claimed_node", job.node)
                )

    def _claimant_for(self, idle: JobRecord, waiting: list[JobRecord]) -> JobRecord | None:
        """The first job in line that the idle job's GPUs (with the node's free ones) fit."""
        node = self.nodes.get(idle.node)
        if node is None:
            return None
        free = len(node.gpus) - len(self.busy_gpus(node.name)) - len(node.gpu_health)
        room = free + len(idle.gpu_indexes)
        here = [j for j in self.jobs.values() if j.node == node.name and j.state.on_node]
        cpus = node.cpus - sum(j.cpus for j in here) + idle.cpus
        mem = node.mem_mb - sum(j.mem_mb for j in here) + idle.mem_mb

        def fits(j: JobRecord) -> bool:
            return (
                j.gpus <= room
                and (not j.cpus or j.cpus <= cpus)
                and (not j.mem_mb or j.mem_mb <= mem)
            )

        line = sorted(
            (j for j in waiting if not j.claimed_node and fits(j)),
            key=lambda j: (self.positions.get(j.job_id) or 1 << 30, j.submit_time),
        )
        return line[0] if line else None


def _preempt_change(job: JobRecord, actor: str, why: str, for_job: int = 0) -> Change:
    """RUNNING -> PREEMPTING: asked to checkpoint and yield (to `for_job`; 0: by hand)."""
    return Change(
        job.job_id,
        JobState.PREEMPTING,
        "preempt",
        actor,
        why,
        (("preempted_for", for_job), ("preemptions", job.preemptions + 1), ("reason", why)),
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _requeue_fields(job: JobRecord, why: str, count: bool = True) -> tuple[tuple[str, Any], ...]:
    return (
        ("node", ""),
        ("gpu_indexes", []),
        ("gpu_uuids", []),
        ("start_time", 0.0),
        ("restarts", job.restarts + (1 if count else 0)),
        ("reason", why),
    )


def _end_of(job: JobRecord, update: pb.AgentJob) -> tuple[JobState, str]:
    if update.error:
        return JobState.FAILED, f"launch failed: {update.error}"
    if job.end_request:
        return JobState(job.end_request), job.reason
    if update.exit_signal:
        try:
            name = signal.Signals(update.exit_signal).name
        except ValueError:
            name = f"signal {update.exit_signal}"
        return JobState.FAILED, f"killed by {name}"
    if update.exit_code == 0:
        return JobState.COMPLETED, ""
    return JobState.FAILED, f"exited with code {update.exit_code}"
