"""One fate for a multi-node job's parts (schedulerd/gang.py), as pure functions: what
each report on a part changes, which parts are stopped, how the job ends; and placement
of N parts of G GPUs (policies/placement.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from policies import FreeMap, make_policy
from schedulerd.changes import JobReport
from schedulerd.gang import GangStep, gang_lost, gang_report
from schedulerd.jobstate import JobState
from schedulerd.ledger import Ledger
from schedulerd.model import JobPart, JobRecord
from tests.builders import job, node, running, snapshot


def gang(state: JobState = JobState.RUNNING, **kw: Any) -> JobRecord:
    parts = [
        JobPart("n0", 0, (0, 1), state="RUNNING", pid=10),
        JobPart("n1", 1, (2, 3), state="RUNNING", pid=20),
    ]
    record = JobRecord(
        7, "alice", 1000, 1000, "ddp", "default", 4, 0, 0, 0, 0, "/w", {}, "", [], "ddp.sh",
        state, 1.0, node="n0", gpu_indexes=[0, 1], parts=parts, master_port=29500,
        nodes=2, gpus_per_node=2,
    )  # fmt: skip
    for key, value in kw.items():
        setattr(record, key, value)
    return record


def apply(record: JobRecord, step: GangStep) -> JobRecord:
    """The record after the step's changes (as ClusterState.change would make it)."""
    out = replace(record)
    for change in step.changes:
        for key, value in change.fields:
            setattr(out, key, value)
        out.state = change.to_state
    return out


def ended(rc: int = 0, sig: int = 0, **kw: Any) -> JobReport:
    return JobReport(7, pid=1, exited=True, exit_code=rc, exit_signal=sig, **kw)


def test_running_once_every_part_runs() -> None:
    starting = gang(
        JobState.STARTING,
        parts=[JobPart("n0", 0, (0, 1)), JobPart("n1", 1, (2, 3))],
    )
    first = gang_report(starting, "n1", JobReport(7, pid=21), 5.0)
    assert [c.to_state for c in first.changes] == [JobState.STARTING] and not first.stop
    half = apply(starting, first)
    second = gang_report(half, "n0", JobReport(7, pid=11), 6.0)
    assert [c.to_state for c in second.changes] == [JobState.RUNNING]
    assert [p.pid for p in apply(half, second).parts] == [11, 21]
    # the same report again changes nothing; a node not of the job neither
    assert gang_report(apply(half, second), "n0", JobReport(7, pid=11), 7.0) == GangStep()
    assert gang_report(half, "n9", JobReport(7, pid=1), 7.0) == GangStep()


def test_a_failing_part_stops_the_others_and_the_job_fails_with_its_cause() -> None:
    step = gang_report(gang(), "n1", ended(3), 5.0)
    assert step.stop == ("n0",)
    [change] = step.changes
    assert change.kind == "gang-stop" and change.to_state is JobState.RUNNING
    stopping = apply(gang(), step)
    assert stopping.end_request == "FAILED"
    assert stopping.reason == "part 1 on n1 exited with code 3"
    assert [p.stopped for p in stopping.parts] == [True, False]
    # the stopped part ends by its TERM trap; the job ends FAILED with the first cause
    last = gang_report(stopping, "n0", ended(143), 6.0)
    assert not last.stop
    [end] = last.changes
    fields = dict(end.fields)
    assert end.to_state is JobState.FAILED and fields["reason"] == "part 1 on n1 exited with code 3"
    assert fields["exit_code"] == 3 and [p.exited for p in fields["parts"]] == [True, True]


def test_every_part_ending_well_completes_the_job() -> None:
    first = apply(gang(), gang_report(gang(), "n0", ended(0), 5.0))
    assert first.state is JobState.RUNNING and not first.end_request
    [end] = gang_report(first, "n1", ended(0), 6.0).changes
    assert end.to_state is JobState.COMPLETED


@pytest.mark.parametrize(
    ("codes", "to", "why"),
    [
        ((75, 75), JobState.PENDING, "all 2 parts yielded after their checkpoint"),
        ((75, 143), None, None),
    ],
)
def test_a_preempted_job_has_yielded_only_when_every_part_exits_75(
    codes: tuple[int, int], to: JobState | None, why: str | None
) -> None:
    preempting = gang(JobState.PREEMPTING, preempt_signal=10, grace_s=30.0)
    half = apply(preempting, gang_report(preempting, "n0", ended(codes[0]), 5.0))
    assert half.state is JobState.PREEMPTING
    changes = gang_report(half, "n1", ended(codes[1]), 6.0).changes
    if to is None:  # one did not yield: the job failed as that part did
        assert [c.to_state for c in changes] == [JobState.FAILED]
        assert dict(changes[0].fields)["reason"] == "part 1 on n1 exited with code 143"
    else:
        assert [c.to_state for c in changes] == [to] and changes[0].reason == why
        fields = dict(changes[0].fields)
        assert fields["parts"] == [] and fields["master_port"] == 0 and fields["restarts"] == 1


def test_a_lost_node_requeues_through_lost_once_the_others_are_gone() -> None:
    step = gang_lost(gang(), "n1", "lost: agent silent for more than 60s", 5.0)
    assert step.stop == ("n0",)
    stopping = apply(gang(), step)
    assert stopping.end_request == "PENDING"
    changes = gang_report(stopping, "n0", ended(0, 15), 6.0).changes
    assert [c.to_state for c in changes] == [JobState.LOST, JobState.PENDING]
    assert changes[1].reason == "part 1 on n1 lost: agent silent for more than 60s"


def test_a_part_that_cannot_launch_requeues_the_gang() -> None:
    starting = gang(JobState.STARTING, parts=[JobPart("n0", 0, (0,)), JobPart("n1", 1, (0,))])
    step = gang_report(starting, "n0", ended(127, error="user 1000 does not exist"), 5.0)
    assert step.stop == ("n1",)
    stopping = apply(starting, step)
    assert stopping.reason == "part 0 on n0 could not be launched: user 1000 does not exist"
    changes = gang_report(stopping, "n1", ended(0, 9), 6.0).changes
    assert [c.to_state for c in changes] == [JobState.PENDING]  # from STARTING: no LOST


def test_a_gang_that_never_launches_fails_after_max_restarts() -> None:
    """Requeued for a part that could not be launched, but not for ever: once it has been
    tried --max-restarts times it fails, with the part's reason."""
    parts = [JobPart("n0", 0, (0,)), JobPart("n1", 1, (0,))]
    starting = gang(JobState.STARTING, parts=parts, max_restarts=2, restarts=2)
    stopping = apply(starting, gang_report(starting, "n0", ended(127, error="no such dir"), 5.0))
    [end] = gang_report(stopping, "n1", ended(0, 9), 6.0).changes
    assert end.to_state is JobState.FAILED
    assert end.reason == (
        "part 0 on n0 could not be launched: no such dir; tried 3 times, over --max-restarts 2"
    )
    # below the limit it is requeued, counting the try
    again = gang(JobState.STARTING, parts=parts, max_restarts=2, restarts=1)
    stopping = apply(again, gang_report(again, "n0", ended(127, error="no such dir"), 5.0))
    [requeue] = gang_report(stopping, "n1", ended(0, 9), 6.0).changes
    assert requeue.to_state is JobState.PENDING and dict(requeue.fields)["restarts"] == 2


def test_a_cancel_ends_cancelled_when_the_last_part_is_gone() -> None:
    cancelling = gang(end_request="CANCELLED", reason="cancelled by alice")
    half = apply(cancelling, gang_report(cancelling, "n1", ended(143), 5.0))
    assert half.state is JobState.RUNNING and gang_report(half, "n1", ended(1), 5.5) == GangStep()
    [end] = gang_report(half, "n0", ended(143), 6.0).changes
    assert end.to_state is JobState.CANCELLED and end.reason == "cancelled by alice"


# ------------------------------------------------------------ placement


def test_n_parts_of_g_gpus_go_on_n_nodes_best_fit() -> None:
    free = FreeMap(
        [
            node("a").gpus(4).build(),
            node("b").gpus(4).busy(0, 1).build(),
            node("c").gpus(4).busy(0).build(),
            node("d").gpus(2).build(),
        ]
    )
    two_by_two = replace(job(1).gpus(4).build(), nodes=2, gpus_per_node=2)
    placement = free.find(two_by_two)
    assert placement is not None
    assert placement.parts == (("b", (2, 3)), ("d", (0, 1)))  # the fullest that fit
    three_by_three = replace(job(2).gpus(9).build(), nodes=3, gpus_per_node=3)
    assert free.find(three_by_three) is None  # only a and c have 3 free
    two_by_three = replace(job(3).gpus(6).build(), nodes=2, gpus_per_node=3)
    found = free.find(two_by_three)
    assert found is not None and found.parts == (("a", (0, 1, 2)), ("c", (1, 2, 3)))


def test_a_job_across_nodes_can_be_preempted_for_a_better_claim_on_one_of_them() -> None:
    gang_job = running(9, "a", 0, 1).across(("a", (0, 1)), ("b", (0, 1)))
    snap = snapshot(
        [node("a").gpus(2), node("b").gpus(2)], [job(1).gpus(2).priority(10)], run=[gang_job]
    )
    plan = make_policy("fairshare").decide(snap)
    assert [(p.job_id, p.for_job, p.node) for p in plan.preemptions] == [(9, 1, "a")]
    # a job across nodes never preempts for itself: it waits for its nodes
    wide = replace(job(2).gpus(4).priority(10).build(), nodes=2, gpus_per_node=2)
    blocked = snapshot([node("a").gpus(2), node("b").gpus(2)], [], run=[running(8, "a", 0, 1)])
    blocked = replace(blocked, pending=(wide,))
    assert make_policy("fairshare").decide(blocked).preemptions == ()


def test_the_ledger_charges_every_part_s_gpus() -> None:
    ledger = Ledger(7 * 86400.0)
    ledger.accrue(0.0, [gang()])
    ledger.accrue(10.0, [gang()])
    assert ledger.usage["alice"] == pytest.approx(40.0, rel=1e-4)  # 2 parts x 2 GPUs x 10 s


def test_a_part_that_ends_well_before_another_starts_counts_as_started() -> None:
    starting = gang(
        JobState.STARTING,
        parts=[JobPart("n0", 0, (0, 1)), JobPart("n1", 1, (2, 3))],
    )
    quick = apply(starting, gang_report(starting, "n0", ended(0), 5.0))
    assert quick.state is JobState.STARTING and not quick.end_request
    [running] = gang_report(quick, "n1", JobReport(7, pid=21), 6.0).changes
    assert running.to_state is JobState.RUNNING
    [end] = gang_report(apply(quick, GangStep((running,))), "n1", ended(0), 7.0).changes
    assert end.to_state is JobState.COMPLETED


def test_a_waiting_job_across_nodes_reserves_the_nodes_free_soonest() -> None:
    wide = replace(job(1).gpus(4).build(), nodes=2, gpus_per_node=2)
    snap = snapshot(
        [node("a").gpus(2), node("b").gpus(2), node("c").gpus(2)],
        [],
        run=[
            running(7, "a", 0, 1).limit(7200),  # ends in an hour (started an hour ago)
            running(8, "b", 0, 1).limit(3 * 3600),  # in two hours
            running(9, "c", 0).limit(2 * 3600 + 1800),  # c has one free; full in 1.5 h
        ],
    )
    snap = replace(snap, pending=(wide,))
    plan = make_policy("fifo").decide(snap)
    assert plan.starts == ()
    # a frees in 1 h and c in 1.5 h: it starts on a and c, in about 90 min
    assert "expected to start on a, c in about 90 min" in plan.reasons[1], plan.reasons[1]
