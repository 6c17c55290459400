"""Sampling this node's GPUs and host every few seconds and publishing them over MQTT.

Sampling and publishing are apart: samples go into a bounded buffer, and a connection
loop drains it whenever the broker is reachable. While the broker is down the newest
samples are kept (the oldest fall out), and health events wait their turn.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import aiomqtt
import psutil

from gshare.config import MqttConfig
from gshare.mqtt import Backoff, make_client
from gshare.telemetry import (
    FATAL_XIDS,
    GpuSample,
    HealthEvent,
    HostSample,
    NodeStatus,
    encode,
    events_topic,
    gpu_topic,
    host_topic,
    status_topic,
)
from nodeagent.gpus import GpuProbe, JobGpus

log = logging.getLogger(__name__)

BUFFER = 2000  # messages kept while the broker is unreachable


class Publisher(Protocol):
    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> Any: ...


class TelemetrySink(Protocol):
    """Where telemetry goes: a session per connection, opened with a last will that is
    published for us if we vanish (MQTT), or a list in memory (tests)."""

    url: str

    def session(self, will_topic: str, will: bytes) -> AbstractAsyncContextManager[Publisher]: ...


class MqttSink:
    """The broker of `[mqtt]`, through aiomqtt."""

    def __init__(self, mqtt: MqttConfig, node: str) -> None:
        self.mqtt = mqtt
        self.url = mqtt.url
        self.node = node

    def session(self, will_topic: str, will: bytes) -> AbstractAsyncContextManager[Publisher]:
        last_will = aiomqtt.Will(will_topic, will, qos=1, retain=True)
        return make_client(self.mqtt, f"gshare-agent-{self.node}", last_will)


class MemorySink:
    """Telemetry kept in memory, in the order published: the fake beside MqttSink."""

    def __init__(self) -> None:
        self.url = "memory:"
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.wills: list[tuple[str, bytes]] = []

    @contextlib.asynccontextmanager
    async def session(self, will_topic: str, will: bytes) -> AsyncIterator[MemorySink]:
        self.wills.append((will_topic, will))
        yield self

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.messages.append((topic, payload, qos, retain))


class TelemetryPublisher:
    def __init__(
        self,
        sink: TelemetrySink,
        node: str,
        probe: GpuProbe,
        jobs: Callable[[], Sequence[JobGpus]],
        interval_s: float = 5.0,
        agent_version: str = "",
        fatal_xids: frozenset[int] = frozenset(),
        buffer: int = BUFFER,
    ) -> None:
        self.sink = sink
        self.node = node
        self.probe = probe
        self.jobs = jobs
        self.interval_s = interval_s
        self.agent_version = agent_version
        self.fatal_xids = fatal_xids or FATAL_XIDS
        self.buffer: collections.deque[tuple[str, bytes, int, bool]] = collections.deque(
            maxlen=buffer
        )
        self.latest: list[GpuSample] = []
        self.host: HostSample | None = None
        self.connected = False
        self.published = 0
        self.dropped = 0  # samples that fell out of a full buffer
        self._more = asyncio.Event()
        self._dbe_seen: dict[int, int] = {}

    # ------------------------------------------------------------ sampling

    def _queue(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if len(self.buffer) == self.buffer.maxlen:
            self.dropped += 1
        self.buffer.append((topic, payload, qos, retain))
        self._more.set()

    def health_events(self, samples: Sequence[GpuSample]) -> list[HealthEvent]:
        """New double-bit ECC errors (against the last sample) and fatal Xids."""
        events = []
        for s in samples:
            seen = self._dbe_seen.get(s.index, 0)
            if s.ecc_dbe > seen:
                events.append(HealthEvent(s.node, s.index, s.uuid, s.time, "ecc_dbe", s.ecc_dbe))
            self._dbe_seen[s.index] = s.ecc_dbe
            for xid in s.xids:
                if xid.code in self.fatal_xids:
                    events.append(
                        HealthEvent(s.node, s.index, s.uuid, xid.time, "xid", xid.code, "fatal")
                    )
        return events

    def sample_host(self) -> HostSample:
        mem = psutil.virtual_memory()
        return HostSample(
            self.node,
            time.time(),
            psutil.cpu_percent(None),
            os.getloadavg()[0],
            (mem.total - mem.available) >> 20,
            mem.total >> 20,
        )

    async def sample_once(self) -> None:
        jobs = list(self.jobs())
        samples = await asyncio.to_thread(self.probe.sample, self.node, jobs)
        self.latest = samples
        self.host = self.sample_host()
        for event in self.health_events(samples):
            log.error("GPU health: %s", event.describe())
            self._queue(events_topic(self.node), encode(event), qos=1)
        for s in samples:
            self._queue(gpu_topic(self.node, s.index), encode(s))
        self._queue(host_topic(self.node), encode(self.host))

    async def _sample_loop(self) -> None:
        psutil.cpu_percent(None)
        while True:
            try:
                await self.sample_once()
            except Exception:
                log.exception("telemetry sample failed")
            await asyncio.sleep(self.interval_s)

    # ------------------------------------------------------------ publishing

    def _status(self, online: bool) -> bytes:
        gpus = len(self.latest) or len(self.probe.inventory())
        status = NodeStatus(
            self.node, online, time.time(), gpus, self.agent_version, self.interval_s
        )
        return encode(status)

    async def _publish_loop(self) -> None:
        backoff = Backoff()
        quiet = False  # one warning per outage, not one per retry
        while True:
            try:
                session = self.sink.session(status_topic(self.node), self._status(False))
                async with session as client:
                    self.connected, quiet = True, False
                    backoff.reset()
                    log.info("telemetry: connected to %s", self.sink.url)
                    await client.publish(
                        status_topic(self.node), self._status(True), qos=1, retain=True
                    )
                    try:
                        await self._drain(client)
                    except asyncio.CancelledError:
                        # going away on purpose: say so, instead of leaving it to the will
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(
                                client.publish(
                                    status_topic(self.node),
                                    self._status(False),
                                    qos=1,
                                    retain=True,
                                ),
                                2,
                            )
                        raise
            except (aiomqtt.MqttError, OSError) as exc:
                if not quiet:
                    log.warning(
                        "telemetry: broker %s unreachable (%s); retrying", self.sink.url, exc
                    )
                    quiet = True
            except Exception:
                log.exception("telemetry: publishing failed; retrying")
            self.connected = False
            await asyncio.sleep(backoff.next())

    async def _drain(self, client: Publisher) -> None:
        while True:
            while self.buffer:
                item = self.buffer[0]
                topic, payload, qos, retain = item
                await client.publish(topic, payload, qos=qos, retain=retain)
                if self.buffer and self.buffer[0] is item:  # unless it fell out meanwhile
                    self.buffer.popleft()
                self.published += 1
            self._more.clear()
            await self._more.wait()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._sample_loop(), name="telemetry-sample"),
            asyncio.create_task(self._publish_loop(), name="telemetry-publish"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
