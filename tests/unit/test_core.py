"""The scheduler's core without processes: the change builders as tables, the cycle on an
in-process core (fake agents, fake clock, SQLite in memory), and the daemon's core and
`gshare sim` making the same starts and preemptions in the same order."""

from __future__ import annotations

import asyncio
import heapq

import pytest

from gshare.checkpoint import YIELD_EXIT_CODE
from policies import make_policy
from schedulerd import agents as ag
from schedulerd.changes import JobReport, lost_changes, reconcile, report_changes
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord
from schedulerd.sim import TraceJob, simulate
from tests.builders import record
from tests.core import Core, FakeClock, config_for

R, P, S = JobState.RUNNING, JobState.PREEMPTING, JobState.STARTING

# (what the job is, what its agent reports) -> (the state it goes to, the kind of event,
# words its reason must hold, restarts after)
REPORTS = [
    ("started", record(S), JobReport(7, pid=9), [(R, "running", "", 2)]),
    ("a running job's pid again", record(R), JobReport(7, pid=9), []),
    ("completed", record(R), JobReport(7, exited=True), [(JobState.COMPLETED, "end", "", 2)]),
    (
        "exit 3",
        record(R),
        JobReport(7, exited=True, exit_code=3),
        [(JobState.FAILED, "end", "exited with code 3", 2)],
    ),
    (
        "killed",
        record(R),
        JobReport(7, exited=True, exit_signal=9),
        [(JobState.FAILED, "end", "killed by SIGKILL", 2)],
    ),
    (
        "launch failed",
        record(S),
        JobReport(7, exited=True, exit_code=127, error="no such user"),
        [(JobState.FAILED, "end", "launch failed: no such user", 2)],
    ),
    (
        "yielded",
        record(P),
        JobReport(7, exited=True, exit_code=YIELD_EXIT_CODE),
        [(JobState.PENDING, "requeue", "yielded after its checkpoint", 3)],
    ),
    (
        "ignored the signal",
        record(P),
        JobReport(7, exited=True, exit_signal=9, killed_after_grace=True),
        [(JobState.PENDING, "requeue", "ignored SIGUSR1", 3)],
    ),
    (
        "yielded past --max-restarts",
        record(P, max_restarts=2),
        JobReport(7, exited=True, exit_code=YIELD_EXIT_CODE),
        [(JobState.FAILED, "end", "over --max-restarts 2", 2)],
    ),
    (
        "completed while asked to yield",
        record(P),
        JobReport(7, exited=True),
        [(JobState.COMPLETED, "end", "", 2)],
    ),
    (
        "cancelled while asked to yield",
        record(P, end_request="CANCELLED", reason="cancelled by ann"),
        JobReport(7, exited=True, exit_code=YIELD_EXIT_CODE),
        [(JobState.CANCELLED, "end", "cancelled by ann", 2)],
    ),
    (
        "stopped by its node for a lost lease",
        record(R),
        JobReport(7, exited=True, exit_signal=10, lease_lost=True),
        [(JobState.PENDING, "requeue", "losing the scheduler for the lease", 3)],
    ),
    (
        "killed by its memory limit",
        record(R, mem_mb=32 * 1024),
        JobReport(7, exited=True, exit_signal=9, oom_killed=True),
        [(JobState.FAILED, "end", "out of memory (limit 32G)", 2)],
    ),
    (
        "failed after the OOM killer ended one of its processes",
        record(R, mem_mb=1536),
        JobReport(7, exited=True, exit_code=137, oom_killed=True),
        [(JobState.FAILED, "end", "out of memory (limit 1536M)", 2)],
    ),
    (
        "completed though the OOM killer ended one of its processes",
        record(R, mem_mb=512),
        JobReport(7, exited=True, oom_killed=True),
        [(JobState.COMPLETED, "end", "", 2)],
    ),
    (
        "cancelled, then out of memory",
        record(R, mem_mb=512, end_request="CANCELLED", reason="cancelled by ann"),
        JobReport(7, exited=True, exit_signal=9, oom_killed=True),
        [(JobState.CANCELLED, "end", "cancelled by ann", 2)],
    ),
]


@pytest.mark.parametrize(
    ("job", "report", "expected"), [r[1:] for r in REPORTS], ids=[r[0] for r in REPORTS]
)
def test_what_an_agents_report_changes(
    job: JobRecord, report: JobReport, expected: list[tuple[JobState, str, str, int]]
) -> None:
    changes = report_changes(job, "n1", report, now=50.0)
    assert [(c.to_state, c.kind) for c in changes] == [(e[0], e[1]) for e in expected]
    for change, (_, _, words, restarts) in zip(changes, expected, strict=True):
        fields = dict(change.fields)
        assert words in change.reason
        assert fields.get("restarts", job.restarts) == restarts
        if change.to_state is JobState.PENDING:  # back in the queue: off its node
            assert fields["node"] == "" and fields["gpu_indexes"] == []


def test_a_lost_nodes_jobs_are_requeued_or_get_the_end_asked_for() -> None:
    lost = lost_changes(record(R), "n1", "agent silent", now=9.0)
    assert [(c.to_state, c.kind) for c in lost] == [
        (JobState.LOST, "lost"),
        (JobState.PENDING, "requeue"),
    ]
    cancelled = lost_changes(record(R, end_request="CANCELLED"), "n1", "agent silent", 9.0)
    assert [c.to_state for c in cancelled] == [JobState.LOST, JobState.CANCELLED]


def test_reconciling_a_registering_agent() -> None:
    here = [
        record(R, job_id=1),  # still there: follow its report
        record(S, job_id=2),  # never started there: start again, no restart counted
        record(R, job_id=3),  # gone: its agent state was lost
        record(R, job_id=4, end_request="CANCELLED"),  # still runs though cancelled
    ]
    reported = [
        JobReport(1, pid=5),
        JobReport(4, pid=6),
        JobReport(8, pid=7),  # not its job any more, running: kill
        JobReport(9, exited=True),  # not its job, ended: forget
    ]
    plan = reconcile("n1", here, reported, now=3.0)
    assert [j.job_id for j, _ in plan.updates] == [1, 4]
    assert [(c.job_id, c.to_state, dict(c.fields).get("restarts")) for c in plan.changes] == [
        (2, JobState.PENDING, 2),
        (3, JobState.FAILED, None),
    ]
    assert plan.kill == (8,) and plan.forget == (9,) and plan.still_to_end == (4,)


# ---------------------------------------------------------------- the cycle, in-process


async def test_a_cycle_starts_a_job_and_a_cancel_kills_it() -> None:
    core = await Core.make(config_for({"g": ["ann"]}))
    try:
        await core.add_node("n1", 4)
        job_id = await core.submit("ann", 2, 100)
        sent = await core.cycle()
        [launch] = [c for c in sent if isinstance(c, ag.Launch)]
        assert launch.job.job_id == job_id and launch.job.gpu_indexes == [0, 1]
        assert core.job(job_id).state is JobState.RUNNING
        from schedulerd.peercred import Caller

        await core.s.verbs.cancel(Caller("ann", 1000, 1000), job_id)
        [kill] = core.agents["n1"].take()
        assert isinstance(kill, ag.Kill) and kill.job_id == job_id
        await core.report(job_id, JobReport(job_id, exited=True, exit_signal=15))
        assert job_id not in core.s.state.jobs
        stored = await core.s.db(core.s.store.job, job_id)
        assert stored is not None and stored.state is JobState.CANCELLED
        events = await core.s.db(core.s.store.events, job_id)
        assert [e.to_state for e in events] == [
            "PENDING",
            "STARTING",
            "RUNNING",
            "RUNNING",
            "CANCELLED",
        ]
        # every event is dated by the injected clock, not the wall clock
        assert {e.time for e in events} == {core.clock.now}
    finally:
        await core.close()


async def test_a_silent_node_is_down_after_its_lease_and_its_job_requeued() -> None:
    core = await Core.make(config_for({"g": ["ann"]}, node_lease_s=30.0))
    try:
        await core.add_node("n1", 4)
        await core.add_node("n2", 4)
        job_id = await core.submit("ann", 4, 100)
        await core.cycle()
        first = core.job(job_id).node
        other = "n2" if first == "n1" else "n1"
        core.clock.now += 20
        core.s.agents.heartbeat(core.agents[other].session)
        core.clock.now += 15  # 35 s since the first node was heard, 15 since the other
        await core.s.upkeep.expire_leases()
        assert core.s.state.nodes[first].state == "DOWN"
        assert core.s.state.nodes[other].state == "UP"
        assert first not in core.s.agents.sessions  # its stream is ended, silent or not
        assert any(isinstance(c, ag.Hangup) for c in core.agents[first].take())
        assert core.job(job_id).state is JobState.PENDING and core.job(job_id).restarts == 1
        await core.cycle()
        assert core.job(job_id).node == other
    finally:
        await core.close()


async def test_a_step_of_the_wall_clock_expires_no_lease() -> None:
    """Leases are kept on a monotonic clock: NTP stepping the wall clock an hour ahead
    must not make every node look silent and kill every job."""
    ticks = FakeClock(100.0)
    core = await Core.make(config_for({"g": ["ann"]}, node_lease_s=30.0), lease_clock=ticks)
    try:
        await core.add_node("n1", 4)
        job_id = await core.submit("ann", 4, 0)
        await core.cycle()
        core.clock.now += 3600
        await core.s.upkeep.expire_leases()
        assert core.s.state.nodes["n1"].state == "UP"
        assert core.job(job_id).state is JobState.RUNNING
        ticks.now += 31  # but a node really silent for the lease is down
        await core.s.upkeep.expire_leases()
        assert core.s.state.nodes["n1"].state == "DOWN"
    finally:
        await core.close()


async def test_a_registration_that_fails_half_way_leaves_no_session() -> None:
    core = await Core.make(config_for({"g": ["ann"]}))
    try:

        async def broken(node: object) -> None:
            raise OSError("disk gone")

        core.s.state.save_node = broken  # type: ignore[method-assign]
        session = ag.AgentSession("n1")
        with pytest.raises(OSError):
            await core.s.agents.connected(session, ag.Registration("n1", (), 1, 1, ()))
        assert "n1" not in core.s.agents.sessions  # the node's next agent is not refused
    finally:
        await core.close()


async def test_watch_streams_are_bounded() -> None:
    from schedulerd.errors import Refused
    from schedulerd.watchers import Watchers

    core = await Core.make(config_for({"g": ["ann"]}))
    try:
        watchers = Watchers(core.s, most=2, reserved=0)
        first = watchers.join()
        watchers.join()
        with pytest.raises(Refused) as refused:
            watchers.join()
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        watchers.leave(first)  # one ends: another may come
        watchers.join()
    finally:
        await core.close()


async def test_one_caller_cannot_take_every_watch_stream() -> None:
    """Each uid (or reader certificate) holds at most `per_caller` streams, and the last
    `reserved` are root's and admins' alone."""
    from schedulerd.errors import Refused
    from schedulerd.peercred import Caller
    from schedulerd.watchers import Watchers

    core = await Core.make(config_for({"g": ["ann"]}))
    nobody, ann = Caller("nobody", 65534, 65534), Caller("ann", 1000, 1000)
    reader = Caller("cert:grafana", -1, -1, via="tls")
    try:
        watchers = Watchers(core.s, most=6, per_caller=2, reserved=2)
        mine = [watchers.join(nobody), watchers.join(nobody)]
        with pytest.raises(Refused, match="uid 65534 holds 2 watch streams already"):
            watchers.join(nobody)
        watchers.join(reader)
        watchers.join(ann)  # others are not held up by nobody's streams...
        with pytest.raises(Refused, match="kept for root and admins") as refused:
            watchers.join(reader)  # ...until only the reserve is left
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        root = Caller("root", 0, 0)
        watchers.join(root, privileged=True)
        watchers.join(root, privileged=True)
        with pytest.raises(Refused, match="serves 6 watch streams"):
            watchers.join(root, privileged=True)
        watchers.leave(mine[0])
        watchers.leave(mine[0])  # twice: counted once
        assert watchers.held["uid 65534"] == 1 and len(watchers.queues) == 5
        watchers.join(root, privileged=True)  # the place is free again
    finally:
        await core.close()


# ---------------------------------------------------------------- one cycle, two clocks

TRACE = [
    TraceJob("long", 0, 4000, 4, "a", "g1"),
    TraceJob("short", 1000, 100, 2, "b", "g2"),
    TraceJob("small", 1200, 50, 1, "b", "g2"),
    TraceJob("other", 1300, 700, 2, "a", "g1"),
    TraceJob("late", 5000, 300, 3, "b", "g2"),
]


async def _drive_core(trace: list[TraceJob], gpus: int) -> Core:
    """The trace through the daemon's core: submits and ends at their virtual times,
    victims yielding at once, cycles repeated in the same instant after preemptions."""
    groups: dict[str, list[str]] = {}
    for t in trace:
        groups.setdefault(t.group, [])
        if t.user not in groups[t.group]:
            groups[t.group].append(t.user)
    core = await Core.make(config_for(groups))
    await core.add_node("n0000", gpus)
    events: list[tuple[float, int, int, int]] = []  # (time, 0 end / 1 submit, ref, run)
    for i, t in enumerate(trace):
        heapq.heappush(events, (t.submit, 1, i, 0))
    runs: dict[int, int] = {}  # job id -> how many times it was launched
    duration: dict[int, float] = {}
    while events:
        now = events[0][0]
        core.clock.now = now
        while events and events[0][0] == now:
            _, kind, ref, run = heapq.heappop(events)
            if kind == 1:
                job_id = await core.submit(
                    trace[ref].user, trace[ref].gpus, int(trace[ref].duration)
                )
                duration[job_id] = trace[ref].duration
            elif runs.get(ref) == run and ref in core.s.state.jobs:
                await core.report(ref, JobReport(ref, exited=True))
        for _ in range(4):
            if not any(j.state is JobState.PENDING for j in core.s.state.jobs.values()):
                break
            seen = len(core.launched)
            sent = await core.cycle()
            for command in sent:
                if isinstance(command, ag.Preempt):
                    report = JobReport(command.job_id, exited=True, exit_code=YIELD_EXIT_CODE)
                    await core.report(command.job_id, report)
            for at, job_id in core.launched[seen:]:
                runs[job_id] = runs.get(job_id, 0) + 1
                heapq.heappush(events, (at + duration[job_id], 0, job_id, runs[job_id]))
            if not any(isinstance(c, ag.Preempt) for c in sent):
                break
    return core


async def test_the_daemons_core_and_the_simulator_make_the_same_decisions() -> None:
    core = await _drive_core(TRACE, 4)
    try:
        sim = await asyncio.to_thread(  # the simulator runs an event loop of its own
            simulate,
            TRACE,
            make_policy("fairshare", {"explain": False}),
            1,
            4,
            checkpoint_every_s=0,
            restart_cost_s=0,
        )
        assert core.preempted, "the scenario must preempt"
        assert sim.starts == core.launched
        assert sim.preempted == core.preempted
        assert len(sim.starts) == len(TRACE) + len(sim.preempted)
    finally:
        await core.close()
