"""Which waiting jobs the plan hands to Slurm (policies/handoff.py), for every policy."""

from __future__ import annotations

from dataclasses import replace

import pytest

from policies import SlurmCapacity, make_policy
from tests.builders import NOW, job, node, snapshot

SLURM = SlurmCapacity(True, (4, 2))


@pytest.mark.parametrize("policy", ["fairshare", "priority", "fifo"])
def test_a_blocked_job_goes_after_waiting_while_slurm_has_room(policy: str) -> None:
    full = [node("n1").gpus(2).busy(0, 1)]
    jobs = [
        job(1).gpus(2).submitted(NOW - 700).handoff(600),  # waited long enough
        job(2).gpus(2).submitted(NOW - 100).handoff(600),  # not yet
        job(3).gpus(2).submitted(NOW - 900),  # never
        job(4).gpus(8).submitted(NOW - 900).handoff(600),  # no Slurm node that large free
    ]
    plan = make_policy(policy).decide(replace(snapshot(full, jobs), slurm=SLURM))
    assert [h.job_id for h in plan.handoffs] == [1]
    assert "waited 12 min" in plan.handoffs[0].reason
    assert 1 not in plan.reasons
    assert "no node with 8 free GPUs" in plan.reasons[4]


def test_always_goes_even_when_it_fits_here_and_slurm_is_full() -> None:
    free = [node("n1").gpus(4)]
    plan = make_policy("fairshare").decide(
        replace(snapshot(free, [job(1).gpus(1).handoff(0)]), slurm=SlurmCapacity(True, (0,)))
    )
    assert plan.starts == () and [h.job_id for h in plan.handoffs] == [1]


def test_slurm_room_is_spent_in_order_and_an_unreachable_slurm_takes_no_one() -> None:
    full = [node("n1").gpus(1).busy(0)]
    jobs = [job(i).gpus(2).submitted(NOW - 1000 + i).handoff(60) for i in (1, 2, 3)]
    room = SlurmCapacity(True, (3, 2))
    plan = make_policy("fifo").decide(replace(snapshot(full, jobs), slurm=room))
    assert [h.job_id for h in plan.handoffs] == [1, 2]  # 3 free: one job, 2 free: one more
    assert "no node with 2 free GPUs" in plan.reasons[3]
    down = SlurmCapacity(False, (), "slurmrestd unreachable")
    plan = make_policy("fifo").decide(replace(snapshot(full, jobs), slurm=down))
    assert plan.handoffs == () and "slurmrestd unreachable" in plan.reasons[1]


def test_without_slurm_nothing_is_handed_off_and_always_jobs_run_here() -> None:
    plan = make_policy("fairshare").decide(snapshot([node("n1").gpus(2)], [job(1).handoff(0)]))
    assert plan.handoffs == () and [s.job_id for s in plan.starts] == [1]
