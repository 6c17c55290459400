"""Upkeep, every second and on telemetry: node leases, time limits, idle reclaim, and the
drains that take nodes or GPUs out of scheduling (by an admin, or on a health event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from gshare.config import Config
from gshare.timefmt import format_duration
from policies import idle_claimant
from schedulerd.agents import AgentHub, DrainNotice
from schedulerd.changes import claim_change, end_request_change, lost_changes, preempt_change
from schedulerd.cycle import Cycle
from schedulerd.errors import Refused
from schedulerd.jobstate import JobState
from schedulerd.model import NodeRecord, NodeState
from schedulerd.peercred import Caller
from schedulerd.state import ClusterState
from schedulerd.telemetry import HeldGpu, Telemetry

log = logging.getLogger(__name__)


class Upkeep:
    def __init__(
        self,
        config: Config,
        state: ClusterState,
        agents: AgentHub,
        telemetry: Telemetry,
        cycle: Cycle,
        kick: Callable[[], None],
        is_admin: Callable[[Caller], bool],
    ) -> None:
        self.config = config
        self.state = state
        self.agents = agents
        self.telemetry = telemetry
        self.cycle = cycle
        self.kick = kick
        self.is_admin = is_admin
        self._node_published: dict[str, float] = {}
        self._nodes_dirty: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        state.node_listeners.append(self._published)

    async def tick(self) -> None:
        """What is due every second."""
        await self.expire_leases()
        await self.enforce_time_limits()
        await self.reclaim_idle()
        for name in list(self._nodes_dirty):
            if name in self.state.nodes:
                self.state.publish_node(self.state.nodes[name])

    def _published(self, node: NodeRecord) -> None:
        self._node_published[node.name] = time.monotonic()
        self._nodes_dirty.discard(node.name)

    # ------------------------------------------------------------ leases and limits

    async def expire_leases(self) -> None:
        state = self.state
        async with state.lock:
            now = self.agents.lease_clock()
            for node in list(state.nodes.values()):
                heard = self.agents.heard.get(node.name)
                if node.state == NodeState.DOWN or heard is None:
                    continue  # down already, or not heard since the scheduler started
                if now - heard < self.config.node_lease_s:
                    continue
                # Connected or not: an agent that is frozen, or whose stream stays open while
                # nothing flows, is as gone as one that hung up. Its own node stops its jobs
                # at the same lease, so the copies requeued here never overlap them for long.
                self.agents.hang_up(node.name)
                node.state = NodeState.DOWN
                node.reason = f"agent silent for more than {self.config.node_lease_s:.0f}s"
                log.warning("node %s is down: %s", node.name, node.reason)
                state.publish_node(node)
                for job in state.on_node(node.name):
                    if job.parts:  # one part lost: the others are stopped, then requeued
                        await self.agents.gang_lost(job, node.name, f"lost: {node.reason}")
                    else:
                        await state.change(lost_changes(job, node.name, node.reason, state.clock()))
            self.kick()

    async def enforce_time_limits(self) -> None:
        state = self.state
        async with state.lock:
            now = state.clock()
            over = [
                j
                for j in state.jobs.values()
                if j.state is JobState.RUNNING
                and j.time_limit_s
                and not j.end_request
                and now - j.start_time > j.time_limit_s
            ]
            for job in over:
                why = f"time limit of {job.time_limit_s}s reached"
                change = end_request_change(job, JobState.TIMEOUT, "timeout", "scheduler", why)
                [job] = await state.change([change])
                self.agents.kill(job)

    # ------------------------------------------------------------ idle reclaim

    async def reclaim_idle(self) -> None:
        """Checkpoint-preempt jobs whose GPUs idled past their queue's limit while others
        wait; who gets the GPUs is the policies' call (policies/reclaim.py)."""
        state = self.state
        if not any(j.state is JobState.PENDING for j in state.jobs.values()):
            return
        async with state.lock:  # a cycle may have started or handed off a waiting job
            for job in list(state.jobs.values()):
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
                snapshot = self.cycle.snapshot(state.clock())
                running = next((r for r in snapshot.running if r.job_id == job.job_id), None)
                if running is None:
                    continue
                claimant = idle_claimant(snapshot, running, self.cycle.positions)
                if claimant is None:
                    continue  # no one waiting could use these GPUs: nothing to reclaim for
                why = (
                    f"idle GPUs reclaimed for job {claimant.job_id}: under "
                    f"{queue.idle_util_pct:g}% utilization for {format_duration(int(idle))}"
                )
                [job] = await state.change([preempt_change(job, "scheduler", why, claimant.job_id)])
                log.info("job %d: %s", job.job_id, why)
                self.agents.preempt(job)
                note = f"idle GPUs on {job.node} are being reclaimed for it"
                await state.change([claim_change(state.jobs[claimant.job_id], job.node, note)])

    # ------------------------------------------------------------ telemetry and health

    def held_gpus(self, node: str) -> dict[int, HeldGpu]:
        held = {}
        for job in self.state.on_node(node):
            queue = self.config.queues.get(job.queue)
            pct = queue.idle_util_pct if queue is not None else 5.0
            gpus = tuple(job.gpus_on(node))
            for i in gpus:
                held[i] = HeldGpu(job.job_id, job.user, gpus, pct)
        return held

    def on_telemetry(self, topic: str, payload: bytes) -> None:
        """One MQTT message (called by the intake, on the event loop; never blocks)."""
        misuse, event, node = self.telemetry.handle(topic, payload, self.held_gpus)
        for job_id, text in misuse:
            job = self.state.jobs.get(job_id)
            if job is not None and job.state.on_node:
                self._spawn(self._note_misuse(job_id, text))
        if event is not None:
            self._spawn(
                self.drain(None, node, event.index, False, event.describe(), uuid=event.uuid)
            )
        if node in self.state.nodes:
            if time.monotonic() - self._node_published.get(node, 0.0) >= 1.0:
                self.state.publish_node(self.state.nodes[node])
            else:
                self._nodes_dirty.add(node)  # the tick publishes it

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _note_misuse(self, job_id: int, text: str) -> None:
        async with self.state.lock:
            job = self.state.jobs.get(job_id)
            if job is not None:
                await self.state.annotate(job, "gpu-misuse", "telemetry", text)

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
        state = self.state
        async with state.lock:
            node = state.nodes.get(node_name)
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
                if node_name in self.agents.sessions:
                    node.state = NodeState.DRAINING if node.drained else NodeState.UP
                node.reason = (
                    f"drained by {who}: {reason}"
                    if node.drained and reason
                    else (f"drained by {who}" if node.drained else "")
                )
                session = self.agents.sessions.get(node_name)
                if session is not None and node.drained:
                    session.send(DrainNotice(node.reason))
            await state.save_node(node)
            state.publish_node(node)
        self.kick()
        return node
