"""The simulator: trace reading, fairness arithmetic, and small replays worked out by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import ClusterSnapshot, Plan, make_policy
from policies.quota import AccountQuota, Quotas
from schedulerd.sim import TraceError, TraceJob, jain, read_trace, simulate, water_fill

HEADER = "job_id,submit_time_s,duration_s,gpus,user,group,status\n"


def test_water_filling_is_max_min_capped_by_demand() -> None:
    # 10 GPUs, equal weights: a wants 2 (gets it), b and c split the remaining 8
    assert water_fill(10, {"a": 2, "b": 9, "c": 9}, {"a": 1, "b": 1, "c": 1}) == pytest.approx(
        {"a": 2, "b": 4, "c": 4}
    )
    # weights 3:1 with plenty of demand
    assert water_fill(8, {"a": 8, "b": 8}, {"a": 3, "b": 1}) == pytest.approx({"a": 6, "b": 2})
    assert water_fill(8, {"a": 1}, {"a": 1}) == {"a": 1}


def test_jain_index() -> None:
    assert jain([1, 1, 1]) == pytest.approx(1.0)
    assert jain([1, 0]) == pytest.approx(0.5)
    assert jain([2, 1]) == pytest.approx(9 / 10)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "j,10,abc,1,u,g,completed",
            "duration_s must be a number, not 'abc'",
        ),
        ("j,10,0,1,u,g,completed", "duration_s must be more than 0"),
        ("j,-1,5,1,u,g,completed", "submit_time_s must be at least 0"),
        ("j,10,5,1.5,u,g,completed", "gpus must be a whole number"),
        ("j,10,5,0,u,g,completed", "gpus must be at least 1"),
        ("j,10,5,1,,g,completed", "empty user"),
        ("j,10,5,1,u,g,finished", "status must be one of completed, failed, killed"),
        ("j,10,5,1,u", "5 fields, expected 7"),
    ],
)
def test_bad_rows_name_their_line(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "ok,0,5,1,u,g,completed\n" + row + "\n")
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert str(err.value).startswith(f"{path}:3: ") and message in str(err.value)


def test_bad_header_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n")
    with pytest.raises(TraceError, match=":1: the header must be"):
        read_trace(path)
    with pytest.raises(TraceError, match="cannot read trace"):
        read_trace(tmp_path / "none.csv")


def job(name: str, submit: float, duration: float, gpus: int, user: str, group: str) -> TraceJob:
    return TraceJob(name, submit, duration, gpus, user, group)


def test_fifo_replay_by_hand() -> None:
    # one node of 2 GPUs: A (2 GPUs, 100 s) at 0, B (1 GPU, 50 s) at 10, C (1 GPU, 50 s) at 20.
    # A runs 0-100; B and C wait, then run 100-150 side by side.
    trace = [
        job("A", 0, 100, 2, "u1", "g1"),
        job("B", 10, 50, 1, "u2", "g2"),
        job("C", 20, 50, 1, "u2", "g2"),
    ]
    r = simulate(trace, make_policy("fifo", {"explain": False}), 1, 2)
    assert r.jobs == 3 and r.makespan_s == 150
    assert r.avg_jct_s == pytest.approx((100 + 140 + 130) / 3)
    assert r.avg_wait_s == pytest.approx((0 + 90 + 80) / 3) and r.p95_wait_s == 90
    assert r.utilization == pytest.approx((2 * 100 + 2 * 50) / (2 * 150))
    assert r.preemptions == 0
    # 0-10: only g1 wants GPUs (index 1); 10-100: g1 holds 2, g2 wants 1 and 2: entitled 1 each,
    # allocations 2 and 0 -> ratios 2, 0 -> Jain 0.5; 100-150: g2 alone holds what it wants
    assert r.jain_fairness == pytest.approx((10 * 1 + 90 * 0.5 + 50 * 1) / 150)
    assert r.groups["g1"]["share"] == pytest.approx(200 / 300)


def test_jobs_wider_than_the_cluster_are_left_out_and_counted() -> None:
    r = simulate(
        [job("A", 0, 10, 1, "u", "g"), job("B", 0, 10, 64, "u", "g")], make_policy("fifo"), 2, 4
    )
    assert r.jobs == 1 and r.left_out == 1


def test_preempted_work_is_lost_back_to_the_last_checkpoint() -> None:
    # one 4-GPU node; g1 runs a long job alone; g2 arrives later and is entitled to half.
    # fair-share preemption stops g1's job (after the 600 s minimum runtime); it resumes from its
    # last checkpoint (every 300 s) and pays the 60 s restart cost.
    trace = [job("long", 0, 4000, 4, "a", "g1"), job("short", 1000, 100, 2, "b", "g2")]
    r = simulate(
        trace,
        make_policy("fairshare", {"explain": False}),
        1,
        4,
        checkpoint_every_s=300,
        restart_cost_s=60,
    )
    assert r.preemptions == 1
    # "long" ran 0-1000: 900 s saved (3 checkpoints), 100 s lost; "short" runs 1000-1100;
    # "long" restarts at 1100 with 3100 s left plus 60 s: ends at 4260
    assert r.makespan_s == pytest.approx(4260)
    r0 = simulate(
        trace,
        make_policy("fairshare", {"explain": False}),
        1,
        4,
        checkpoint_every_s=0,
        restart_cost_s=60,
    )
    assert r0.makespan_s == pytest.approx(1100 + 60 + 4000)  # no checkpoints: everything is lost


def test_the_shared_trace_reads(tmp_path: Path) -> None:
    trace = (
        Path(__file__).resolve().parents[2].parent
        / "shared"
        / "traces"
        / "philly-2017-09-24_2017-09-27.csv"
    )
    if not trace.exists():
        pytest.skip("the shared traces are not beside this checkout")
    jobs = read_trace(trace)
    assert len(jobs) == 3178 and {j.gpus for j in jobs} == {1, 2, 4, 8, 16, 28, 32}


# ------------------------------------------------------------------ the cost of decisions


def test_preemption_cost_by_hand() -> None:
    # "long" (4 GPUs) is preempted at 1000 s with its last checkpoint at 900 s: 100 s x 4 GPUs
    # of work lost; it pays the 60 s restart cost on 4 GPUs when it starts again
    trace = [job("long", 0, 4000, 4, "a", "g1"), job("short", 1000, 100, 2, "b", "g2")]
    fair = make_policy("fairshare", {"explain": False})
    r = simulate(trace, fair, 1, 4, checkpoint_every_s=300, restart_cost_s=60)
    assert r.preemptions == 1
    assert r.lost_work_gpu_h == pytest.approx(400 / 3600)
    assert r.restart_gpu_h == pytest.approx(240 / 3600)
    assert r.preemption_gpu_h == pytest.approx(640 / 3600)
    figures = r.as_json()
    assert figures["preemption_gpu_h"] == pytest.approx(640 / 3600)
    # no checkpoints: all 1000 s of its run are lost
    r0 = simulate(trace, fair, 1, 4, checkpoint_every_s=0, restart_cost_s=60)
    assert r0.lost_work_gpu_h == pytest.approx(4000 / 3600)


def test_idle_gpus_held_for_a_reservation_by_hand() -> None:
    # one 4-GPU node, fifo. A (3 GPUs) runs 0-100; B (4 GPUs) waits for it, reserved at 100;
    # C (1 GPU, 200 s, at 20) would fit the free GPU but would delay B: it stays idle 20-100
    trace = [
        job("A", 0, 100, 3, "u1", "g1"),
        job("B", 10, 100, 4, "u2", "g2"),
        job("C", 20, 200, 1, "u3", "g3"),
    ]
    r = simulate(trace, make_policy("fifo", {"explain": False}), 1, 4)
    assert r.idle_gpu_h == pytest.approx({"reservation": 80 / 3600})
    assert r.preemption_gpu_h == 0


def test_idle_gpus_by_fragmentation_by_hand() -> None:
    # two 2-GPU nodes full of 1-GPU jobs; at 100 s one job ends on each node: 2 GPUs free,
    # but not on one node, while E (2 GPUs) waits until 200 s
    trace = [
        job("A", 0, 100, 1, "u1", "g1"),
        job("B", 0, 200, 1, "u1", "g1"),
        job("C", 0, 100, 1, "u1", "g1"),
        job("D", 0, 200, 1, "u1", "g1"),
        job("E", 1, 50, 2, "u2", "g2"),
    ]
    r = simulate(trace, make_policy("fifo", {"explain": False}), 2, 2)
    assert r.idle_gpu_h == pytest.approx({"fragmentation": 200 / 3600})


def test_group_by_user_and_an_empty_group_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        HEADER
        + "a,0,100,1,alice,,completed\n"
        + "b,0,100,1,bob,,completed\n"
        + "c,0,100,1,carol,vision,completed\n"
        + "d,0,100,1,dave,vision,completed\n"
    )
    jobs = read_trace(path)
    fifo = make_policy("fifo", {"explain": False})
    by_group = simulate(jobs, fifo, 1, 4)
    assert set(by_group.groups) == {"alice", "bob", "vision"}  # empty: the user alone
    by_user = simulate(jobs, fifo, 1, 4, group_by="user")
    assert set(by_user.groups) == {"alice", "bob", "carol", "dave"}
    assert by_user.group_by == "user" and by_user.jobs == 4
    with pytest.raises(TraceError, match="group_by must be one of group, user"):
        simulate(jobs, fifo, 1, 4, group_by="team")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("j,10,5,1,u\x00x,g,completed", "user has a control character"),
        ("j,10,5,1,u,g\x1b[31m,completed", "group has a control character"),
        ("j,10,5,1," + "u" * 300 + ",g,completed", "user longer than 256 characters"),
        ("j,10,nan,1,u,g,completed", "duration_s must be more than 0"),
        ("j,inf,5,1,u,g,completed", "submit_time_s must be at least 0"),
        ("j,10,5,1e400,u,g,completed", "gpus must be at least 1"),
    ],
)
def test_hostile_rows_name_their_line(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "ok,0,5,1,u,g,completed\n" + row + "\n")
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert str(err.value).startswith(f"{path}:3: ") and message in str(err.value)


def test_binary_and_oversized_traces_are_refused(tmp_path: Path) -> None:
    binary = tmp_path / "b.csv"
    binary.write_bytes(HEADER.encode() + b"\xff\xfe\x00garbage\n")
    with pytest.raises(TraceError, match="not UTF-8 text"):
        read_trace(binary)
    huge = tmp_path / "h.csv"
    huge.write_text(HEADER + "j,0,5,1,u," + "g" * 200_000 + ",completed\n")
    with pytest.raises(TraceError, match=":2: not CSV: field larger than field limit"):
        read_trace(huge)
    with pytest.raises(TraceError, match="cannot read trace"):
        read_trace(tmp_path)  # a directory


# ------------------------------------------------------------------ the order never starves

TRACE_JOB = st.builds(
    job,
    st.just("j"),
    st.integers(0, 5000).map(float),
    st.integers(1, 3000).map(float),
    st.sampled_from([1, 1, 2, 4]),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(["g1", "g2", ""]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trace=st.lists(TRACE_JOB, min_size=1, max_size=14),
    nodes=st.integers(1, 2),
    order=st.sampled_from(["least_work_lost", "youngest", "lowest_priority"]),
    group_by=st.sampled_from(["group", "user"]),
)
def test_every_job_runs_to_its_end(
    trace: list[TraceJob], nodes: int, order: str, group_by: str
) -> None:
    """Whatever the mix, the default policy finishes every job of a finite trace (no job
    starves behind fair share, no preemption loop), and the cost report adds up."""
    policy = make_policy("fairshare", {"explain": False, "victim_order": order})
    r = simulate(
        trace, policy, nodes, 4, checkpoint_every_s=300, restart_cost_s=30, group_by=group_by
    )
    assert r.jobs == len(trace)
    assert r.preemption_gpu_h == pytest.approx(r.lost_work_gpu_h + r.restart_gpu_h)
    work = sum(t.duration * t.gpus for t in trace) / 3600
    busy = r.utilization * nodes * 4 * r.makespan_s / 3600
    # the GPUs were busy with the work, what preemption lost, and the restarts: no more
    assert busy == pytest.approx(work + r.preemption_gpu_h, rel=1e-6, abs=1e-6)


def test_a_cause_the_policy_names_is_reported_as_such() -> None:
    # the reservation case above, under a policy that says it held the waiting jobs back
    # for a reason of its own (Plan.held): the idle GPU-hours go to that cause
    class Holding:
        name = "holding"

        def __init__(self) -> None:
            self.inner = make_policy("fifo", {"explain": False})

        def decide(self, snapshot: ClusterSnapshot) -> Plan:
            plan = self.inner.decide(snapshot)
            started = {s.job_id for s in plan.starts}
            held = {j.job_id: "quota" for j in snapshot.pending if j.job_id not in started}
            return replace(plan, held=MappingProxyType(held))

    trace = [
        job("A", 0, 100, 3, "u1", "g1"),
        job("B", 10, 100, 4, "u2", "g2"),
        job("C", 20, 200, 1, "u3", "g3"),
    ]
    r = simulate(trace, Holding(), 1, 4)
    assert r.idle_gpu_h == pytest.approx({"quota": 80 / 3600})


def test_jobs_wider_than_a_node_run_across_nodes_as_the_daemon_runs_them() -> None:
    # 3 nodes of 4 GPUs: a 8-GPU job takes two of them (parts of 4), a 6-GPU job two parts
    # of 3; they cannot run together (no two nodes left with 3 free), so the second waits
    trace = [job("wide", 0, 100, 8, "a", "g1"), job("odd", 10, 50, 6, "b", "g2")]
    r = simulate(trace, make_policy("fifo", {"explain": False}), 3, 4)
    assert r.jobs == 2 and r.left_out == 0
    assert r.starts == [(0, 1), (100, 2)] and r.makespan_s == 150
    assert r.avg_jct_s == pytest.approx((100 + 140) / 2)
    # preempted and resumed as one, through the same change builders
    trace = [job("wide", 0, 4000, 8, "a", "g1"), job("short", 1000, 100, 4, "b", "g2")]
    r = simulate(
        trace,
        make_policy("fairshare", {"explain": False}),
        2,
        4,
        checkpoint_every_s=300,
        restart_cost_s=60,
    )
    assert r.preemptions == 1 and r.makespan_s == pytest.approx(4260)


def test_a_reclaim_waiting_on_the_minimum_runtime_happens_when_it_passes() -> None:
    # g1 is guaranteed the node; g2's job has held it since 0. g1's job is due at 70, but
    # g2's job passes min_runtime_s (600) only at 600: the reclaim happens then, as the
    # daemon's heartbeat would make it, not when g2's job ends at 20000
    q = Quotas(
        MappingProxyType({"g1": AccountQuota(MappingProxyType({"": 4}))}), reclaim_after_s=60.0
    )
    trace = [TraceJob("a", 0, 20000, 4, "u2", "g2"), TraceJob("b", 10, 100, 4, "u1", "g1")]
    r = simulate(trace, make_policy("fairshare", {"explain": False}), 1, 4, quotas=q)
    assert r.preempted == [(600.0, 1)]
    assert (600.0, 2) in r.starts


def test_gpus_idle_for_a_quota_are_booked_to_the_quota() -> None:
    # one 4-GPU node; g1's limit is 2 and it sends four 1-GPU 100 s jobs at 0: two GPUs
    # stay idle 0-100 only for the limit (2 x 100 GPU-s)
    q = Quotas(MappingProxyType({"g1": AccountQuota(limit=MappingProxyType({"": 2}))}))
    trace = [TraceJob(f"j{i}", 0, 100, 1, "u1", "g1") for i in range(4)]
    r = simulate(trace, make_policy("fairshare", {"explain": False}), 1, 4, quotas=q)
    assert r.idle_gpu_h == pytest.approx({"quota": 200 / 3600})
