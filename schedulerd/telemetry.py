"""Telemetry intake: the scheduler's subscription to the agents' MQTT topics.

`Telemetry` keeps the latest sample per GPU and host, follows each running job's GPU use
(average and current utilization, peak memory, how long it has been idle), and says
which GPU processes do not belong where they are. It never blocks scheduling: decisions
read what it has, and a dead broker only leaves the figures getting old.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiomqtt

from gshare.config import MqttConfig
from gshare.mqtt import Backoff, make_client
from gshare.telemetry import (
    PREFIX,
    GpuSample,
    HealthEvent,
    HostSample,
    NodeStatus,
    TelemetryError,
    parse_event,
    parse_gpu,
    parse_host,
    parse_status,
    split_topic,
)

log = logging.getLogger(__name__)

STALE_AFTER = 3.0  # intervals without a sample: the figures are no longer current
MAX_SKEW_S = 60.0  # samples dated further ahead of the scheduler's clock are refused
MAX_NEW_WARNINGS = 3  # per message: a flood of stray pids makes a few events, not hundreds
LOG_EVERY_S = 30.0  # at most one log line per this many seconds for dropped messages


@dataclass(slots=True)
class JobGpuStats:
    """What telemetry has seen of one job's GPUs."""

    util_time: float = 0.0  # sum of utilization% x seconds, over its GPUs
    sampled_s: float = 0.0  # GPU-seconds covered by samples
    util_now: dict[int, float] = field(default_factory=dict)  # GPU index -> last %
    last: dict[int, float] = field(default_factory=dict)  # GPU index -> last sample time
    mem_peak_mb: int = 0
    idle_since: float = 0.0  # when all its GPUs went under the threshold; 0: not idle
    idle_gpu_s: float = 0.0

    @property
    def util_avg(self) -> float:
        return self.util_time / self.sampled_s if self.sampled_s else 0.0

    @property
    def util_current(self) -> float:
        return sum(self.util_now.values()) / len(self.util_now) if self.util_now else 0.0


@dataclass(frozen=True, slots=True)
class Misuse:
    """A process where it should not be, and the jobs it concerns (its own, the GPU's)."""

    text: str
    jobs: frozenset[int]


@dataclass(frozen=True, slots=True)
class HeldGpu:
    """A GPU's holder at sample time, as the scheduler knows it."""

    job_id: int
    user: str
    gpu_indexes: tuple[int, ...]
    idle_util_pct: float


class Telemetry:
    def __init__(self, interval_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.gpus: dict[tuple[str, int], GpuSample] = {}
        self.hosts: dict[str, HostSample] = {}
        self.status: dict[str, NodeStatus] = {}
        self.jobs: dict[int, JobGpuStats] = {}
        self.warnings: dict[tuple[str, int], tuple[Misuse, ...]] = {}
        self.idle_gpu_s: dict[str, float] = {}  # per user, since the ledger last took it
        self.dropped = 0
        self.connected = False
        self._last_drop_log = 0.0

    # ------------------------------------------------------------ reading

    def fresh(self, sample_time: float) -> bool:
        return self.clock() - sample_time <= STALE_AFTER * self.interval_s

    def gpu(self, node: str, index: int) -> GpuSample | None:
        return self.gpus.get((node, index))

    def take_idle(self) -> dict[str, float]:
        taken, self.idle_gpu_s = self.idle_gpu_s, {}
        return taken

    # ------------------------------------------------------------ intake

    def drop(self, topic: str, why: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= LOG_EVERY_S:
            self._last_drop_log = now
            log.warning(
                "telemetry: dropped a message on %s: %s (%d dropped so far)",
                topic[:200],
                why,
                self.dropped,
            )

    def on_gpu(self, sample: GpuSample, held: Mapping[int, HeldGpu]) -> list[tuple[int, str]]:
        """Take one GPU sample; `held` maps this node's GPU indexes to their jobs.

        Returns (job id, warning) for each new misuse seen: a job's process on a GPU
        that was not given to it (job id 0: a process of no job).
        """
        key = (sample.node, sample.index)
        old = self.gpus.get(key)
        if old is not None and sample.time <= old.time:
            return []  # a late or repeated copy (the agent's buffer replays after an outage)
        self.gpus[key] = sample
        holder = held.get(sample.index)
        if holder is not None:
            self._account(holder, sample)
        warnings: list[Misuse] = []
        seen = {m.text for m in self.warnings.get(key, ())}
        fresh_misuse: list[tuple[int, str]] = []
        for proc in sample.processes:
            owner = proc.job_id
            if holder is not None and owner == holder.job_id:
                continue
            if owner:
                text = (
                    f"pid {proc.pid} of job {owner} is on GPU {sample.index}, "
                    "which was not given to it"
                )
            elif holder is not None:
                text = (
                    f"pid {proc.pid}, not a gshare job's, is on GPU {sample.index} "
                    f"(given to job {holder.job_id})"
                )
            else:
                text = f"pid {proc.pid}, not a gshare job's, is on GPU {sample.index}"
            concerned = {owner, holder.job_id if holder is not None else 0} - {0}
            warnings.append(Misuse(text, frozenset(concerned)))
            if text not in seen and len(fresh_misuse) < MAX_NEW_WARNINGS:
                fresh_misuse.append((owner, text))
                log.warning("node %s: %s", sample.node, text)
        self.warnings[key] = tuple(warnings)
        return fresh_misuse

    def _account(self, holder: HeldGpu, sample: GpuSample) -> None:
        stats = self.jobs.setdefault(holder.job_id, JobGpuStats())
        prev = stats.last.get(sample.index)
        stats.last[sample.index] = sample.time
        stats.util_now[sample.index] = sample.util_pct
        stats.mem_peak_mb = max(stats.mem_peak_mb, sample.mem_used_mb)
        # the time a sample stands for: since the one before, unless there was a gap
        gap = sample.time - prev if prev is not None else 0.0
        dt = gap if 0 < gap <= STALE_AFTER * self.interval_s else 0.0
        stats.util_time += sample.util_pct * dt
        stats.sampled_s += dt
        idle = sample.util_pct < holder.idle_util_pct
        if idle and dt:
            stats.idle_gpu_s += dt
            self.idle_gpu_s[holder.user] = self.idle_gpu_s.get(holder.user, 0.0) + dt
        if prev is not None and dt == 0.0:
            stats.idle_since = 0.0  # a gap in the samples: no claim of idleness across it
        all_idle = all(
            stats.util_now.get(i, 100.0) < holder.idle_util_pct for i in holder.gpu_indexes
        )
        if not all_idle:
            stats.idle_since = 0.0
        elif not stats.idle_since:
            stats.idle_since = sample.time

    def warnings_of(self, node: str, job_id: int) -> list[str]:
        """What is flagged on `node`'s GPUs that concerns the job."""
        return [
            m.text
            for (name, _), found in sorted(self.warnings.items())
            if name == node
            for m in found
            if job_id in m.jobs
        ]

    def idle_for(self, job_id: int) -> float:
        """Seconds the job's GPUs have all been idle, by fresh samples; 0 if not idle."""
        stats = self.jobs.get(job_id)
        if stats is None or not stats.idle_since or not stats.last:
            return 0.0
        newest = max(stats.last.values())
        if not self.fresh(newest):
            return 0.0
        return max(0.0, newest - stats.idle_since)

    def _check_time(self, t: float) -> None:
        # a sample from the future would stay "fresh" and hide the real ones after it
        if t > self.clock() + MAX_SKEW_S:
            raise TelemetryError(f"dated {t - self.clock():.0f}s in the future (clock skew?)")

    def handle(
        self,
        topic: str,
        payload: bytes,
        held: Callable[[str], Mapping[int, HeldGpu]],
    ) -> tuple[list[tuple[int, str]], HealthEvent | None, str]:
        """One message: (new misuse warnings, a health event, the node it was about)."""
        try:
            node, kind, index = split_topic(topic)
            if kind == "gpus":
                sample = parse_gpu(payload, node, index)
                self._check_time(sample.time)
                return self.on_gpu(sample, held(node)), None, node
            if kind == "host":
                host = parse_host(payload, node)
                self._check_time(host.time)
                self.hosts[node] = host
            elif kind == "status":
                if not payload:  # a cleared retained message
                    self.status.pop(node, None)
                else:
                    self.status[node] = parse_status(payload, node)
            else:
                event = parse_event(payload, node)
                self._check_time(event.time)
                return [], event, node
            return [], None, node
        except TelemetryError as exc:
            self.drop(topic, str(exc))
            return [], None, ""
        except Exception as exc:  # whatever a publisher sends must not stop the intake
            self.drop(topic, f"{type(exc).__name__}: {exc}")
            return [], None, ""


class TelemetryIntake:
    """The subscription: reconnects by itself, hands each message to `on_message`."""

    def __init__(
        self,
        mqtt: MqttConfig,
        telemetry: Telemetry,
        on_message: Callable[[str, bytes], None],
    ) -> None:
        self.mqtt = mqtt
        self.telemetry = telemetry
        self.on_message = on_message

    async def run(self) -> None:
        backoff = Backoff()
        quiet = False
        while True:
            try:
                client = make_client(
                    self.mqtt, f"gshare-schedulerd-{id(self):x}", max_queued_incoming=10000
                )
                async with client:
                    await client.subscribe(f"{PREFIX}/#", qos=1)
                    self.telemetry.connected, quiet = True, False
                    backoff.reset()
                    log.info("telemetry: subscribed at %s", self.mqtt.url)
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes | bytearray):
                            payload = str(payload).encode()
                        try:
                            self.on_message(str(message.topic), bytes(payload))
                        except Exception:
                            log.exception("telemetry: handling a message on %s", message.topic)
            except (aiomqtt.MqttError, OSError) as exc:
                if not quiet:
                    log.warning(
                        "telemetry: broker %s unreachable (%s); scheduling goes on without it",
                        self.mqtt.url,
                        exc,
                    )
                    quiet = True
            self.telemetry.connected = False
            await asyncio.sleep(backoff.next())
