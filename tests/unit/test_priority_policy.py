from __future__ import annotations

import pytest

from policies import Plan, make_policy
from policies.registry import PolicyError
from tests.builders import job, node, snapshot


def started(plan: Plan) -> dict[int, str]:
    return {s.job_id: s.node for s in plan.starts}


def test_higher_priority_first_then_submit_order() -> None:
    snap = snapshot(
        [node("a").gpus(2)],
        [job(1).submitted(1), job(2).priority(5).submitted(2), job(3).submitted(0.5)],
    )
    plan = make_policy("priority").decide(snap)
    assert [s.job_id for s in plan.starts] == [2, 3]
    assert "behind" not in plan.reasons[1]
    assert plan.reasons[1] == "needs 1 GPUs on one node, largest free block is 0"


def test_fifo_ignores_priority() -> None:
    snap = snapshot([node("a").gpus(1)], [job(1).submitted(1), job(2).priority(5).submitted(2)])
    assert started(make_policy("fifo").decide(snap)) == {1: "a"}


def test_blocked_wide_job_holds_back_the_jobs_behind_it() -> None:
    snap = snapshot(
        [node("a").gpus(4).busy(0, 1), node("b").gpus(4).busy(0, 1, 2)],
        [job(1).gpus(4), job(2).gpus(1)],
    )
    plan = make_policy("priority").decide(snap)
    assert plan.starts == ()
    assert plan.reasons[1] == "needs 4 GPUs on one node, largest free block is 2"
    assert plan.reasons[2].startswith("2nd in line, behind job 1")


def test_a_job_no_node_can_hold_does_not_block_others() -> None:
    snap = snapshot([node("a").gpus(2)], [job(1).gpus(4), job(2).gpus(1)])
    plan = make_policy("priority").decide(snap)
    assert started(plan) == {2: "a"}
    assert plan.reasons[1] == "needs 4 GPUs on one node, the largest up node has 2"


def test_no_node_up() -> None:
    plan = make_policy("priority").decide(snapshot([node("a").gpus(2).down()], [job(1)]))
    assert plan.reasons[1] == "no node is up"


def test_starts_never_share_a_gpu() -> None:
    snap = snapshot(
        [node("a").gpus(4), node("b").gpus(2)], [job(i).gpus(1 + i % 2) for i in range(10)]
    )
    plan = make_policy("priority").decide(snap)
    held = [(s.node, g) for s in plan.starts for g in s.gpu_indexes]
    # 1 -> b, 2 -> a, 1 -> b, 2 -> a: every GPU taken once, then job 4 waits
    assert [s.job_id for s in plan.starts] == [0, 1, 2, 3]
    assert len(held) == len(set(held)) == 6


def test_decide_leaves_the_snapshot_as_it_was() -> None:
    snap = snapshot([node("a").gpus(4)], [job(1).gpus(2), job(2).gpus(2)])
    before = repr(snap)
    make_policy("priority").decide(snap)
    assert repr(snap) == before


def test_unknown_policy_and_bad_parameter() -> None:
    with pytest.raises(PolicyError, match="unknown scheduling policy 'nope'"):
        make_policy("nope")
    with pytest.raises(PolicyError, match="bad parameters"):
        make_policy("priority", {"weight": 3})
