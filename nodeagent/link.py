"""The agent's one long-lived stream to the scheduler, re-established with backoff.

The node's lease (nodeagent.lease) is renewed from what the scheduler sends, never from
what the agent sends: each HeartbeatAck renews it from when the heartbeat it answers was
sent (the scheduler heard the node no earlier than that, so the node's deadline is never
later than the scheduler's), Registered from when Register was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
import time
from collections import deque
from collections.abc import AsyncIterator

import grpc

from gshare import __version__
from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from gshare.client import CHANNEL_OPTIONS
from gshare.limits import MAX_CPUS, MAX_MEM_MB
from nodeagent.gpus import GpuDevice
from nodeagent.lease import Lease
from nodeagent.runner import JobProcess, JobRunner, LaunchRequest

log = logging.getLogger(__name__)

AGENT_TOKEN_HEADER = "x-gshare-agent-token"
AGENT_NODE_HEADER = "x-gshare-node"  # the node it registers as, checked before it is read


def agent_job(proc: JobProcess) -> pb.AgentJob:
    return pb.AgentJob(
        job_id=proc.job_id,
        pid=proc.pid,
        start_time=proc.start_time,
        exited=proc.exited,
        exit_code=proc.exit_code,
        exit_signal=proc.exit_signal,
        end_time=proc.end_time,
        error=proc.error,
        killed_after_grace=proc.killed_after_grace,
        lease_lost=proc.lease_lost,
        oom_killed=proc.oom_kills > 0,
    )


def _seconds(value: float, default: float) -> float:
    """A duration from the wire: finite, positive, at most a day; else `default`."""
    return value if math.isfinite(value) and 0 < value <= 86400 else default


class SchedulerLink:
    def __init__(
        self,
        target: str,
        node: str,
        gpus: list[GpuDevice],
        backend: str,
        cpus: int,
        mem_mb: int,
        launcher: JobRunner,
        lease: Lease,
        token: str = "",
        confinement: str = "",
        credentials: grpc.ChannelCredentials | None = None,
        address: str = "",
    ) -> None:
        self.target = target
        self.address = address  # where the other parts of a multi-node job reach this node
        self.node = node
        self.gpus = gpus
        self.backend = backend
        self.cpus = cpus
        self.mem_mb = mem_mb
        self.launcher = launcher
        self.token = token
        self.confinement = confinement
        self.credentials = credentials  # TLS: the scheduler's CA, and this node's certificate
        self.lease = lease
        self.heartbeat_s = 5.0
        self.lease_s = 60.0
        self._hello_at = 0.0  # when this connection's Register was sent (lease clock)
        self._beats_sent: deque[float] = deque(maxlen=10_000)  # heartbeats not yet answered
        self.connected = asyncio.Event()
        self._outbox: asyncio.Queue[pb.AgentMessage] | None = None
        self.registered_once = asyncio.Event()

    def report_checkpoint(self, job_id: int, data: dict[str, float]) -> None:
        if self._outbox is not None:
            report = pb.CheckpointReport(
                job_id=job_id, time=data["time"], size=int(data["size"]), step=int(data["step"])
            )
            self._outbox.put_nowait(pb.AgentMessage(checkpoint=report))

    def report(self, proc: JobProcess) -> None:
        """A job started or ended: tell the scheduler now if connected (else at re-register)."""
        if self._outbox is not None:
            self._outbox.put_nowait(pb.AgentMessage(job_update=agent_job(proc)))

    def _register(self) -> pb.AgentMessage:
        return pb.AgentMessage(
            register=pb.Register(
                node=self.node,
                gpus=[
                    pb.Gpu(
                        index=g.index,
                        uuid=g.uuid,
                        model=g.model,
                        memory_mb=g.memory_mb,
                        nvlink_peers=list(g.nvlink_peers),
                    )
                    for g in self.gpus
                ],
                cpus=self.cpus,
                mem_mb=self.mem_mb,
                jobs=[agent_job(p) for p in self.launcher.jobs.values()],
                gpu_backend=self.backend,
                agent_version=__version__,
                confinement=self.confinement,
                address=self.address,
            )
        )

    async def _requests(
        self, outbox: asyncio.Queue[pb.AgentMessage]
    ) -> AsyncIterator[pb.AgentMessage]:
        while True:
            yield await outbox.get()

    async def _heartbeats(self, outbox: asyncio.Queue[pb.AgentMessage]) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self._beats_sent.append(self.lease.clock())
            outbox.put_nowait(pb.AgentMessage(heartbeat=pb.Heartbeat(time=time.time())))

    def _renew(self, heard_at: float) -> None:
        try:
            self.lease.renew(heard_at, self.lease_s, self.heartbeat_s)
        except OSError as exc:  # the shims will stop the jobs when it runs out: say why
            log.error("cannot renew the node's lease in %s: %s", self.lease.path, exc)

    def _handle(self, msg: pb.SchedulerMessage) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "registered":
            reg = msg.registered
            self.lease_s = _seconds(reg.lease_s, self.lease_s)
            self.heartbeat_s = min(_seconds(reg.heartbeat_s, self.heartbeat_s), self.lease_s / 2)
            self._renew(self._hello_at)
        elif kind == "heartbeat_ack":
            if self._beats_sent:
                self._renew(self._beats_sent.popleft())
        elif kind == "launch":
            launch = msg.launch
            spec = launch.spec
            proc = self.launcher.launch(
                LaunchRequest(
                    job_id=launch.job_id,
                    script=spec.script,
                    args=list(spec.args),
                    env=dict(spec.env),
                    workdir=spec.workdir,
                    output_path=launch.output_path,
                    user=launch.user,
                    uid=launch.uid,
                    gid=launch.gid,
                    gpu_indexes=list(launch.gpu_indexes),
                    gpu_uuids=list(launch.gpu_uuids),
                    node=self.node,
                    restart_count=launch.restart_count,
                    checkpoint_dir=launch.checkpoint_dir,
                    preempt_signal=spec.preempt_signal
                    if 0 < spec.preempt_signal < signal.NSIG
                    else signal.SIGUSR1,
                    grace_s=_seconds(spec.grace_s, 0.0),
                    mem_mb=spec.mem_mb if 0 < spec.mem_mb <= MAX_MEM_MB else 0,
                    cpus=spec.cpus if 0 < spec.cpus <= MAX_CPUS else 0,
                    hostfile=launch.hostfile,
                )
            )
            if not proc.exited:
                log.info("job %d: launched on GPUs %s", launch.job_id, list(launch.gpu_indexes))
        elif kind == "kill":
            log.info("job %d: kill (grace %.0fs)", msg.kill.job_id, msg.kill.grace_s)
            self.launcher.kill(msg.kill.job_id, msg.kill.grace_s)
        elif kind == "preempt":
            p = msg.preempt
            log.info("job %d: preempt (signal %d, grace %.0fs)", p.job_id, p.signal, p.grace_s)
            self.launcher.preempt(p.job_id, p.signal, p.grace_s)
        elif kind == "signal":
            self.launcher.signal(msg.signal.job_id, msg.signal.signal)
        elif kind == "forget":
            self.launcher.forget(msg.forget.job_id)
        elif kind == "drain":
            log.warning("scheduler drained this node: %s", msg.drain.reason)

    async def run_once(self) -> None:
        # the node it registers as goes up front, so a listener that cannot take it (a
        # token or a certificate for another node) refuses before reading the stream
        metadata: tuple[tuple[str, str], ...] = ((AGENT_NODE_HEADER, self.node),)
        if self.token:
            metadata += ((AGENT_TOKEN_HEADER, self.token),)
        channel = (
            grpc.aio.secure_channel(self.target, self.credentials, options=CHANNEL_OPTIONS)
            if self.credentials is not None
            else grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        )
        async with channel:
            stub = pb_grpc.AgentServiceStub(channel)
            outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
            self._beats_sent.clear()
            self._hello_at = self.lease.clock()
            outbox.put_nowait(self._register())
            call = stub.Connect(self._requests(outbox), metadata=metadata)
            beats: asyncio.Task[None] | None = None
            self._outbox = outbox
            try:
                async for msg in call:
                    self._handle(msg)
                    if msg.WhichOneof("msg") == "registered" and beats is None:
                        # heartbeats at the pace the scheduler asked for, from now on
                        beats = asyncio.create_task(self._heartbeats(outbox))
                        self.connected.set()
                        self.registered_once.set()
                        log.info(
                            "registered with the scheduler at %s (lease %gs, heartbeat %gs)",
                            self.target,
                            self.lease_s,
                            self.heartbeat_s,
                        )
            finally:
                self._outbox = None
                self.connected.clear()
                if beats is not None:
                    beats.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beats
                call.cancel()

    async def run(self) -> None:
        delay = 0.2
        while True:
            started = time.monotonic()
            try:
                await self.run_once()
                log.warning("the scheduler closed the stream; reconnecting")
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    log.error("the scheduler refused this agent: %s", exc.details())
                else:
                    log.warning("no scheduler at %s (%s); retrying", self.target, exc.code().name)
            if time.monotonic() - started > 30:
                delay = 0.2  # it had been up for a while: come back quickly
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 10.0)
