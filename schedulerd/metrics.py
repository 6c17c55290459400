"""The scheduler's Prometheus metrics: jobs, queue wait, cycle time, GPUs, fair share."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gshare.metrics import LoopCollector, gpu_families
from schedulerd.daemon import Scheduler
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord


def registry_for(scheduler: Scheduler, loop: asyncio.AbstractEventLoop) -> CollectorRegistry:
    registry = CollectorRegistry()
    cycle = Histogram(
        "gshare_scheduling_cycle_seconds",
        "time the policy took to decide one scheduling cycle",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        registry=registry,
    )
    wait = Histogram(
        "gshare_queue_wait_seconds",
        "time from submit (or requeue) to start, by queue",
        ["queue"],
        buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400),
        registry=registry,
    )
    scheduler.cycle.hooks.decided = cycle.observe

    def started(job: JobRecord, waited: float) -> None:
        wait.labels(job.queue).observe(max(0.0, waited))

    scheduler.cycle.hooks.started = started
    registry.register(LoopCollector(loop, lambda: gather(scheduler)))
    return registry


def gather(s: Scheduler) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "gshare_jobs", "live jobs by state and queue", labels=["state", "queue"]
    )
    counts: dict[tuple[str, str], int] = {}
    for queue in s.config.queues:
        for live in JobState:
            if not live.final:
                counts[(live.value, queue)] = 0
    for job in s.state.jobs.values():
        key = (job.state.value, job.queue)
        counts[key] = counts.get(key, 0) + 1
    for (state_name, queue), n in sorted(counts.items()):
        jobs.add_metric([state_name, queue], n)
    gpus = GaugeMetricFamily("gshare_node_gpus", "GPUs per node by use", labels=["node", "use"])
    up = GaugeMetricFamily("gshare_node_up", "1 if the node's agent is connected", labels=["node"])
    for name, node in sorted(s.state.nodes.items()):
        busy = len(s.state.busy_gpus(name))
        drained = len(node.gpu_health)
        gpus.add_metric([name, "busy"], busy)
        gpus.add_metric([name, "drained"], drained)
        gpus.add_metric([name, "total"], len(node.gpus))
        up.add_metric([name], float(name in s.agents.sessions))
    s.accrue(s.clock())
    usage = GaugeMetricFamily(
        "gshare_fairshare_usage_gpu_seconds",
        "decayed GPU-seconds per user (the fair-share ledger)",
        labels=["account", "user"],
    )
    idle = GaugeMetricFamily(
        "gshare_idle_gpu_seconds", "decayed GPU-seconds held idle, per user", labels=["user"]
    )
    tree = s.cycle.accounts.with_users(set(s.ledger.usage))
    for user, value in sorted(s.ledger.usage.items()):
        path = tree.path_of(user)
        usage.add_metric([path[-1] if path else "", user], value)
    for user, value in sorted(s.ledger.idle_usage.items()):
        idle.add_metric([user], value)
    cycles = CounterMetricFamily("gshare_scheduling_cycles", "scheduling cycles run")
    cycles.add_metric([], s.cycle.count)
    dropped = CounterMetricFamily(
        "gshare_telemetry_dropped_messages", "telemetry messages dropped as malformed"
    )
    dropped.add_metric([], s.telemetry.dropped)
    connected = GaugeMetricFamily(
        "gshare_telemetry_connected", "1 while the scheduler is subscribed to the broker"
    )
    connected.add_metric([], float(s.telemetry.connected))
    samples = [g for g in s.telemetry.gpus.values() if s.telemetry.fresh(g.time)]
    return [jobs, gpus, up, usage, idle, cycles, dropped, connected, *gpu_families(samples)]
