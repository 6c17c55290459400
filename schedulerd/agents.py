"""The node agents' sessions: registration and reconciliation, the jobs' reports, and the
commands sent down to the agents, all as domain objects (schedulerd/server.py converts
them to and from the wire).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gshare.config import Config
from schedulerd.changes import JobReport, reconcile, report_changes
from schedulerd.errors import Refused
from schedulerd.gang import GangStep, gang_lost, gang_report
from schedulerd.model import GpuInfo, JobPart, JobRecord, NodeRecord, NodeState
from schedulerd.state import ClusterState

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- what agents say


@dataclass(frozen=True, slots=True)
class Registration:
    node: str
    gpus: tuple[GpuInfo, ...]
    cpus: int
    mem_mb: int
    jobs: tuple[JobReport, ...]  # jobs it still runs, and ends not yet acknowledged
    gpu_backend: str = ""
    agent_version: str = ""
    confinement: str = ""  # how the node confines jobs ("" from an older agent)
    address: str = ""  # where the other parts of a multi-node job reach it


# ---------------------------------------------------------------- what they are told


@dataclass(frozen=True, slots=True)
class Registered:
    lease_s: float
    heartbeat_s: float


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    time: float


@dataclass(frozen=True, slots=True)
class Launch:
    job: JobRecord
    script: bytes
    part: JobPart | None = None  # a multi-node job: the part this node starts


@dataclass(frozen=True, slots=True)
class Kill:
    job_id: int
    grace_s: float


@dataclass(frozen=True, slots=True)
class Preempt:
    job_id: int
    signal: int
    grace_s: float


@dataclass(frozen=True, slots=True)
class Forget:
    job_id: int


@dataclass(frozen=True, slots=True)
class DrainNotice:
    reason: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """Ends the session's stream: replaced, or silent past its lease."""


Command = Registered | HeartbeatAck | Launch | Kill | Preempt | Forget | DrainNotice | Hangup


@dataclass(eq=False)
class AgentSession:
    node: str
    outbox: asyncio.Queue[Command] = field(default_factory=asyncio.Queue)
    connected_at: float = 0.0
    peer: str = ""  # where it connected from, for the log

    def send(self, command: Command) -> None:
        self.outbox.put_nowait(command)


class AgentHub:
    """The live sessions, one per node, and what comes up and goes down them."""

    def __init__(
        self,
        config: Config,
        state: ClusterState,
        script_of: Callable[[int], Awaitable[bytes]],
        kick: Callable[[], None],
        lease_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.state = state
        self.script_of = script_of
        self.kick = kick
        self.sessions: dict[str, AgentSession] = {}
        # Leases are kept on a clock that no one can step (a jump of the wall clock must not
        # make every node look silent): node -> when it was last heard, by `lease_clock`.
        self.lease_clock = lease_clock
        self.heard: dict[str, float] = {}

    def schedulable(self) -> list[str]:
        return [
            name
            for name, node in self.state.nodes.items()
            if name in self.sessions and node.state == NodeState.UP and not node.drained
        ]

    # ------------------------------------------------------------ commands

    def _send(self, node: str, command: Command) -> None:
        session = self.sessions.get(node)
        if session is not None:
            session.send(command)

    async def launch(self, job: JobRecord) -> None:
        if job.parts:  # every part at once, or none
            away = [p.node for p in job.parts if p.node not in self.sessions]
            if not away:
                script = await self.script_of(job.job_id)
                for part in job.parts:
                    self._send(part.node, Launch(job, script, part))
                return
            why = f"not started: node {', '.join(away)} is not connected"
            for part in job.parts:
                current = self.state.jobs.get(job.job_id)
                if current is None or not current.state.on_node:
                    break
                await self._gang(current, gang_lost(current, part.node, why, self.state.clock()))
            return
        if job.node in self.sessions:
            self._send(job.node, Launch(job, await self.script_of(job.job_id)))

    def _nodes_of(self, job: JobRecord) -> list[str]:
        """The nodes running a part of the job (its node, for a job on one node)."""
        if job.parts:
            return [p.node for p in job.parts if not p.exited]
        return [job.node]

    def kill(self, job: JobRecord) -> None:
        for node in self._nodes_of(job):
            self._send(node, Kill(job.job_id, self.config.kill_grace_s))

    def preempt(self, job: JobRecord) -> None:
        for node in self._nodes_of(job):
            self._send(node, Preempt(job.job_id, job.preempt_signal, job.grace_s))

    async def _gang(self, job: JobRecord, step: GangStep) -> None:
        """Apply what a part's report or loss changes; stop the parts it says to stop.
        Caller holds the lock."""
        if step.changes:
            await self.state.change(list(step.changes))
        for node in step.stop:
            self._send(node, Kill(job.job_id, self.config.kill_grace_s))

    async def gang_lost(self, job: JobRecord, node: str, why: str) -> None:
        """A part's node is gone: the part counts as ended by it. Caller holds the lock."""
        await self._gang(job, gang_lost(job, node, why, self.state.clock()))

    def hang_up(self, node: str) -> None:
        """End the node's session (it must register again to be heard)."""
        session = self.sessions.pop(node, None)
        if session is not None:
            session.send(Hangup())

    # ------------------------------------------------------------ sessions

    async def connected(self, session: AgentSession, reg: Registration) -> None:
        """A (re)connecting agent: record its node and reconcile the jobs it reports."""
        state = self.state
        async with state.lock:
            old = self.sessions.get(reg.node)
            node = state.nodes.get(reg.node)
            if old is not None and old is not session:
                # Refused while the node's agent is heard as it should be (a heartbeat every
                # heartbeat_s); one silent for two of them is likely gone (its connection
                # died on its side only): the newcomer, holding that node's credential, takes
                # over before the node's own lease runs out and stops its jobs.
                heard = self.lease_clock() - self.heard.get(reg.node, float("-inf"))
                if heard < 2 * self.config.heartbeat_s + 1:
                    log.warning(
                        "refused a second registration of node %s (%s): its agent is "
                        "connected and was heard from %.1fs ago",
                        reg.node,
                        session.peer,
                        heard,
                    )
                    raise Refused(
                        f"node {reg.node} is already connected and alive; a second agent "
                        "for it is refused",
                        "ALREADY_EXISTS",
                    )
                old.send(Hangup())
            self.sessions[reg.node] = session
            self.heard[reg.node] = self.lease_clock()
            try:
                await self._register(session, reg, node)
            except BaseException:
                if self.sessions.get(reg.node) is session:  # no half-made session stays
                    del self.sessions[reg.node]
                raise
        self.kick()

    async def _register(
        self, session: AgentSession, reg: Registration, node: NodeRecord | None
    ) -> None:
        state = self.state
        gpus = list(reg.gpus)
        if node is None:
            node = NodeRecord(reg.node, gpus, reg.cpus, reg.mem_mb)
            state.nodes[reg.node] = node
        node.gpus, node.cpus, node.mem_mb = gpus, reg.cpus, reg.mem_mb
        node.state = NodeState.DRAINING if node.drained else NodeState.UP
        if not node.drained:
            node.reason = ""
        node.last_seen = state.clock()
        node.gpu_backend, node.agent_version = reg.gpu_backend, reg.agent_version
        node.confinement = reg.confinement
        node.address = reg.address
        await state.save_node(node)
        session.send(Registered(self.config.node_lease_s, self.config.heartbeat_s))
        here = state.on_node(reg.node)
        gangs = {j.job_id: j for j in here if j.parts}
        reported = {r.job_id for r in reg.jobs}
        for job in gangs.values():
            part = job.part_on(reg.node)
            if part is not None and not part.exited and job.job_id not in reported:
                why = f"node {reg.node} came back without part {part.rank}"
                await self.gang_lost(job, reg.node, why)
        plan = reconcile(
            reg.node,
            [j for j in here if j.job_id not in gangs],
            [r for r in reg.jobs if r.job_id not in gangs],
            state.clock(),
        )
        for report in reg.jobs:
            if report.job_id in gangs:
                await self._report(reg.node, report)
                now_job = state.jobs.get(report.job_id)
                if now_job is not None and now_job.end_request and not report.exited:
                    session.send(Kill(report.job_id, self.config.kill_grace_s))
        for _, report in plan.updates:
            await self._report(reg.node, report)
        for job_id in plan.still_to_end:
            session.send(Kill(job_id, self.config.kill_grace_s))
        await state.change(list(plan.changes))
        for job_id in plan.forget:
            session.send(Forget(job_id))
        for job_id in plan.kill:
            log.warning("node %s runs job %d that is not its own; killing it", reg.node, job_id)
            session.send(Kill(job_id, self.config.kill_grace_s))
        state.publish_node(node)

    async def disconnected(self, session: AgentSession) -> None:
        async with self.state.lock:
            if self.sessions.get(session.node) is not session:
                return
            del self.sessions[session.node]
            node = self.state.nodes[session.node]
            node.reason = "agent disconnected"
            log.warning("agent of node %s disconnected", session.node)
            self.state.publish_node(node)

    def heartbeat(self, session: AgentSession) -> bool:
        """The agent was heard: renew its node's lease and answer. False for a session that
        is no longer the node's (expired or replaced): it renews nothing."""
        if self.sessions.get(session.node) is not session:
            return False
        self.heard[session.node] = self.lease_clock()
        node = self.state.nodes.get(session.node)
        if node is not None:
            node.last_seen = self.state.clock()  # shown to people: the wall clock
        return True

    def ack(self, session: AgentSession) -> None:
        # the agent counts its lease from our answers, not from its own sends
        session.send(HeartbeatAck(self.state.clock()))

    # ------------------------------------------------------------ reports

    async def job_report(self, session: AgentSession, report: JobReport) -> None:
        async with self.state.lock:
            await self._report(session.node, report)
        if report.exited:
            self.kick()

    async def _report(self, node: str, report: JobReport) -> None:
        state = self.state
        job = state.jobs.get(report.job_id)
        if job is not None and job.parts and job.state.on_node:
            part = job.part_on(node)
            if part is not None:
                await self._gang(job, gang_report(job, node, report, state.clock()))
                if report.exited:
                    self._send(node, Forget(job.job_id))
                    if node in state.nodes:
                        state.publish_node(state.nodes[node])
                return
        if job is None or job.node != node or not job.state.on_node:
            if report.exited:
                self._send(node, Forget(report.job_id))
            return
        changes = report_changes(job, node, report, state.clock())
        if not changes:
            return
        await state.change(changes)
        if report.exited:
            self._send(node, Forget(job.job_id))
            if node in state.nodes:
                state.publish_node(state.nodes[node])

    async def checkpoint(
        self, session: AgentSession, job_id: int, at: float, step: int, size: int
    ) -> None:
        async with self.state.lock:
            job = self.state.jobs.get(job_id)
            if job is None or not job.state.on_node:
                return
            if job.node != session.node and not (job.parts and job.part_on(session.node)):
                return
            why = f"step {step}, {size / (1 << 20):.1f} MB"
            actor = f"agent:{session.node}"
            await self.state.annotate(job, "checkpoint", actor, why, ("last_checkpoint", at))
