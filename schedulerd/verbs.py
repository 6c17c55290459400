"""What clients ask of the scheduler, on domain objects: submit (group-committed), read,
cancel, hold, release, reprioritise, preempt, and the fair-share standings.

Who may do what: a job's owner, root, and the configured admins manage a job; only
root and admins may raise a priority above 0 or drain nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gshare.arrays import Dependency, JobRef, parse_array
from gshare.config import Config
from gshare.limits import MAX_PRIORITY
from policies import FairTree, fair_tree
from policies.quotareport import AccountStanding, quota_report
from schedulerd.agents import AgentHub
from schedulerd.changes import end_request_change, preempt_change
from schedulerd.cycle import Cycle
from schedulerd.errors import Refused
from schedulerd.jobstate import JobState
from schedulerd.ledger import Ledger
from schedulerd.model import EventRecord, JobRecord
from schedulerd.peercred import Caller
from schedulerd.state import ClusterState
from schedulerd.store import Change, NewJob, Store

log = logging.getLogger(__name__)

MAX_SUBMIT_KEY = 128
MAX_BATCH = 1024


def cancel_requested(job: JobRecord, actor: str, why: str) -> Change:
    return end_request_change(job, JobState.CANCELLED, "cancel_requested", actor, why)


class ClientVerbs:
    def __init__(
        self,
        config: Config,
        state: ClusterState,
        store: Store,
        db: Callable[..., Awaitable[Any]],
        agents: AgentHub,
        ledger: Ledger,
        cycle: Cycle,
        accrue: Callable[[float], None],
        kick: Callable[[], None],
        cluster_id: Callable[[], str],
    ) -> None:
        self.config = config
        self.state = state
        self.store = store
        self.db = db
        self.agents = agents
        self.ledger = ledger
        self.cycle = cycle
        self.accrue = accrue
        self.kick = kick
        self.cluster_id = cluster_id
        self._submits: asyncio.Queue[tuple[NewJob, asyncio.Future[int]]] = asyncio.Queue()

    def is_admin(self, caller: Caller) -> bool:
        return caller.uid == 0 or caller.user in self.config.admins

    def _can_manage(self, caller: Caller, job: JobRecord) -> bool:
        return caller.uid == 0 or caller.uid == job.uid or caller.user in self.config.admins

    # ------------------------------------------------------------ submit

    async def submit(
        self,
        record: JobRecord,
        script: bytes,
        submit_key: str = "",
        tasks: list[JobRecord] | None = None,
        dependency: Dependency | None = None,
    ) -> int:
        """Queue a validated job, or an array (`tasks`, the first being `record`), in one
        transaction; its id once committed. A `submit_key` its owner already used (a
        retried submit) returns the job it made then, and makes no other."""
        if len(submit_key) > MAX_SUBMIT_KEY or not submit_key.isprintable():
            raise Refused(f"idempotency_key: must be at most {MAX_SUBMIT_KEY} printable characters")
        records = tasks or [record]
        if dependency is not None:
            text = await self._resolve(dependency)
            for r in records:
                r.dependency = text
        # default paths carry the cluster's id: a new cluster's job 1 is not an old one's
        cluster = self.cluster_id()
        output = (record.output or JobRecord.DEFAULT_OUTPUT).replace("%C", cluster)
        if record.nodes > 1 and "%n" not in output:  # a log per part: %n is its node rank
            stem, dot, ext = output.rpartition(".")
            output = f"{stem}.%n.{ext}" if dot and "/" not in ext else f"{output}.%n"
        checkpoint = (record.checkpoint_dir or JobRecord.DEFAULT_CHECKPOINT_DIR).replace(
            "%C", cluster
        )
        for r in records:
            r.submit_key = ""
            r.output, r.checkpoint_dir = output, checkpoint
        first = records[0]
        first.submit_key = submit_key
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._submits.put_nowait((NewJob(first, script, tuple(records[1:])), future))
        return await future

    async def _resolve(self, dependency: Dependency) -> str:
        """The dependency, as written, once every id in it is checked to be a job (or a
        task of an array) that exists: a job can only wait on jobs submitted before it, so
        no cycle can form. The gates keep the outcomes of those jobs from now on."""
        plain = {t.job_id for t in dependency.targets if t.task is None}
        found = {i for i in plain if i in self.state.jobs}
        if plain - found:
            found |= await self.db(self.store.exists, plain - found)
        for job_id in sorted(plain - found):
            raise Refused(
                f"--dependency: job {job_id} does not exist (a job can only wait on jobs "
                "submitted before it, so no cycle can form)"
            )
        for t in dependency.targets:
            if (
                t.task is not None
                and await self.db(self.store.task_job_id, t.job_id, t.task) is None
            ):
                raise Refused(
                    f"--dependency: {t} does not exist (no array {t.job_id} with a task {t.task})"
                )
        ids = {t.job_id for t in dependency.targets}
        gates = self.cycle.gates
        gates.watch(ids)  # ends from now on are heard; the ones before are read back
        gates.outcomes(await self.db(self.store.outcomes, ids))
        return str(dependency)

    async def submit_loop(self) -> None:
        """Group commit: every submission that arrived while the last batch was being written
        goes into the next transaction, and each is acknowledged only after its commit.

        If a batch's transaction fails, nothing of it was written: each of its submissions is
        then written alone, so a bad one fails by itself and never takes the others with it.
        """
        Batch = list[tuple[NewJob, asyncio.Future[int]]]

        async def commit(batch: Batch) -> None:
            now = self.state.clock()
            ids = await self.db(self.store.submit_many, [n for n, _ in batch], now)
            # stored: from here on nothing may send the batch to be written again
            try:
                admit(batch, ids, now)
            except Exception:
                log.exception("a stored batch of %d submissions could not be admitted", len(batch))

        def admit(batch: Batch, ids: list[tuple[int, bool]], now: float) -> None:
            for (new, future), (job_id, created) in zip(batch, ids, strict=True):
                if created:  # else a retried submit: its job is already queued
                    record = new.record  # made by validate() for this submission alone
                    record.job_id, record.submit_time = job_id, now
                    self.state.admit(record)
                    for task in new.tasks:  # the store gave each its id
                        task.submit_time = now
                        self.state.admit(task)
                if not future.done():
                    future.set_result(job_id)

        def fail(batch: Batch, exc: Exception) -> None:
            log.warning("storing a submission failed: %s", exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)

        while True:
            batch = [await self._submits.get()]
            while not self._submits.empty() and len(batch) < MAX_BATCH:
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

    # ------------------------------------------------------------ reading

    async def get_job(self, job_id: int) -> tuple[JobRecord, list[EventRecord]]:
        job = self.state.jobs.get(job_id) or await self.db(self.store.job, job_id)
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
        jobs = list(self.state.jobs.values())
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

    async def array_jobs(self, array_job_id: int) -> list[JobRecord]:
        """Every task of an array, ended or not, in task order (live ones as they are now)."""
        tasks = await self.db(self.store.array_tasks, array_job_id)
        live = self.state.jobs
        out = [live.get(t.job_id, t) for t in tasks]
        out.sort(key=lambda j: j.array_task_id)
        return out

    def usage_report(self) -> tuple[FairTree, dict[tuple[str, ...], list[int]]]:
        """Fair Tree standings now, and the running and pending GPUs under each path."""
        self.accrue(self.state.clock())
        jobs = self.state.jobs.values()
        tree = self.cycle.accounts.with_users({j.user for j in jobs} | set(self.ledger.usage))
        standings = fair_tree(tree, self.ledger.usage)
        gpus: dict[tuple[str, ...], list[int]] = {}
        for job in jobs:
            slot = 0 if job.state.on_node else 1 if job.state is JobState.PENDING else None
            if slot is None:
                continue
            path = (*tree.path_of(job.user), job.user)
            for depth in range(1, len(path) + 1):
                gpus.setdefault(path[:depth], [0, 0])[slot] += job.gpus
        return standings, gpus

    def quota_report(self) -> tuple[dict[str, AccountStanding], list[str]]:
        """Each account's standing against its quotas now, and warnings about them."""
        quotas = self.cycle.quotas
        if quotas is None:
            return {}, []
        min_runtime = getattr(self.cycle.policy, "min_runtime_s", 0.0)
        snapshot = self.cycle.snapshot(self.state.clock())
        rows, warnings = quota_report(snapshot, quotas, min_runtime)
        return {r.account: r for r in rows}, warnings

    # ------------------------------------------------------------ changing a job

    async def _owned(
        self, caller: Caller, job_id: int, need: JobState | None = None, verb: str = ""
    ) -> JobRecord:
        """The live job `job_id` if `caller` may manage it (and it is in state `need`)."""
        job = self.state.jobs.get(job_id)
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
        async with self.state.lock:
            job = await self._owned(caller, job_id)
            return await self._cancel_locked(caller, job)

    async def _cancel_locked(self, caller: Caller, job: JobRecord) -> JobRecord:
        state = self.state
        job_id = job.job_id
        why = f"cancelled by {caller.user}"
        remote = job.state in (JobState.HANDED_OFF, JobState.RUNNING_REMOTE)
        slurm = self.cycle.slurm
        if remote and slurm is not None:
            if job.end_request:
                return job
            why += "; cancelling it in Slurm"
            [job] = await state.change([cancel_requested(job, caller.user, why)])
            slurm.kick()
            return job
        if remote:  # and no [slurm] any more: it can only end here
            why += "; no Slurm is configured any more, so it may still run there"
        if remote or job.state in (JobState.PENDING, JobState.HELD, JobState.LOST):
            fields = (("end_time", state.clock()), ("reason", why))
            [job] = await state.change(
                [Change(job_id, JobState.CANCELLED, "cancel", caller.user, why, fields)]
            )
            self.kick()
            return job
        if job.state.on_node:
            [job] = await state.change([cancel_requested(job, caller.user, why)])
            self.agents.kill(job)
            return job
        raise Refused(f"job {job_id} is {job.state} and cannot be cancelled", "FAILED_PRECONDITION")

    async def set_priority(self, caller: Caller, job_id: int, priority: int) -> JobRecord:
        """Admins may set any priority; owners may only lower their own jobs (<= 0)."""
        if abs(priority) > MAX_PRIORITY:
            raise Refused(f"priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}")
        async with self.state.lock:
            job = await self._owned(caller, job_id)
            if priority > 0 and not self.is_admin(caller):
                raise Refused(
                    "only an admin may give a job a positive priority", "PERMISSION_DENIED"
                )
            why = f"priority {job.priority} -> {priority} by {caller.user}"
            job = await self.state.annotate(
                job, "priority", caller.user, why, ("priority", priority)
            )
        self.kick()
        return job

    async def hold(self, caller: Caller, job_id: int) -> JobRecord:
        async with self.state.lock:
            await self._owned(caller, job_id, JobState.PENDING, "held")
            why = f"held by {caller.user}"
            [job] = await self.state.change(
                [Change(job_id, JobState.HELD, "hold", caller.user, why, (("reason", why),))]
            )
            return job

    async def release(self, caller: Caller, job_id: int) -> JobRecord:
        async with self.state.lock:
            await self._owned(caller, job_id, JobState.HELD, "released")
            why = f"released by {caller.user}"
            [job] = await self.state.change(
                [Change(job_id, JobState.PENDING, "release", caller.user, why, (("reason", ""),))]
            )
        self.kick()
        return job

    async def preempt(self, caller: Caller, job_id: int) -> JobRecord:
        """`gshare preempt JOB`: ask a running job to checkpoint and yield, by hand."""
        async with self.state.lock:
            job = await self._owned(caller, job_id, JobState.RUNNING, "preempted")
            why = f"preempted by {caller.user}"
            [job] = await self.state.change([preempt_change(job, caller.user, why)])
            self.agents.preempt(job)
            return job

    # ------------------------------------------------------------ arrays and job references

    async def job_of(self, ref: JobRef) -> int:
        """The job id `12_7` names (task 7 of array 12); a plain id as it is."""
        if ref.tasks is None:
            return ref.job_id
        if len(ref.tasks) != 1:
            raise Refused(f"{ref} names several tasks; name one, e.g. {ref.job_id}_{ref.tasks[0]}")
        job_id: int | None = await self.db(self.store.task_job_id, ref.job_id, ref.tasks[0])
        if job_id is None:
            raise Refused(
                f"no job {ref} (array {ref.job_id} has no task {ref.tasks[0]})", "NOT_FOUND"
            )
        return job_id

    async def _array_members(self, ref: JobRef) -> tuple[list[JobRecord], int] | None:
        """The live tasks `ref` names and how many it names that have ended, when it names
        an array (or tasks of one); None when it names a job that is not an array."""
        head = self.state.jobs.get(ref.job_id) or await self.db(self.store.job, ref.job_id)
        if head is None:
            raise Refused(f"no job {ref.job_id}", "NOT_FOUND")
        if head.array_job_id != ref.job_id:
            if ref.tasks is not None:
                raise Refused(f"job {ref.job_id} is not an array, so {ref} names nothing")
            return None
        wanted = set(ref.tasks) if ref.tasks is not None else None
        if wanted is not None:
            known = set(parse_array(head.array_spec, 1 << 30).tasks)
            missing = sorted(wanted - known)
            if missing:
                raise Refused(
                    f"array {ref.job_id} has no task {missing[0]} (its tasks: {head.array_spec})",
                    "NOT_FOUND",
                )
        members = [
            j
            for j in self.state.jobs.values()
            if j.array_job_id == ref.job_id and (wanted is None or j.array_task_id in wanted)
        ]
        members.sort(key=lambda j: j.array_task_id)
        named = len(wanted) if wanted is not None else parse_array(head.array_spec, 1 << 30).count
        return members, max(0, named - len(members))

    async def act(
        self, caller: Caller, ref: JobRef, verb: str, priority: int = 0, whole: bool = True
    ) -> tuple[list[JobRecord], int]:
        """cancel, hold, release, priority or preempt on what `ref` names: one job, a whole
        array, or some of its tasks. The jobs acted on (in task order) and how many named
        tasks were skipped (ended, or not in the state the verb needs). An array's tasks
        change together, in one transaction per kind of change. `whole` False: `ref` is
        one job id and means that job alone, even an array's first task (the API's job_id,
        as the TUI sends it)."""
        members = await self._array_members(ref) if whole else None
        single = {
            "cancel": self.cancel,
            "hold": self.hold,
            "release": self.release,
            "preempt": self.preempt,
        }
        if members is None:
            if verb == "priority":
                return [await self.set_priority(caller, ref.job_id, priority)], 0
            return [await single[verb](caller, ref.job_id)], 0
        jobs, ended = members
        for job in jobs[:1]:
            if not self._can_manage(caller, job):
                raise Refused(f"array {ref.job_id} belongs to {job.user}", "PERMISSION_DENIED")
        if verb == "priority":
            if abs(priority) > MAX_PRIORITY:
                raise Refused(f"priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}")
            if priority > 0 and not self.is_admin(caller):
                raise Refused(
                    "only an admin may give a job a positive priority", "PERMISSION_DENIED"
                )
        async with self.state.lock:
            live = [self.state.jobs.get(j.job_id) for j in jobs]
            mine = [j for j in live if j is not None and self._can_manage(caller, j)]
            done = await self._act_many(caller, mine, verb, priority)
        if verb != "hold":
            self.kick()
        return done, ended + len(jobs) - len(done)

    async def _act_many(
        self, caller: Caller, jobs: list[JobRecord], verb: str, priority: int
    ) -> list[JobRecord]:
        state = self.state
        who = caller.user
        if verb == "hold":
            why = f"held by {who}"
            return await state.change(
                [
                    Change(j.job_id, JobState.HELD, "hold", who, why, (("reason", why),))
                    for j in jobs
                    if j.state is JobState.PENDING
                ]
            )
        if verb == "release":
            why = f"released by {who}"
            return await state.change(
                [
                    Change(j.job_id, JobState.PENDING, "release", who, why, (("reason", ""),))
                    for j in jobs
                    if j.state is JobState.HELD
                ]
            )
        if verb == "priority":
            return await state.change(
                [
                    Change(
                        j.job_id,
                        j.state,
                        "priority",
                        who,
                        f"priority {j.priority} -> {priority} by {who}",
                        (("priority", priority),),
                    )
                    for j in jobs
                ]
            )
        if verb == "preempt":
            running = [j for j in jobs if j.state is JobState.RUNNING]
            done = await state.change(
                [preempt_change(j, who, f"preempted by {who}") for j in running]
            )
            for job in done:
                self.agents.preempt(job)
            return done
        if verb != "cancel":
            raise Refused(f"unknown action {verb!r}")
        # cancel: waiting tasks end here and now, together; the others one by one
        why = f"cancelled by {who}"
        waiting = (JobState.PENDING, JobState.HELD, JobState.LOST)
        now = state.clock()
        done = await state.change(
            [
                Change(
                    j.job_id,
                    JobState.CANCELLED,
                    "cancel",
                    who,
                    why,
                    (("end_time", now), ("reason", why)),
                )
                for j in jobs
                if j.state in waiting
            ]
        )
        for job in jobs:
            if job.state not in waiting:
                current = state.jobs.get(job.job_id)
                if current is not None:
                    with contextlib.suppress(Refused):  # it cannot be: counted as skipped
                        done.append(await self._cancel_locked(caller, current))
        return done
