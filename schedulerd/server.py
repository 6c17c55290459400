"""The gRPC edge: protobuf in and out, callers identified, errors mapped to status codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from gshare.address import host_name_ok
from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from gshare.arrays import JobRef, parse_job_ref
from gshare.client import MAX_MESSAGE_BYTES
from gshare.limits import MAX_SPEC_BYTES, SCRIPT_CEILING
from policies.quotareport import AccountStanding
from schedulerd import agents as ag
from schedulerd.callers import AGENT_NODE_HEADER
from schedulerd.changes import JobReport
from schedulerd.convert import job_to_pb, node_to_pb, set_gpu_stats, spec_of
from schedulerd.daemon import Scheduler
from schedulerd.errors import Refused
from schedulerd.gang import hostfile_of, part_environment, part_output
from schedulerd.jobstate import IllegalTransition, JobState
from schedulerd.model import EventRecord, GpuInfo, JobPart, JobRecord, NodeRecord
from schedulerd.peercred import Caller
from schedulerd.requests import array_of, check_pending_cap, dependency_of, tasks_of, validate
from schedulerd.store import DatabaseFull

log = logging.getLogger(__name__)

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext[Any, Any]


class Identities(Protocol):
    """Who calls on one listener (schedulerd.callers: Unix socket, TCP, agents' TLS)."""

    def caller(self, context: Ctx) -> Caller: ...

    def may_be_agent(self, context: Ctx, node: str) -> bool: ...


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
# What the scheduler takes in is smaller: the largest request is a submit (a script of at
# most SCRIPT_CEILING and a spec of at most MAX_SPEC_BYTES), so no caller, anonymous ones
# over TCP included, makes it decode more than this.
RECEIVE_BYTES = SCRIPT_CEILING + 4 * MAX_SPEC_BYTES
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", RECEIVE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
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


# However many jobs there are and however large each one's listed part, a listing stays
# well inside what every client takes (MAX_MESSAGE_BYTES): past this, it is cut.
LIST_BUDGET = MAX_MESSAGE_BYTES // 2


MAX_ACTED_LISTED = 1000  # jobs an action on an array lists back


def _ref(target: str, max_size: int) -> JobRef:
    try:
        return parse_job_ref(target, max_size)
    except ValueError as exc:
        raise Refused(str(exc)) from None


def fit_listing(jobs: list[pb.Job], budget: int) -> tuple[list[pb.Job], bool]:
    """The newest of `jobs` (in id order) whose wire size fits `budget`, and whether any
    were left out: one user's many large jobs cannot make `gshare queue` fail for all."""
    kept: list[pb.Job] = []
    size = 0
    for job in reversed(jobs):
        size += job.ByteSize() + 8  # the field's tag and length
        if size > budget:
            return kept[::-1], True
        kept.append(job)
    return kept[::-1], False


MAX_WATCHERS = 512  # WatchCluster streams at once: each holds a queue of up to 10,000
WATCHERS_PER_CALLER = 16  # streams one uid (or one reader certificate) may hold at once
WATCHERS_RESERVED = 32  # of MAX_WATCHERS, kept for root and admins
MAX_LIST_LIMIT = 100_000  # ListJobs' limit: how many ended jobs one listing may read


class Watchers:
    """The WatchCluster streams: each is told of every job and node change."""

    def __init__(
        self,
        scheduler: Scheduler,
        most: int = MAX_WATCHERS,
        per_caller: int = WATCHERS_PER_CALLER,
        reserved: int = WATCHERS_RESERVED,
    ) -> None:
        self.s = scheduler
        self.most = most
        self.per_caller = per_caller
        self.reserved = reserved
        self.queues: set[asyncio.Queue[pb.ClusterChange | None]] = set()
        self.holders: dict[asyncio.Queue[pb.ClusterChange | None], str] = {}
        self.held: dict[str, int] = {}  # streams per caller
        scheduler.state.job_listeners.append(self.job_changed)
        scheduler.state.node_listeners.append(self.node_changed)

    def join(
        self, caller: Caller | None = None, privileged: bool = False
    ) -> asyncio.Queue[pb.ClusterChange | None]:
        """A new stream's queue, so readers (anonymous ones over TCP too) cannot hold the
        scheduler's memory without bound: at most `per_caller` streams per uid (or reader
        certificate), and the last `reserved` of `most` kept for root and admins."""
        who = _watcher(caller)
        if len(self.queues) >= self.most:
            raise Refused(
                f"the scheduler serves {self.most} watch streams already; try again later",
                "RESOURCE_EXHAUSTED",
            )
        if not privileged:
            if self.held.get(who, 0) >= self.per_caller:
                raise Refused(
                    f"{who} holds {self.per_caller} watch streams already (the most one "
                    "caller may); close one first",
                    "RESOURCE_EXHAUSTED",
                )
            if len(self.queues) >= self.most - self.reserved:
                raise Refused(
                    f"the scheduler serves {len(self.queues)} watch streams already (the "
                    f"last {self.reserved} are kept for root and admins); try again later",
                    "RESOURCE_EXHAUSTED",
                )
        queue: asyncio.Queue[pb.ClusterChange | None] = asyncio.Queue(maxsize=10_000)
        self.queues.add(queue)
        self.holders[queue] = who
        self.held[who] = self.held.get(who, 0) + 1
        return queue

    def leave(self, queue: asyncio.Queue[pb.ClusterChange | None]) -> None:
        """A stream ended: its place (and its caller's) is free."""
        self.queues.discard(queue)
        who = self.holders.pop(queue, None)
        if who is not None:
            self.held[who] -= 1
            if not self.held[who]:
                del self.held[who]

    def job_changed(self, job: JobRecord) -> None:
        if self.queues:
            self._publish(pb.ClusterChange(job=job_to_pb(job)))

    def node_changed(self, node: NodeRecord) -> None:
        if self.queues:
            self._publish(pb.ClusterChange(node=node_pb(self.s, node)))

    def _publish(self, change: pb.ClusterChange) -> None:
        for q in list(self.queues):
            try:
                q.put_nowait(change)
            except asyncio.QueueFull:
                # a watcher that cannot keep up is dropped; it reconnects and resyncs
                self.queues.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                q.put_nowait(None)

    def close(self) -> None:
        for q in list(self.queues):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)


def _watcher(caller: Caller | None) -> str:
    """Whose a watch stream is: a uid (Unix socket, MUNGE), else a reader certificate."""
    if caller is None:
        return "anonymous"
    return f"uid {caller.uid}" if caller.uid >= 0 else caller.user


def node_pb(s: Scheduler, node: NodeRecord) -> pb.Node:
    return node_to_pb(node, s.state.busy_gpus(node.name), s.telemetry)


def job_pb(
    s: Scheduler, job: JobRecord, events: list[EventRecord] | None = None, position: int = 0
) -> pb.Job:
    msg = job_to_pb(job, events, position)
    stats = s.telemetry.jobs.get(job.job_id)
    if stats is not None and job.state.on_node:
        set_gpu_stats(
            msg,
            stats.util_avg,
            stats.util_current,
            stats.mem_peak_mb,
            s.telemetry.idle_for(job.job_id),
            stats.idle_gpu_s,
            s.telemetry.warnings_of(job.node, job.job_id),
        )
    return msg


def _quota_text(quota: Mapping[str, int]) -> str:
    if set(quota) == {""}:
        return str(quota[""])
    return " ".join(f"{kind or '*'}={count}" for kind, count in sorted(quota.items()))


def _set_quota(row: pb.AccountUsage, standing: AccountStanding) -> None:
    row.guaranteed = _quota_text(standing.guaranteed)
    row.limit = _quota_text(standing.limit)
    row.lend = standing.lend
    row.borrowing = standing.borrowing
    row.borrows_from.extend(standing.borrows_from)
    row.reclaim_in_s = standing.reclaim_in_s
    row.reclaim_from.extend(standing.reclaim_from)
    row.held_gpus = standing.holds


class ClientService(pb_grpc.ClientServiceServicer):
    def __init__(self, scheduler: Scheduler, ids: Identities, watchers: Watchers) -> None:
        self.s = scheduler
        self.v = scheduler.verbs
        self.ids = ids
        self.watchers = watchers
        self._submitting: Counter[str] = Counter()

    async def _submit(self, caller: Caller, request: pb.SubmitJobRequest) -> tuple[int, int]:
        if caller.anonymous:
            raise Refused(
                "submitting needs a known user: the scheduler's Unix socket, or a MUNGE "
                "credential over TCP",
                "PERMISSION_DENIED",
            )
        spec = request.spec
        record = validate(
            caller,
            spec,
            self.s.config,
            self.s.state.nodes,
            self.v.is_admin,
            self.s.clock(),
        )
        array = array_of(spec, self.s.config.max_array_size)
        dependency = dependency_of(spec)
        tasks = tasks_of(record, array, spec) if array is not None else None
        count = len(tasks) if tasks else 1  # an array's tasks wait each as a job

        async def submit() -> tuple[int, int]:
            job_id = await self.v.submit(
                record, spec.script, request.idempotency_key, tasks, dependency
            )
            return job_id, len(tasks) if tasks else 0

        if not self._capped(caller.user):
            return await submit()
        # max_pending_jobs: the jobs it has waiting, and its submits not yet stored
        key = request.idempotency_key
        mine = [j for j in self.s.state.jobs.values() if j.uid == caller.uid]
        if key and any(j.submit_key == key for j in mine):
            # a retried submit: its job is already queued, and is answered, never refused
            return await submit()
        queued = self._submitting[caller.user] + sum(
            1 for j in mine if j.state in (JobState.PENDING, JobState.HELD)
        )
        check_pending_cap(caller.user, self.s.config, queued, count)
        self._submitting[caller.user] += count
        try:
            return await submit()
        finally:
            self._submitting[caller.user] -= count

    def _capped(self, user: str) -> bool:
        config = self.s.config
        return bool(dict(config.users).get(user, config.user_limits).max_pending_jobs)

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Ctx) -> pb.SubmitJobResponse:
        caller = self.ids.caller(context)
        job_id, count = await _guard(context, self._submit(caller, request))
        return pb.SubmitJobResponse(job_id=job_id, task_count=count)

    async def _job_id(self, job_id: int, target: str) -> int:
        if not target:
            return job_id
        return await self.v.job_of(_ref(target, self.s.config.max_array_size))

    async def GetJob(self, request: pb.GetJobRequest, context: Ctx) -> pb.Job:
        job_id = await _guard(context, self._job_id(request.job_id, request.target))
        job, events = await _guard(context, self.v.get_job(job_id))
        msg = job_pb(self.s, job, events, self.s.cycle.positions.get(job.job_id, 0))
        place = self.s.cycle.team_place(job) if job.state is JobState.PENDING else ""
        if place and msg.reason:
            msg.reason = f"{msg.reason}; {place}"
        if not msg.has_gpu_stats and job.start_time:
            stats = await self.s.db(self.s.store.gpu_stats, job.job_id)
            if stats is not None:
                util_avg, mem_peak, _, idle_gpu_s = stats
                set_gpu_stats(msg, util_avg, 0.0, mem_peak, 0.0, idle_gpu_s)
        return msg

    async def ListJobs(self, request: pb.ListJobsRequest, context: Ctx) -> pb.ListJobsResponse:
        jobs = await _guard(context, self._list(request))
        place = self.s.cycle.positions
        listed, truncated = fit_listing(
            [job_pb(self.s, j, position=place.get(j.job_id, 0)) for j in jobs], LIST_BUDGET
        )
        return pb.ListJobsResponse(jobs=listed, truncated=truncated)

    async def _list(self, request: pb.ListJobsRequest) -> list[JobRecord]:
        states = []
        for number in request.states:
            name = pb.JobState.Name(number) if number in pb.JobState.values() else ""
            if name not in JobState.__members__:
                raise Refused(f"states: {number} is not a job state")
            states.append(JobState(name))
        if not 0 <= request.limit <= MAX_LIST_LIMIT:
            raise Refused(f"limit: {request.limit} is not between 0 and {MAX_LIST_LIMIT}")
        if request.array_job_id:
            return await self.v.array_jobs(request.array_job_id)
        return await self.v.list_jobs(
            request.users, states, request.queues, request.include_finished, request.limit
        )

    async def _act(
        self, verb: str, job_id: int, target: str, context: Ctx, priority: int = 0
    ) -> pb.JobActionResponse:
        caller = self.ids.caller(context)
        if caller.anonymous:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "changing a job needs a known user: the Unix socket, or a MUNGE credential "
                "over TCP",
            )
        # job_id names one job; only a target names a whole array or some of its tasks
        max_size = self.s.config.max_array_size

        async def act() -> tuple[list[JobRecord], int]:
            ref = _ref(target, max_size) if target else JobRef(job_id)
            return await self.v.act(caller, ref, verb, priority, whole=bool(target))

        jobs, skipped = await _guard(context, act())
        if not jobs and skipped:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{target or job_id}: none of its {skipped} tasks could be acted on (ended, "
                "or not in the state it needs)",
            )
        listed = [job_to_pb(j) for j in jobs[:MAX_ACTED_LISTED]]
        return pb.JobActionResponse(
            job=listed[0] if listed else None, jobs=listed, skipped=skipped, count=len(jobs)
        )

    async def CancelJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobActionResponse:
        return await self._act("cancel", request.job_id, request.target, context)

    async def HoldJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobActionResponse:
        return await self._act("hold", request.job_id, request.target, context)

    async def PreemptJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobActionResponse:
        return await self._act("preempt", request.job_id, request.target, context)

    async def SetPriority(
        self, request: pb.SetPriorityRequest, context: Ctx
    ) -> pb.JobActionResponse:
        return await self._act(
            "priority", request.job_id, request.target, context, request.priority
        )

    async def ReleaseJob(self, request: pb.JobIdRequest, context: Ctx) -> pb.JobActionResponse:
        return await self._act("release", request.job_id, request.target, context)

    async def ListNodes(self, request: pb.ListNodesRequest, context: Ctx) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(
            nodes=[node_pb(self.s, n) for _, n in sorted(self.s.state.nodes.items())]
        )

    async def DrainNode(self, request: pb.DrainRequest, context: Ctx) -> pb.Node:
        caller = self.ids.caller(context)
        if caller.anonymous:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "draining needs a known user: the Unix socket, or a MUNGE credential over TCP",
            )
        node = await _guard(
            context,
            self.s.upkeep.drain(caller, request.node, request.gpu, request.resume, request.reason),
        )
        return node_pb(self.s, node)

    async def GetUsage(self, request: pb.GetUsageRequest, context: Ctx) -> pb.GetUsageResponse:
        standings, gpus = self.v.usage_report()
        idle: dict[tuple[str, ...], float] = {}
        for path, st in standings.standings.items():
            if st.is_user:
                seconds = self.s.ledger.idle_usage.get(path[-1], 0.0)
                for depth in range(1, len(path) + 1):
                    idle[path[:depth]] = idle.get(path[:depth], 0.0) + seconds
        quotas, warnings = self.v.quota_report()
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
            quota = quotas.get(path[0]) if len(path) == 1 else None
            if quota is not None:
                _set_quota(rows[-1], quota)
        total = sum(len(n.gpus) for n in self.s.state.nodes.values())
        return pb.GetUsageResponse(
            accounts=rows,
            half_life_s=self.s.config.half_life_s,
            cluster_gpus=total,
            warnings=warnings,
            reclaim_after_s=self.s.config.reclaim_after_s,
        )

    async def WatchCluster(
        self, request: pb.WatchClusterRequest, context: Ctx
    ) -> AsyncIterator[pb.ClusterChange]:
        try:
            caller = self.ids.caller(context)
            queue = self.watchers.join(caller, self.v.is_admin(caller))
        except Refused as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            if request.initial:
                for node in list(self.s.state.nodes.values()):
                    yield pb.ClusterChange(node=node_pb(self.s, node))
                for job in list(self.s.state.jobs.values()):
                    yield pb.ClusterChange(job=job_to_pb(job))
            yield pb.ClusterChange(synced=True)
            while True:
                change = await queue.get()
                if change is None:
                    return
                yield change
        finally:
            self.watchers.leave(queue)


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
