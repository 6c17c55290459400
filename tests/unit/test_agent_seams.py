"""The node agent's edges with their fakes: the link to the scheduler over a FakeLauncher,
and the telemetry publisher over a MemorySink (the real sides are tested with real
processes and a real Mosquitto in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gshare.api import gshare_pb2 as pb
from gshare.telemetry import gpu_topic, host_topic, status_topic
from nodeagent.gpus import FakeProbe
from nodeagent.lease import Lease
from nodeagent.link import SchedulerLink
from nodeagent.runner import FakeLauncher
from nodeagent.telemetry import MemorySink, TelemetryPublisher


def test_the_link_hands_the_schedulers_commands_to_the_launcher(tmp_path: Path) -> None:
    reports: list[pb.AgentMessage] = []
    launcher = FakeLauncher()
    link = SchedulerLink(
        "unix:/nonexistent", "n1", [], "fake", 4, 1024, launcher, Lease(tmp_path / "lease")
    )
    outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
    link._outbox = outbox
    launcher.on_change = link.report
    spec = pb.JobSpec(script=b"#!/bin/sh\n", workdir="/", preempt_signal=12, grace_s=5)
    launch = pb.Launch(job_id=7, spec=spec, gpu_indexes=[2, 3], user="ann", uid=1000, gid=1000)
    link._handle(pb.SchedulerMessage(launch=launch))
    link._handle(pb.SchedulerMessage(preempt=pb.Preempt(job_id=7, signal=12, grace_s=5)))
    link._handle(pb.SchedulerMessage(kill=pb.KillJob(job_id=7, grace_s=3)))
    launcher.end(7, exit_code=0)
    link._handle(pb.SchedulerMessage(forget=pb.Forget(job_id=7)))
    assert launcher.calls == [
        ("launch", 7, (2, 3)),
        ("preempt", 7, (12, 5.0)),
        ("kill", 7, 3.0),
        ("forget", 7, None),
    ]
    assert launcher.jobs == {}
    while not outbox.empty():
        reports.append(outbox.get_nowait())
    updates = [m.job_update for m in reports if m.HasField("job_update")]
    assert [(u.job_id, u.exited) for u in updates] == [(7, False), (7, True)]
    assert updates[0].pid > 0


async def test_telemetry_goes_to_the_sink_with_a_will_and_a_goodbye(tmp_path: Path) -> None:
    sink = MemorySink()
    probe = FakeProbe("n1", 2, dev_dir=tmp_path / "dev")
    publisher = TelemetryPublisher(sink, "n1", probe, lambda: [], interval_s=0.05)
    task = asyncio.create_task(publisher.run())
    try:
        for _ in range(100):
            topics = {m[0] for m in sink.messages}
            if {gpu_topic("n1", 0), gpu_topic("n1", 1), host_topic("n1")} <= topics:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [(will_topic, will)] = sink.wills
    assert will_topic == status_topic("n1") and json.loads(will)["online"] is False
    first, last = sink.messages[0], sink.messages[-1]
    assert first[0] == status_topic("n1") and json.loads(first[1])["online"] is True
    assert first[3] is True  # retained: a late subscriber still learns the node's state
    assert last[0] == status_topic("n1") and json.loads(last[1])["online"] is False
    sample = json.loads(next(m[1] for m in sink.messages if m[0] == gpu_topic("n1", 1)))
    assert sample["node"] == "n1" and sample["index"] == 1
