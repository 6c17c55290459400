"""Jobs handed to Slurm count against quota limits and max_running_gpus (not guarantees):
in the snapshot (`ClusterSnapshot.elsewhere`), for starts here, and for further hand-offs."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from policies import ClusterSnapshot, Plan, SlurmCapacity, make_policy
from policies.quota import UserLimits
from schedulerd.cycle import take_snapshot
from schedulerd.jobstate import JobState
from tests.builders import guarantee, job, node, quotas, record, running, snapshot, teams

TREE = teams(vision=(50, {"alice": 1, "bob": 1}), nlp=(50, {"carol": 1}))
SLURM = SlurmCapacity(True, (8, 8))


def with_slurm(snap: ClusterSnapshot, **elsewhere: int) -> ClusterSnapshot:
    return replace(snap, slurm=SLURM, elsewhere=MappingProxyType(elsewhere))


def decide(snap: ClusterSnapshot) -> Plan:
    return make_policy("fairshare").decide(snap)


def test_gpus_in_slurm_count_against_a_users_max_running_gpus_here() -> None:
    caps = quotas(users={"alice": UserLimits(max_running_gpus=4)})
    snap = snapshot(
        [node("n0").gpus(8)], [job(1).gpus(2).user("alice")], accounts=TREE, quotas=caps
    )
    assert [s.job_id for s in decide(snap).starts] == [1]  # nothing elsewhere: it starts
    plan = decide(with_slurm(snap, alice=3))
    assert plan.starts == ()
    assert plan.reasons[1].startswith(
        "user alice runs 3 GPUs; 2 more would be over their max_running_gpus of 4"
    )


def test_gpus_in_slurm_count_against_the_accounts_limit_over_every_type() -> None:
    limit = quotas(vision=guarantee(0, limit=8))
    snap = snapshot(
        [node("n0").gpus(8)],
        [job(1).gpus(1).user("bob")],
        [running(9, "n0", 0, 1, 2, 3).user("alice")],
        accounts=TREE,
        quotas=limit,
    )
    assert [s.job_id for s in decide(with_slurm(snap, alice=3)).starts] == [1]  # 4 + 3 + 1
    plan = decide(with_slurm(snap, alice=3, bob=1))
    assert plan.starts == ()
    assert "team vision holds 8 GPUs; 1 more would be over its limit of 8" in plan.reasons[1]


def test_gpus_in_slurm_are_not_counted_for_guarantees_or_typed_limits() -> None:
    # their model is not known: a limit on one type does not count them, and a team's
    # guarantee is of GPUs here, so it is not held by what runs in Slurm
    typed = quotas(vision=guarantee(2, limit={"a100": 2}))
    snap = snapshot(
        [node("n0").gpus(4).model("A100-SXM4")],
        [job(1).gpus(2).user("alice")],
        accounts=TREE,
        quotas=typed,
    )
    assert [s.job_id for s in decide(with_slurm(snap, alice=16)).starts] == [1]


def test_a_hand_off_that_would_go_over_a_limit_waits_here() -> None:
    caps = quotas(users={"alice": UserLimits(max_running_gpus=4)})
    jobs = [job(i).gpus(2).user("alice").submitted(100 + i).handoff(0) for i in (1, 2, 3)]
    snap = snapshot([node("n0").gpus(1).busy(0)], jobs, accounts=TREE, quotas=caps)
    plan = decide(with_slurm(snap, alice=0))
    # the first two go (2 + 2 = 4); the third would make 6
    assert [h.job_id for h in plan.handoffs] == [1, 2]
    assert "not handed to Slurm: user alice runs 4 GPUs; 2 more would be over" in plan.reasons[3]
    plan = decide(with_slurm(snap, alice=4))
    assert plan.handoffs == ()  # already 4 in Slurm: none goes
    assert all("not handed to Slurm" in plan.reasons[i] for i in (1, 2, 3))


def test_without_quotas_hand_offs_are_not_limited() -> None:
    jobs = [job(i).gpus(2).user("alice").submitted(100 + i).handoff(0) for i in (1, 2, 3)]
    snap = snapshot([node("n0").gpus(1).busy(0)], jobs, accounts=TREE)
    assert [h.job_id for h in decide(with_slurm(snap, alice=40)).handoffs] == [1, 2, 3]


def test_the_snapshot_counts_jobs_handed_to_slurm_queued_or_running_there() -> None:
    jobs = [
        record(JobState.HANDED_OFF, job_id=1, user="alice", gpus=2),
        record(JobState.RUNNING_REMOTE, job_id=2, user="alice", gpus=4),
        record(JobState.HANDED_OFF, job_id=3, user="bob", gpus=1),
        record(JobState.COMPLETED, job_id=4, user="bob", gpus=8),  # done in Slurm: no more
        record(JobState.PENDING, job_id=5, user="carol", gpus=3),
    ]
    snap = take_snapshot(10.0, jobs, {}, [])
    assert dict(snap.elsewhere) == {"alice": 6, "bob": 1}
    assert [j.job_id for j in snap.pending] == [5]
