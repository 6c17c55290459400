"""The clients' side of the gRPC edge: `ClientService`, protobuf in and out, callers
identified, errors mapped to status codes (schedulerd/boundary.py). The agents' side is
schedulerd/agentservice.py; the WatchCluster streams, schedulerd/watchers.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping

import grpc

from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from gshare.arrays import JobRef, parse_job_ref
from gshare.client import MAX_MESSAGE_BYTES
from policies.quotareport import AccountStanding
from schedulerd.boundary import Ctx, Identities, _guard
from schedulerd.convert import job_to_pb, set_gpu_stats
from schedulerd.daemon import Scheduler
from schedulerd.errors import Refused
from schedulerd.jobstate import JobState
from schedulerd.model import EventRecord, JobRecord
from schedulerd.peercred import Caller
from schedulerd.requests import array_of, check_pending_cap, dependency_of, tasks_of, validate
from schedulerd.watchers import Watchers, node_pb

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


MAX_LIST_LIMIT = 100_000  # ListJobs' limit: how many ended jobs one listing may read


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
