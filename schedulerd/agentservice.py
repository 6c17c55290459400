"""The agents' side of the gRPC edge: `AgentService`, one stream per node agent (who may
connect as which node, registration, heartbeats and reports in), and the commands sent
down, domain objects to protobuf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from gshare.address import host_name_ok
from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from schedulerd import agents as ag
from schedulerd.boundary import Ctx, Identities, _guard
from schedulerd.callers import AGENT_NODE_HEADER
from schedulerd.changes import JobReport
from schedulerd.convert import spec_of
from schedulerd.daemon import Scheduler
from schedulerd.gang import hostfile_of, part_environment, part_output
from schedulerd.model import GpuInfo, JobPart, JobRecord

log = logging.getLogger(__name__)


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(self, scheduler: Scheduler, ids: Identities) -> None:
        self.s = scheduler
        self.hub = scheduler.agents
        self.ids = ids

    async def Connect(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Ctx
    ) -> AsyncIterator[pb.SchedulerMessage]:
        if self.ids.caller(context).anonymous:
            # over TCP: the credential is checked before anything is read from the stream
            claimed = dict(context.invocation_metadata() or ()).get(AGENT_NODE_HEADER, "")
            if not isinstance(claimed, str) or not self.ids.may_be_agent(context, claimed):
                log.warning("refused an agent claiming node %r from %s", claimed, context.peer())
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"only a holder of node {claimed!r}'s agent token or certificate may "
                    "connect as that node's agent (and it must name its node in x-gshare-node)",
                )
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("register"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an agent must register first")
        assert first is not None
        reg = first.register
        if not reg.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "register: empty node name")
        if reg.address and not host_name_ok(reg.address):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"register: address {reg.address[:80]!r} is not a host name or an IP address",
            )
        if not self.ids.may_be_agent(context, reg.node):
            log.warning("refused an agent registering as node %r from %s", reg.node, context.peer())
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"only root, the scheduler's user or a holder of node {reg.node!r}'s agent "
                "token or certificate may connect as that node's agent",
            )
        session = ag.AgentSession(reg.node, connected_at=self.s.clock(), peer=context.peer())
        await _guard(context, self.hub.connected(session, registration_of(reg)))
        log.info(
            "agent %s registered: %d GPUs (%s), %d jobs",
            reg.node,
            len(reg.gpus),
            reg.gpu_backend,
            len(reg.jobs),
        )
        reader = asyncio.create_task(self._read(request_iterator, session))
        try:
            while True:
                getter = asyncio.create_task(session.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                command = getter.result()
                if isinstance(command, ag.Hangup):  # replaced, or silent past its lease
                    break
                yield command_pb(command)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await self.hub.disconnected(session)

    async def _read(
        self, requests: AsyncIterator[pb.AgentMessage], session: ag.AgentSession
    ) -> None:
        async for msg in requests:
            kind = msg.WhichOneof("msg")
            if kind == "heartbeat":
                if not self.hub.heartbeat(session):
                    return  # expired or replaced: this stream speaks for the node no more
                self.hub.ack(session)
            elif kind == "checkpoint":
                c = msg.checkpoint
                await self.hub.checkpoint(session, c.job_id, c.time, c.step, c.size)
            elif kind == "job_update":
                if not self.hub.heartbeat(session):
                    return
                await self.hub.job_report(session, report_of(msg.job_update))
            else:
                log.warning("agent %s sent an unexpected %s", session.node, kind)


# ---------------------------------------------------------------- agent messages


MAX_CONFINEMENT_CHARS = 200  # Register.confinement: a short phrase, shown in listings


def report_of(msg: pb.AgentJob) -> JobReport:
    return JobReport(
        job_id=msg.job_id,
        pid=msg.pid,
        start_time=msg.start_time,
        exited=msg.exited,
        exit_code=msg.exit_code,
        exit_signal=msg.exit_signal,
        end_time=msg.end_time,
        error=msg.error,
        killed_after_grace=msg.killed_after_grace,
        lease_lost=msg.lease_lost,
        oom_killed=msg.oom_killed,
    )


def registration_of(reg: pb.Register) -> ag.Registration:
    return ag.Registration(
        node=reg.node,
        gpus=tuple(
            GpuInfo(g.index, g.uuid, g.model, g.memory_mb, list(g.nvlink_peers)) for g in reg.gpus
        ),
        cpus=reg.cpus,
        mem_mb=reg.mem_mb,
        jobs=tuple(report_of(j) for j in reg.jobs),
        gpu_backend=reg.gpu_backend,
        agent_version=reg.agent_version,
        confinement=reg.confinement[:MAX_CONFINEMENT_CHARS],
        address=reg.address,
    )


def gang_launch(job: JobRecord, script: bytes, part: JobPart) -> pb.Launch:
    """A part of a multi-node job: its GPUs, its log, and the rendezvous."""
    return pb.Launch(
        job_id=job.job_id,
        spec=spec_of(job, script, {**job.task_env, **part_environment(job, part)}),
        gpu_indexes=part.gpus,
        gpu_uuids=part.uuids,
        user=job.user,
        uid=job.uid,
        gid=job.gid,
        output_path=part_output(job, part.rank),
        restart_count=job.restarts,
        checkpoint_dir=job.checkpoint_path,
        hostfile=hostfile_of(job),
    )


def command_pb(command: ag.Command) -> pb.SchedulerMessage:
    match command:
        case ag.Registered(lease_s, heartbeat_s):
            return pb.SchedulerMessage(
                registered=pb.Registered(lease_s=lease_s, heartbeat_s=heartbeat_s)
            )
        case ag.HeartbeatAck(at):
            return pb.SchedulerMessage(heartbeat_ack=pb.HeartbeatAck(time=at))
        case ag.Launch(job, script, None):
            return pb.SchedulerMessage(
                launch=pb.Launch(
                    job_id=job.job_id,
                    spec=spec_of(job, script, job.task_env),
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
        case ag.Launch(job, script, part) if part is not None:
            return pb.SchedulerMessage(launch=gang_launch(job, script, part))
        case ag.Kill(job_id, grace_s):
            return pb.SchedulerMessage(kill=pb.KillJob(job_id=job_id, grace_s=grace_s))
        case ag.Preempt(job_id, sig, grace_s):
            return pb.SchedulerMessage(
                preempt=pb.Preempt(job_id=job_id, signal=sig, grace_s=grace_s)
            )
        case ag.Forget(job_id):
            return pb.SchedulerMessage(forget=pb.Forget(job_id=job_id))
        case ag.DrainNotice(reason):
            return pb.SchedulerMessage(drain=pb.Drain(reason=reason))
    raise AssertionError(f"no wire form for {command!r}")
