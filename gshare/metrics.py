"""Prometheus /metrics for the daemons (prometheus-client), and the GPU families both share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gshare.telemetry import GpuSample

log = logging.getLogger(__name__)


class MetricsServer:
    """/metrics on HOST:PORT, served from a thread by prometheus-client."""

    def __init__(
        self, registry: CollectorRegistry, listen: str, address_file: Path | None = None
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.server, self.thread = start_http_server(int(port), host.strip("[]"), registry)
        self.port = self.server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        if address_file is not None:  # port 0 takes any free port: say which one it got
            address_file.write_text(f"{host}:{self.port}\n")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoopCollector(Collector):
    """Calls `gather` on the daemon's event loop at scrape time, so the figures are read
    from one consistent moment without locks, then hands them to the scraping thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gather: Callable[[], list[Metric]]):
        self.loop = loop
        self.gather = gather

    def collect(self) -> Iterable[Metric]:
        async def run() -> list[Metric]:
            return self.gather()

        try:
            return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)
        except Exception:
            log.exception("collecting metrics failed")
            return []


def gpu_families(samples: Sequence[GpuSample], extra: dict[str, Any] | None = None) -> list[Metric]:
    """Per-GPU gauges labelled by node, GPU index and UUID."""
    labels = ["node", "gpu", "uuid"]
    fams = {
        "util": GaugeMetricFamily(
            "gshare_gpu_utilization_percent", "GPU utilization (NVML)", labels=labels
        ),
        "mem": GaugeMetricFamily("gshare_gpu_memory_used_bytes", "GPU memory used", labels=labels),
        "total": GaugeMetricFamily(
            "gshare_gpu_memory_total_bytes", "GPU memory in all", labels=labels
        ),
        "temp": GaugeMetricFamily(
            "gshare_gpu_temperature_celsius", "GPU temperature", labels=labels
        ),
        "power": GaugeMetricFamily("gshare_gpu_power_watts", "GPU power draw", labels=labels),
        "dbe": GaugeMetricFamily(
            "gshare_gpu_ecc_uncorrected_errors",
            "volatile double-bit ECC errors since the driver loaded",
            labels=labels,
        ),
        "age": GaugeMetricFamily(
            "gshare_gpu_sample_timestamp_seconds", "when the GPU was last sampled", labels=labels
        ),
    }
    for s in samples:
        key = [s.node, str(s.index), s.uuid]
        fams["util"].add_metric(key, s.util_pct)
        fams["mem"].add_metric(key, s.mem_used_mb * 1048576.0)
        fams["total"].add_metric(key, s.mem_total_mb * 1048576.0)
        fams["temp"].add_metric(key, s.temp_c)
        fams["power"].add_metric(key, s.power_w)
        fams["dbe"].add_metric(key, s.ecc_dbe)
        fams["age"].add_metric(key, s.time)
    return list(fams.values())
