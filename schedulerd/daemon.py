"""The scheduler daemon's wiring: it builds the rooms and runs their loops.

- state.py    the live jobs and nodes, and the one way to change a job (`change`)
- changes.py  the named, pure builders of those changes
- ledger.py   the usage ledger the fair-share policies read
- agents.py   the node agents' sessions and what goes up and down them
- requests.py a submitted JobSpec checked at the edge; verbs.py what clients ask for
- cycle.py    the scheduling cycle: snapshot, decide, persist, send
- upkeep.py   leases, time limits, idle reclaim, drains and telemetry
- handoff.py  jobs handed to Slurm, behind a small Protocol
- callers.py  who calls, on each listener (Unix socket, TCP with MUNGE, agents' TLS)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gshare.config import Config
from policies import Policy
from schedulerd.agents import AgentHub
from schedulerd.cycle import Cycle
from schedulerd.errors import Refused
from schedulerd.handoff import SlurmLink
from schedulerd.ledger import Ledger
from schedulerd.model import JobRecord, NodeState
from schedulerd.peercred import Caller
from schedulerd.state import ClusterState
from schedulerd.store import Change, Store
from schedulerd.telemetry import Telemetry, TelemetryIntake
from schedulerd.upkeep import Upkeep
from schedulerd.verbs import ClientVerbs

__all__ = ["Refused", "Scheduler"]

log = logging.getLogger(__name__)

T = TypeVar("T")

USAGE_SAVE_EVERY_S = 10.0  # a scheduler crash loses at most this much accounting


class Scheduler:
    def __init__(
        self,
        config: Config,
        store: Store,
        policy: Policy,
        clock: Callable[[], float] = time.time,
        lease_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.cluster_id = ""  # the store's, read at start
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="store")
        self.state = ClusterState(store, clock, self.db)
        self.ledger = Ledger(config.half_life_s)
        self.telemetry = Telemetry(config.telemetry_interval_s, clock)
        self.agents = AgentHub(config, self.state, self._script, self.kick, lease_clock)
        self.cycle = Cycle(
            config, self.state, self.ledger, policy, self.agents, self.accrue, multi_node=True
        )
        self.verbs = ClientVerbs(
            config,
            self.state,
            store,
            self.db,
            self.agents,
            self.ledger,
            self.cycle,
            self.accrue,
            self.kick,
            lambda: self.cluster_id,
        )
        self.upkeep = Upkeep(
            config, self.state, self.agents, self.telemetry, self.cycle, self.kick, self.is_admin
        )
        self.slurm: SlurmLink | None = None
        self.state.before_freeing = self.accrue
        self.state.left_node.append(self._keep_gpu_stats)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._cycle_at = time.monotonic()

    # ------------------------------------------------------------ life

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, fn, *args)

    async def start(self) -> None:
        self.cluster_id = await self.db(self.store.cluster_id)
        for node in await self.db(self.store.nodes):
            node.state = NodeState.DOWN
            self.state.nodes[node.name] = node
        gates = self.cycle.gates
        for job in await self.db(self.store.live_jobs):
            self.state.jobs[job.job_id] = job
            gates.job_changed(job)
        # the ends of the jobs live dependencies wait on, and of their arrays' tasks
        gates.outcomes(await self.db(self.store.outcomes, set(gates.watched)))
        self.ledger.load(*await self.db(self.store.usage))
        # jobs that ran while the scheduler was down are charged for that time too
        self.accrue(self.clock())
        log.info(
            "loaded %d live jobs and %d known nodes", len(self.state.jobs), len(self.state.nodes)
        )
        self._tasks = [
            asyncio.create_task(self._cycle_loop(), name="cycle"),
            asyncio.create_task(self.verbs.submit_loop(), name="submits"),
            asyncio.create_task(self._tick_loop(), name="tick"),
        ]
        if self.config.mqtt.enabled:
            intake = TelemetryIntake(self.config.mqtt, self.telemetry, self.upkeep.on_telemetry)
            self._tasks.append(asyncio.create_task(intake.run(), name="telemetry"))
        if self.config.slurm.enabled:
            self.slurm = SlurmLink.from_config(self.config.slurm, _HandoffHost(self))
            self.cycle.slurm = self.slurm
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
        self._db_thread.shutdown(wait=True)

    def alive(self) -> bool:
        """The cycle loop still turns (it runs at least every heartbeat_s)."""
        return time.monotonic() - self._cycle_at < max(60.0, 10 * self.config.heartbeat_s)

    def kick(self) -> None:
        """Ask for a scheduling cycle soon (several kicks close together make one cycle)."""
        self._wake.set()

    def is_admin(self, caller: Caller) -> bool:
        return self.verbs.is_admin(caller)

    # ------------------------------------------------------------ loops

    async def _cycle_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.heartbeat_s)
            # Debounce: a burst of events makes one cycle, and the pause after each cycle is
            # five times its length, so cycles take at most about a sixth of the loop's time
            # and a long queue cannot starve the API.
            await asyncio.sleep(0.05 + 5 * self.cycle.last_s)
            self._wake.clear()
            self._cycle_at = time.monotonic()
            try:
                await self.cycle.run()
            except Exception:
                log.exception("scheduling cycle failed")

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.upkeep.tick()
                if self.clock() - self.ledger.saved_at >= USAGE_SAVE_EVERY_S:
                    await self.save_usage()
            except Exception:
                log.exception("periodic checks failed")

    # ------------------------------------------------------------ the ledger

    def accrue(self, now: float) -> None:
        self.ledger.accrue(now, self.state.jobs.values(), self.telemetry.take_idle())

    def charge(self, user: str, gpu_seconds: float) -> None:
        """Put GPU time used elsewhere (a handed-off job in Slurm) in the ledger, now."""
        self.accrue(self.clock())
        self.ledger.charge(user, gpu_seconds)

    async def save_usage(self) -> None:
        self.accrue(self.clock())
        ledger = self.ledger
        await self.db(self.store.save_usage, dict(ledger.usage), ledger.at, dict(ledger.idle_usage))
        ledger.saved_at = ledger.at

    # ------------------------------------------------------------ hooks

    async def _script(self, job_id: int) -> bytes:
        script: bytes = await self.db(self.store.script, job_id)
        return script

    async def _keep_gpu_stats(self, job_id: int) -> None:
        """A job leaves its node: store what telemetry saw of its GPUs (alone: a failure
        here loses the figures, never the change)."""
        stats = self.telemetry.jobs.pop(job_id, None)
        if stats is None or not stats.sampled_s:
            return
        try:
            await self.db(
                self.store.save_gpu_stats,
                job_id,
                stats.util_avg,
                stats.mem_peak_mb,
                stats.sampled_s,
                stats.idle_gpu_s,
            )
        except Exception:
            log.exception("job %d: keeping its GPU figures failed", job_id)


class _HandoffHost:
    """The scheduler as the Slurm hand-off sees it (schedulerd/handoff.py's HandoffHost)."""

    def __init__(self, s: Scheduler) -> None:
        self._s = s
        self.cluster_id = s.cluster_id
        self.lock = s.state.lock

    @property
    def jobs(self) -> Mapping[int, JobRecord]:
        return self._s.state.jobs

    def clock(self) -> float:
        return self._s.clock()

    async def change(self, changes: list[Change]) -> list[JobRecord]:
        return await self._s.state.change(changes)

    async def annotate(
        self, job: JobRecord, kind: str, actor: str, why: str, *fields: tuple[str, Any]
    ) -> JobRecord:
        return await self._s.state.annotate(job, kind, actor, why, *fields)

    def publish_job(self, job: JobRecord) -> None:
        self._s.state.publish_job(job)

    async def script(self, job_id: int) -> bytes:
        return await self._s._script(job_id)

    async def set_fields(self, job_id: int, values: dict[str, Any]) -> None:
        await self._s.db(self._s.store.set_fields, job_id, values)

    def charge(self, user: str, gpu_seconds: float) -> None:
        self._s.charge(user, gpu_seconds)

    def kick(self) -> None:
        self._s.kick()
