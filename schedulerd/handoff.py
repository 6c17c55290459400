"""Jobs handed to Slurm: submitting them through slurmrestd, following them there, cancelling
them, and charging their GPU time to the same fair-share ledger as local jobs.

Every `poll_s`, and whenever the cycle hands a job off or a user cancels one:
1. read the partition's free GPUs (the capacity the next cycles decide with);
2. submit each HANDED_OFF job not yet in Slurm, after looking for it by its comment
   (`gshare:<cluster>:<job id>`), so a job is never submitted twice, even when the
   scheduler died between Slurm's answer and writing the Slurm job id down;
3. bring each handed-off job's state up to date, charge its GPU-seconds, and end it when
   Slurm says it ended.
While slurmrestd is unreachable or refuses the token, jobs stay as they are, with the
reason in `gshare queue`, and all of this resumes when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Mapping
from typing import Any, Protocol

from gshare.config import SlurmConfig
from gshare.jobenv import job_environment, slurm_wrapper
from policies import SlurmCapacity
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord
from schedulerd.store import Change
from slurm_bridge import (
    JobState as SlurmState,
)
from slurm_bridge import (
    SlurmAuthError,
    SlurmClient,
    SlurmError,
    SlurmJob,
    SlurmJobNotFound,
    SlurmJobSpec,
    SlurmRejected,
    SlurmUnavailable,
)


class HandoffHost(Protocol):
    """What the hand-off needs of the scheduler: the live jobs, the one way to change
    them, and the ledger."""

    cluster_id: str
    lock: asyncio.Lock

    @property
    def jobs(self) -> Mapping[int, JobRecord]: ...

    def clock(self) -> float: ...

    async def change(self, changes: list[Change]) -> list[JobRecord]: ...

    async def annotate(
        self, job: JobRecord, kind: str, actor: str, why: str, *fields: tuple[str, Any]
    ) -> JobRecord: ...

    def publish_job(self, job: JobRecord) -> None: ...

    async def script(self, job_id: int) -> bytes: ...

    async def set_fields(self, job_id: int, values: dict[str, Any]) -> None: ...

    def charge(self, user: str, gpu_seconds: float) -> None: ...

    def kick(self) -> None: ...


log = logging.getLogger(__name__)

REMOTE = (JobState.HANDED_OFF, JobState.RUNNING_REMOTE)
_ENDS = {
    SlurmState.COMPLETED: JobState.COMPLETED,
    SlurmState.FAILED: JobState.FAILED,
    SlurmState.CANCELLED: JobState.CANCELLED,
    SlurmState.TIMEOUT: JobState.TIMEOUT,
    SlurmState.NODE_FAIL: JobState.FAILED,
    SlurmState.PREEMPTED: JobState.FAILED,
    SlurmState.OUT_OF_MEMORY: JobState.FAILED,
}


class SlurmLink:
    def __init__(self, config: SlurmConfig, scheduler: HandoffHost, client: SlurmClient) -> None:
        self.config = config
        self.s = scheduler
        self.client = client
        self.cluster = config.cluster_name or socket.gethostname()
        self.capacity = SlurmCapacity(False, (), "not contacted yet")
        self.problem = ""  # the last error, while there is one
        self._wake = asyncio.Event()
        self._owners: dict[str, SlurmClient] = {}  # submit_as = "owner": a client per user

    @classmethod
    def from_config(cls, config: SlurmConfig, scheduler: HandoffHost) -> SlurmLink:
        return cls(config, scheduler, _client(config, config.user))

    def submitter(self, owner: str) -> SlurmClient:
        """Who submits: the job's owner (named in X-SLURM-USER-NAME, on the configured
        root/SlurmUser token) or the configured user."""
        if self.config.submit_as != "owner" or owner == self.config.user:
            return self.client
        client = self._owners.get(owner)
        if client is None:
            client = self._owners[owner] = _client(self.config, owner)
        return client

    async def aclose(self) -> None:
        for client in [self.client, *self._owners.values()]:
            with contextlib.suppress(Exception):
                await client.aclose()

    def comment(self, job_id: int) -> str:
        """What marks the job in Slurm: the Slurm cluster's name for us, our database's id
        (a new database numbers its jobs from 1 again) and the job id."""
        return f"gshare:{self.cluster}:{self.s.cluster_id}:{job_id}"

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:
                log.exception("Slurm hand-off: a round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_s)
            self._wake.clear()

    async def poll_once(self) -> None:
        try:
            await self._refresh_capacity()
            remote_jobs = [j for j in self.s.jobs.values() if j.state in REMOTE]
            # one listing per round serves every job, instead of a request per job
            listing = await self.client.jobs() if remote_jobs else []
            by_id = {j.job_id: j for j in listing}
            by_comment: dict[str, SlurmJob] = {}
            for j in sorted(listing, key=lambda j: j.job_id):  # the newest wins
                by_comment[j.comment] = j
            for job in remote_jobs:
                try:
                    await self._follow(job, by_id, by_comment)
                except (SlurmAuthError, SlurmUnavailable):
                    raise  # Slurm as a whole: the round stops, every job says why
                except SlurmError as exc:  # this job alone; the others go on
                    log.warning("job %d: Slurm: %s", job.job_id, exc)
                    self._note(job, f"{self._where(job)}; Slurm: {exc}; retrying")
            if self.problem:
                log.info("Slurm at %s answers again", self.config.url)
            self.problem = ""
        except SlurmAuthError as exc:
            await self._trouble(f"slurmrestd refused the token: {exc}")
        except SlurmUnavailable as exc:
            await self._trouble(f"slurmrestd unreachable: {exc}")
        except SlurmError as exc:
            await self._trouble(f"slurmrestd error: {exc}")

    def capacity_now(self) -> SlurmCapacity:
        """Free GPUs as last polled, less those of handed-off jobs not running there yet
        (Slurm counts GPUs as used only once a job runs): no GPU is spent twice."""
        if not self.capacity.reachable:
            return self.capacity
        free = sorted(self.capacity.free_gpus, reverse=True)
        for job in self.s.jobs.values():
            if job.state is JobState.HANDED_OFF:
                per_node = job.gpus_per_node if job.nodes > 1 else job.gpus
                for _ in range(job.nodes):
                    fits = next((i for i, n in enumerate(free) if n >= per_node), None)
                    if fits is not None:
                        free[fits] -= per_node
        return SlurmCapacity(True, tuple(free), "")

    def _note(self, job: JobRecord, reason: str) -> None:
        current = self.s.jobs.get(job.job_id)
        if current is not None and current.reason != reason:
            current.reason = reason  # in memory, like why a pending job waits
            self.s.publish_job(current)

    async def _trouble(self, why: str) -> None:
        if why != self.problem:
            log.warning("Slurm hand-off: %s", why)
        self.problem = why
        self.capacity = SlurmCapacity(False, (), why)
        for job in [j for j in self.s.jobs.values() if j.state in REMOTE]:
            self._note(job, f"{self._where(job)}; {why}; retrying")

    def _where(self, job: JobRecord) -> str:
        if job.slurm_job_id:
            state = job.slurm_state.lower() or "submitted"
            return f"in Slurm as job {job.slurm_job_id} ({state})"
        return "being handed to Slurm"

    async def _refresh_capacity(self) -> None:
        nodes = await self.client.nodes()
        part = self.config.partition
        free = tuple(
            n.gpus_free
            for n in nodes
            if (not part or part in n.partitions) and _takes_jobs(n.state)
        )
        self.capacity = SlurmCapacity(True, free, "")

    # ------------------------------------------------------------ one job

    async def _follow(
        self, job: JobRecord, by_id: dict[int, SlurmJob], by_comment: dict[str, SlurmJob]
    ) -> None:
        """One handed-off job, given this round's listing of Slurm's jobs."""
        if not job.slurm_job_id:
            found = by_comment.get(self.comment(job.job_id))
            if found is not None and found.user not in (self.submitter(job.user).user, ""):
                log.warning(
                    "job %d: Slurm job %d has its comment but belongs to %s; ignored",
                    job.job_id,
                    found.job_id,
                    found.user,
                )
                found = None
            if found is not None:
                await self._record_id(job, found.job_id, "found in Slurm by its comment")
            elif job.end_request:
                await self._end(job, JobState.CANCELLED, job.reason or "cancelled", None)
                return
            else:
                await self._submit(job)
                return
            job = self.s.jobs[job.job_id]
        try:
            # not listed: ask for it alone, which says for sure whether Slurm forgot it
            remote = by_id.get(job.slurm_job_id) or await self.client.job(job.slurm_job_id)
        except SlurmJobNotFound:
            await self._end(
                job,
                JobState.FAILED,
                f"Slurm no longer knows job {job.slurm_job_id} (purged before its end was seen)",
                None,
            )
            return
        if job.end_request and not remote.state.is_final:
            await self.client.cancel(job.slurm_job_id)
        await self._update(job, remote)

    async def _submit(self, job: JobRecord) -> None:
        # the same environment a job gets from a node agent; Slurm picks the node and
        # GPUs, so the wrapper fills those in where it runs
        script = slurm_wrapper(await self.s.script(job.job_id))
        env = job_environment(
            {**job.env, **job.task_env},
            job_id=job.job_id,
            restart_count=job.restarts,
            output=job.output_path,
            checkpoint_dir=job.checkpoint_path,  # where it saved before, if it did
            preempt_signal=job.preempt_signal,
        )
        try:
            spec = SlurmJobSpec(  # ValueError: a job Slurm cannot take (e.g. a bad variable)
                name=job.name,
                script=script,
                working_dir=job.workdir,
                argv=tuple(job.args),
                environment=env,
                comment=self.comment(job.job_id),
                gpus=job.gpus_per_node if job.nodes > 1 else job.gpus,
                nodes=job.nodes,
                cpus=max(1, job.cpus),
                time_limit_minutes=math.ceil(job.time_limit_s / 60) if job.time_limit_s else None,
                stdout=job.output_path,
                stderr=job.output_path,
                partition=self.config.partition or None,
            )
            slurm_id = await self.submitter(job.user).submit(spec)
        except (SlurmRejected, ValueError) as exc:
            why = f"Slurm refused it: {exc}; it stays here and will not be handed off again"
            async with self.s.lock:
                current = self.s.jobs.get(job.job_id)
                if current is not None and current.state is JobState.HANDED_OFF:
                    await self.s.change(
                        [
                            Change(
                                job.job_id,
                                JobState.PENDING,
                                "handoff-refused",
                                "slurm",
                                why,
                                (("reason", why), ("slurm", "never")),
                            )
                        ]
                    )
            self.s.kick()
            return
        log.info("job %d: submitted to Slurm as job %d", job.job_id, slurm_id)
        await self._record_id(job, slurm_id, f"submitted to Slurm as job {slurm_id}")

    async def _record_id(self, job: JobRecord, slurm_id: int, why: str) -> None:
        async with self.s.lock:
            current = self.s.jobs.get(job.job_id)
            if current is not None:
                await self.s.annotate(
                    current,
                    "slurm-submit",
                    "slurm",
                    why,
                    ("slurm_job_id", slurm_id),
                    ("reason", f"in Slurm as job {slurm_id}"),
                )

    async def _update(self, job: JobRecord, remote: SlurmJob) -> None:
        now = self.s.clock()
        if remote.state.is_final:
            end = _ENDS.get(remote.state, JobState.FAILED)
            await self._end(job, end, _end_reason(remote), remote)
            return
        running = remote.state in (SlurmState.RUNNING, SlurmState.COMPLETING)
        async with self.s.lock:
            current = self.s.jobs.get(job.job_id)
            if current is None or current.state not in REMOTE:
                return
            if running and current.state is JobState.HANDED_OFF:
                start = remote.start_time or now
                why = f"running in Slurm as job {remote.job_id} on {','.join(remote.nodes)}"
                [current] = await self.s.change(
                    [
                        Change(
                            job.job_id,
                            JobState.RUNNING_REMOTE,
                            "remote-start",
                            "slurm",
                            why,
                            (
                                ("start_time", start),
                                ("node", f"slurm:{','.join(remote.nodes)}"),
                                ("slurm_state", remote.slurm_state),
                                ("slurm_charged_until", start),
                                ("reason", ""),
                            ),
                        )
                    ]
                )
            if current.state is JobState.RUNNING_REMOTE:
                if running:
                    await self._charge(current, now)
                else:  # requeued in Slurm (node failure, preemption): not using GPUs
                    current.slurm_charged_until = now
                    await self.s.set_fields(job.job_id, {"slurm_charged_until": now})
            reason = (
                ""
                if running
                else f"in Slurm as job {remote.job_id}: "
                + (
                    f"{remote.slurm_state.lower()}"
                    + (f" ({remote.reason})" if remote.reason and remote.reason != "None" else "")
                )
            )
            if current.end_request:
                reason = f"cancel sent to Slurm job {remote.job_id}"
            if current.slurm_state != remote.slurm_state:
                current.slurm_state = remote.slurm_state
                await self.s.set_fields(job.job_id, {"slurm_state": remote.slurm_state})
                self.s.publish_job(current)
            if current.reason != reason:
                current.reason = reason
                self.s.publish_job(current)

    async def _charge(self, job: JobRecord, until: float) -> None:
        """Put the job's Slurm GPU-seconds up to `until` in the ledger. Caller holds the lock."""
        since = job.slurm_charged_until or job.start_time
        if until <= since:
            return
        self.s.charge(job.user, job.gpus * (until - since))
        job.slurm_charged_until = until
        await self.s.set_fields(job.job_id, {"slurm_charged_until": until})

    async def _end(self, job: JobRecord, end: JobState, why: str, remote: SlurmJob | None) -> None:
        async with self.s.lock:
            current = self.s.jobs.get(job.job_id)
            if current is None or current.state not in REMOTE:
                return
            now = self.s.clock()
            fields: list[tuple[str, object]] = [("reason", why), ("end_time", now)]
            if remote is not None:
                ended = remote.end_time or now
                fields = [("reason", why), ("end_time", ended)]
                if current.state is JobState.RUNNING_REMOTE or remote.start_time:
                    if current.state is not JobState.RUNNING_REMOTE:
                        current.start_time = remote.start_time or ended
                        fields.append(("start_time", current.start_time))
                    await self._charge(current, ended)
                if remote.exit_code is not None:
                    fields += [("exit_code", remote.exit_code), ("has_exit", True)]
                if remote.signal:
                    fields.append(("exit_signal", remote.signal))
                fields.append(("slurm_state", remote.slurm_state))
                if remote.start_time and current.state is JobState.HANDED_OFF:
                    fields.append(("node", f"slurm:{','.join(remote.nodes)}"))
            await self.s.change([Change(job.job_id, end, "end", "slurm", why, tuple(fields))])


def _takes_jobs(state: str) -> bool:
    """A node state as slurmrestd gives it ("idle", "mixed+drain", ...) that may run a job."""
    base, *flags = state.lower().split("+")
    bad = {"drain", "draining", "drained", "down", "maint", "reserved", "not_responding", "fail"}
    return base in ("idle", "mixed", "allocated") and not bad & set(flags)


def _client(config: SlurmConfig, user: str) -> SlurmClient:
    return SlurmClient(
        config.url, user, token=config.token or None, token_file=config.token_file or None
    )


def _end_reason(remote: SlurmJob) -> str:
    text = f"Slurm job {remote.job_id} {remote.slurm_state.lower()}"
    if remote.exit_code is not None:
        text += f", exit code {remote.exit_code}"
    if remote.signal:
        text += f", signal {remote.signal}"
    return text
