"""The gRPC edge: protobuf in and out, callers identified, errors mapped to status codes."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from gshare.client import CHANNEL_OPTIONS
from schedulerd.convert import job_to_pb, set_gpu_stats
from schedulerd.daemon import AgentSession, Scheduler
from schedulerd.jobstate import IllegalTransition, JobState
from schedulerd.peercred import ANONYMOUS, Caller, PeerCredFrontDoor
from schedulerd.requests import Refused
from schedulerd.store import DatabaseFull

log = logging.getLogger(__name__)

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext[Any, Any]

AGENT_TOKEN_HEADER = "x-gshare-agent-token"


class Identities:
    """Maps a gRPC context to the caller: Unix peers by SO_PEERCRED, TCP peers anonymous."""

    def __init__(self, door: PeerCredFrontDoor, agent_token: str = "") -> None:
        self.door = door
        self.agent_token = agent_token

    def caller(self, context: Ctx) -> Caller:
        return self.door.caller_for(context.peer()) or ANONYMOUS

    def may_be_agent(self, context: Ctx) -> bool:
        caller = self.caller(context)
        if not caller.anonymous:
            return caller.uid in (0, os.geteuid())
        if not self.agent_token:
            return False
        sent = dict(context.invocation_metadata() or ()).get(AGENT_TOKEN_HEADER, "")
        return isinstance(sent, str) and hmac.compare_digest(sent, self.agent_token)


async def _guard(context: Ctx, call: Awaitable[T]) -> T:
    """Map what a request's work raised to a status with a one-line reason."""
    try:
        return await call
    except Refused as exc:
        await context.abort(grpc.StatusCode[exc.code], str(exc))
    except IllegalTransition as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except DatabaseFull as exc:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("a request failed")
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
    raise AssertionError("unreachable")


INTERNAL_ERROR = "the scheduler failed to serve this request (its log has the details)"

# One limit for every gRPC message, on the scheduler, its clients and its agents
# (gshare.client.MAX_MESSAGE_BYTES); schedulerd.requests sizes jobs to fit it.
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    *CHANNEL_OPTIONS,
]


class _Undecodable:
    """A request whose bytes are not the message the method takes."""


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor


class ErrorBoundary(_Interceptor):
    """The net under every unary handler: bytes that do not decode are INVALID_ARGUMENT,
    and an exception that escapes a handler is a one-line INTERNAL (with its traceback in
    the log), never gRPC's UNKNOWN with the exception's name."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # type: ignore[return-value]  # None: an unknown method
        behaviour: Callable[[object, Ctx], Awaitable[object]] = handler.unary_unary  # type: ignore[assignment]
        decode = handler.request_deserializer
        method = details.method

        def deserialize(data: bytes) -> object:
            try:
                return decode(data) if decode is not None else data
            except Exception:
                return _Undecodable()

        async def guarded(request: object, context: Ctx) -> object:
            if isinstance(request, _Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{method}: the request is not a valid message for this method",
                )
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except DatabaseFull as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except Exception:
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
            raise AssertionError("unreachable")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )


class ClientService(pb_grpc.ClientServiceServicer):
    def __init__(self, scheduler: Scheduler, ids: Identities) -> None:
        self.s = scheduler
        self.ids = ids

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Ctx) -> pb.SubmitJobResponse:
        caller = self.ids.caller(context)
        job_id = await _guard(context, self.s.submit(caller, request.spec))
        return pb.SubmitJobResponse(job_id=job_id)

    async def GetJob(self, request: pb.GetJobRequest, context: Ctx) -> pb.Job:
        job, events = await _guard(context, self.s.get_job(request.job_id))
        msg = self.s.job_pb(job, events, self.s.positions.get(job.job_id, 0))
        if not msg.has_gpu_stats and job.start_time:
            stats = await self.s.db(self.s.store.gpu_stats, job.job_id)
            if stats is not None:
                util_avg, mem_peak, _, idle_gpu_s = stats
                set_gpu_stats(msg, util_avg, 0.0, mem_peak, 0.0, idle_gpu_s)
        return msg

    async def ListJobs(self, request: pb.ListJobsRequest, context: Ctx) -> pb.ListJobsResponse:
        states = [JobState(pb.JobState.Name(s)) for s in request.states]
        jobs = await self.s.list_jobs(
            request.users, states, request.queues, request.include_finished, request.limit
        )
        place = self.s.positions
        return pb.ListJobsResponse(
            jobs=[self.s.job_pb(j, position=place.get(j.job_id, 0)) for j in jobs]
        )

    async def _act(
        self,
        action: Callable[[Caller, int], Awaitable[object]],
        request: pb.JobIdRequest,
        context: Ctx,
    ) -> pb.JobActionResponse:
        caller = self.ids.caller(context)
        if caller.anonymous:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "changing a job needs a known user: use the Unix socket",
            )
        job = await _guard(context, action(caller, request.job_id))
        from schedulerd.model import JobRecord

        assert isinstance(job, JobRecord)
        return pb.JobActionResponse(job=job_to_pb(job))

    async def CancelJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobActionResponse:
        return await self._act(self.s.cancel, request, context)

    async def HoldJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobActionResponse:
        return await self._act(self.s.hold, request, context)

    async def PreemptJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobActionResponse:
        return await self._act(self.s.preempt, request, context)

    async def SetPriority(
        self, request: pb.SetPriorityRequest, context: Ctx
    ) -> pb.JobActionResponse:
        async def action(caller: Caller, job_id: int) -> object:
            return await self.s.set_priority(caller, job_id, request.priority)

        return await self._act(action, pb.JobIdRequest(job_id=request.job_id), context)

    async def ReleaseJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobActionResponse:
        return await self._act(self.s.release, request, context)

    async def ListNodes(self, request: pb.ListNodesRequest, context: Ctx) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(
            nodes=[self.s.node_pb(n) for _, n in sorted(self.s.nodes.items())]
        )

    async def DrainNode(self, request: pb.DrainRequest, context: Ctx) -> pb.Node:
        caller = self.ids.caller(context)
        if caller.anonymous:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "draining needs a known user: use the Unix socket",
            )
        node = await _guard(
            context,
            self.s.drain(caller, request.node, request.gpu, request.resume, request.reason),
        )
        return self.s.node_pb(node)

    async def GetUsage(self, request: pb.GetUsageRequest, context: Ctx) -> pb.GetUsageResponse:
        standings, gpus = self.s.usage_report()
        idle: dict[tuple[str, ...], float] = {}
        for path, st in standings.standings.items():
            if st.is_user:
                seconds = self.s.idle_usage.get(path[-1], 0.0)
                for depth in range(1, len(path) + 1):
                    idle[path[:depth]] = idle.get(path[:depth], 0.0) + seconds
        rows = []
        for path, s in sorted(standings.standings.items()):
            running, pending = gpus.get(path, [0, 0])
            user = path[-1] if s.is_user else None
            rows.append(
                pb.AccountUsage(
                    path=list(path),
                    is_user=user is not None,
                    shares=s.raw_shares,
                    share=s.share,
                    usage=s.usage,
                    usage_share=s.usage_share,
                    level_fairshare=s.level_fairshare
                    if s.level_fairshare != float("inf")
                    else -1.0,
                    fairshare_factor=standings.factors.get(user, 0.0) if user else 0.0,
                    running_gpus=running,
                    pending_gpus=pending,
                    idle_gpu_s=idle.get(path, 0.0),
                )
            )
        total = sum(len(n.gpus) for n in self.s.nodes.values())
        return pb.GetUsageResponse(
            accounts=rows, half_life_s=self.s.config.half_life_s, cluster_gpus=total
        )

    async def WatchCluster(
        self, request: pb.WatchClusterRequest, context: Ctx
    ) -> AsyncIterator[pb.ClusterChange]:
        queue: asyncio.Queue[pb.ClusterChange | None] = asyncio.Queue(maxsize=10_000)
        self.s.watchers.add(queue)
        try:
            if request.initial:
                for node in list(self.s.nodes.values()):
                    yield pb.ClusterChange(node=self.s.node_pb(node))
                for job in list(self.s.jobs.values()):
                    yield pb.ClusterChange(job=job_to_pb(job))
            yield pb.ClusterChange(synced=True)
            while True:
                change = await queue.get()
                if change is None:
                    return
                yield change
        finally:
            self.s.watchers.discard(queue)


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(self, scheduler: Scheduler, ids: Identities) -> None:
        self.s = scheduler
        self.ids = ids

    async def Connect(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Ctx
    ) -> AsyncIterator[pb.SchedulerMessage]:
        if not self.ids.may_be_agent(context):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "only root, the scheduler's user or a holder of the agent token "
                "may connect as an agent",
            )
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("register"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an agent must register first")
        assert first is not None
        reg = first.register
        if not reg.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "register: empty node name")
        session = AgentSession(reg.node, connected_at=self.s.clock())
        await self.s.agent_connected(session, reg)
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
                msg = getter.result()
                if msg.WhichOneof("msg") is None:  # replaced by a newer connection
                    break
                yield msg
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await self.s.agent_disconnected(session)

    async def _read(self, requests: AsyncIterator[pb.AgentMessage], session: AgentSession) -> None:
        async for msg in requests:
            kind = msg.WhichOneof("msg")
            if kind == "heartbeat":
                self.s.heartbeat(session)
                # the agent counts its lease from our answers, not from its own sends
                ack = pb.HeartbeatAck(time=self.s.clock())
                session.send(pb.SchedulerMessage(heartbeat_ack=ack))
            elif kind == "checkpoint":
                await self.s.agent_checkpoint(session, msg.checkpoint)
            elif kind == "job_update":
                self.s.heartbeat(session)
                await self.s.agent_job_update(session, msg.job_update)
            else:
                log.warning("agent %s sent an unexpected %s", session.node, kind)
