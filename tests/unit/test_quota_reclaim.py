"""Guarantees lent and taken back: borrowing, reclaim, the usage report, and the victim
sets and claims quotas allow, as tables over snapshots made with the test builders.
Limits, caps, GPU types and configuration are in test_quota_admission.py."""

from __future__ import annotations

import pytest

from policies import Plan, make_policy
from policies.quota import UserLimits
from policies.quotareport import quota_report
from tests.builders import NOW, guarantee, job, node, quotas, running, snapshot, teams

TREE = teams(vision=(50, {"alice": 1, "bob": 1}), nlp=(50, {"carol": 1}))
MIXED = [node("h0").gpus(4).model("NVIDIA H100 80GB HBM3"), node("a0").gpus(4).model("A100")]


def decide(snap: object, policy: str = "fairshare") -> Plan:
    return make_policy(policy).decide(snap)  # type: ignore[arg-type]


# ---------------------------------------------------------------- borrowing and reclaim


def nlp_holds_everything(ago: float = 3600) -> list[running]:
    return [
        running(20, "n0", 0, 1, 2, 3).user("carol").started(ago),
        running(21, "n1", 0, 1, 2, 3).user("carol").started(ago).checkpointed(60),
    ]


NODES = [node("n0").gpus(4), node("n1").gpus(4)]


@pytest.mark.parametrize(
    ("case", "quota", "run", "pending", "victims", "reason"),
    [
        (
            "a team under its guarantee reclaims from a borrower, least work lost first",
            quotas(vision=guarantee(4)),
            nlp_holds_everything(),
            [job(1).gpus(4).user("alice").submitted(NOW - 600)],
            [21],
            "team vision is under its guarantee (0 of 4 GPUs); reclaiming from borrowing "
            "teams nlp (8)",
        ),
        (
            "before reclaim_after it waits, and says when the reclaim happens",
            quotas(vision=guarantee(4)),
            nlp_holds_everything(),
            [job(1).gpus(4).user("alice").submitted(NOW - 60)],
            [],
            "reclaims from borrowing teams nlp (8) in about 4 min",
        ),
        (
            "no reclaim beyond the guarantee",
            quotas(vision=guarantee(2)),
            nlp_holds_everything(),
            [job(1).gpus(4).user("alice").submitted(NOW - 600)],
            [],
            "",
        ),
        (
            "no reclaim from a team within its own guarantee",
            quotas(vision=guarantee(4), nlp=guarantee(8)),
            nlp_holds_everything(),
            [job(1).gpus(4).user("alice").submitted(NOW - 600)],
            [],
            "no team borrows, the GPUs are in use within guarantees",
        ),
        (
            "victims younger than the minimum runtime are kept",
            quotas(vision=guarantee(4)),
            nlp_holds_everything(ago=60),
            [job(1).gpus(4).user("alice").submitted(NOW - 600)],
            [],
            "",
        ),
    ],
)
def test_reclaim(
    case: str,
    quota: object,
    run: list[running],
    pending: list[job],
    victims: list[int],
    reason: str,
) -> None:
    # the priority policy: no fair-share preemption, so what preempts here is the reclaim
    snap = snapshot(NODES, pending, run, TREE, quotas=quota)  # type: ignore[arg-type]
    plan = decide(snap, "priority")
    assert [p.job_id for p in plan.preemptions] == victims, case
    if victims:
        assert "team vision reclaims its guarantee (0 of 4 GPUs held) from team nlp" in (
            plan.preemptions[0].reason
        )
    if reason:
        assert reason in plan.reasons[1], (case, plan.reasons)


@pytest.mark.parametrize("policy", ["fairshare", "priority"])
def test_the_policies_that_preempt_reclaim_guarantees(policy: str) -> None:
    snap = snapshot(
        NODES,
        [job(1).gpus(4).user("alice").submitted(NOW - 600)],
        nlp_holds_everything(),
        TREE,
        quotas=quotas(vision=guarantee(4)),
    )
    assert [p.job_id for p in decide(snap, policy).preemptions] == [21]


def test_fair_share_does_not_take_gpus_a_team_holds_within_its_guarantee() -> None:
    # nlp holds all 8 GPUs, 2x its fair share: fair share alone would preempt it for vision
    pending = [job(1).gpus(4).user("alice")]
    plain = decide(snapshot(NODES, pending, nlp_holds_everything(), TREE))
    assert len(plain.preemptions) == 1
    guarded = snapshot(
        NODES, pending, nlp_holds_everything(), TREE, quotas=quotas(nlp=guarantee(8))
    )
    assert decide(guarded).preemptions == ()


def test_a_reclaim_by_type_takes_gpus_of_that_type_only() -> None:
    run = [
        running(20, "h0", 0, 1, 2, 3).user("carol").started(7200),
        running(21, "a0", 0, 1, 2, 3).user("carol"),
    ]
    quota = quotas(vision=guarantee({"a100": 4}))
    pending = [job(1).gpus(4).user("alice").submitted(NOW - 600).gpu_types("a100")]
    plan = decide(snapshot(MIXED, pending, run, TREE, quotas=quota))
    assert [p.job_id for p in plan.preemptions] == [21]
    assert "(0 of 4 a100 GPUs held)" in plan.preemptions[0].reason


def test_one_reclaim_per_guarantee_not_one_per_waiting_job() -> None:
    # vision is guaranteed 4 and has three 4-GPU jobs overdue: one reclaim gives it its 4
    pending = [job(i).gpus(4).user("alice").submitted(NOW - 600) for i in (1, 2, 3)]
    snap = snapshot(
        NODES, pending, nlp_holds_everything(), TREE, quotas=quotas(vision=guarantee(4))
    )
    plan = decide(snap, "priority")
    assert [(p.job_id, p.for_job) for p in plan.preemptions] == [(21, 1)]
    assert "under its guarantee" not in plan.reasons[2]  # the freed GPUs count as vision's


def test_a_victim_being_freed_counts_for_the_job_it_is_freed_for() -> None:
    # job 21 is already yielding to job 1: vision holds those GPUs, nothing more is reclaimed
    run = [
        running(20, "n0", 0, 1, 2, 3).user("carol"),
        running(21, "n1", 0, 1, 2, 3).user("carol").yielding_to(1),
    ]
    pending = [job(i).gpus(4).user("alice").submitted(NOW - 600) for i in (1, 2)]
    snap = snapshot(NODES, pending, run, TREE, quotas=quotas(vision=guarantee(4)))
    assert decide(snap, "priority").preemptions == ()


def test_fair_share_takes_a_team_down_to_its_guarantee_not_below() -> None:
    # vision holds 8 GPUs in 1-GPU jobs, 2x its share: nlp's 1-GPU jobs preempt two of them
    # (two tries a cycle); with 7 guaranteed to vision, only one
    run = [running(30 + i, f"n{i // 4}", i % 4).user("alice") for i in range(8)]
    pending = [job(i).user("carol") for i in (1, 2, 3)]
    assert len(decide(snapshot(NODES, pending, run, TREE)).preemptions) == 2
    snap = snapshot(NODES, pending, run, TREE, quotas=quotas(vision=guarantee(7)))
    assert len(decide(snap).preemptions) == 1


def test_free_gpus_are_not_lent_while_their_guaranteed_team_has_work_waiting() -> None:
    run = [running(20, "n0", 0, 1, 2, 3).user("carol")]
    pending = [job(1).gpus(4).user("carol").priority(-1), job(2).gpus(4).user("alice").priority(-2)]
    plain = decide(snapshot(NODES, pending, run, TREE), "priority")
    assert [s.job_id for s in plain.starts] == [1]  # first in line
    snap = snapshot(NODES, pending, run, TREE, quotas=quotas(vision=guarantee(4)))
    plan = decide(snap, "priority")
    assert [s.job_id for s in plan.starts] == [2]
    assert plan.reasons[1].startswith(
        "the free GPUs are guaranteed to team vision, which has work waiting for them"
    )


# ---------------------------------------------------------------- the usage report


def test_usage_report_says_who_borrows_and_when_the_reclaim_happens() -> None:
    quota = quotas(vision=guarantee(4), nlp=guarantee(2))
    snap = snapshot(
        NODES,
        [job(1).gpus(4).user("alice").submitted(NOW - 120)],
        nlp_holds_everything(),
        TREE,
        quotas=quota,
    )
    rows, warnings = quota_report(snap, quota)
    by = {r.account: r for r in rows}
    assert by["nlp"].holds == 8 and by["nlp"].borrowing == 6
    assert by["nlp"].borrows_from == ("vision",)  # vision's idle guarantee
    assert by["vision"].reclaim_from == ("nlp",) and by["vision"].reclaim_in_s == 180
    assert warnings == []


def test_usage_report_warns_when_guarantees_exceed_the_cluster() -> None:
    quota = quotas(vision=guarantee(6), nlp=guarantee({"a100": 6}))
    _, warnings = quota_report(snapshot(MIXED, [], [], TREE, quotas=quota), quota)
    assert warnings == [
        "guarantees add up to 12 GPUs, more than the 8 the registered nodes hold",
        "a100 guarantees add up to 6 GPUs, more than the 4 a100 GPUs the registered nodes hold",
    ]
    # a typed and an any-type guarantee on the same GPUs are GPUs promised twice
    quota = quotas(vision=guarantee({"a100": 4}), nlp=guarantee(4))
    one = [node("n0").gpus(4).model(A100)]
    _, warnings = quota_report(snapshot(one, [], [], TREE, quotas=quota), quota)
    assert warnings == ["guarantees add up to 8 GPUs, more than the 4 the registered nodes hold"]
    quota = quotas(vision=guarantee(6), nlp=guarantee(4))
    _, warnings = quota_report(snapshot(MIXED, [], [], TREE, quotas=quota), quota)
    assert warnings == ["guarantees add up to 10 GPUs, more than the 8 the registered nodes hold"]


# ---------------------------------------------------------------- victim sets and claims

A100 = "NVIDIA A100-SXM4-80GB"
PEERS = teams(vision=(50, {"alice": 1}), nlp=(50, {"carol": 1}), other=(1, {"dave": 1}))


def test_a_reclaim_of_several_victims_takes_no_more_than_the_team_borrows() -> None:
    # nlp is guaranteed 4 and holds 5 (borrows 1): four of its 1-GPU jobs on n0 would free
    # n0 for vision, but leave nlp at 1; no such set is taken
    run = [running(10 + i, "n0", i).user("carol") for i in range(4)]
    run += [
        running(20, "n1", 0).user("carol"),
        running(21, "n1", 1, 2, 3).user("dave").no_preempt(),
    ]
    snap = snapshot(
        NODES,
        [job(1).gpus(4).user("alice").submitted(NOW - 3600)],
        run,
        PEERS,
        quotas=quotas(reclaim_after_s=60, vision=guarantee(4), nlp=guarantee(4)),
    )
    assert decide(snap).preemptions == ()


def test_a_reclaim_may_round_up_to_one_whole_job() -> None:
    # nlp borrows 4 of its 8 in one 8-GPU job: the reclaim takes that job whole
    run = [running(20, "n0", *range(8)).user("carol")]
    snap = snapshot(
        [node("n0").gpus(8)],
        [job(1).gpus(4).user("alice").submitted(NOW - 3600)],
        run,
        TREE,
        quotas=quotas(reclaim_after_s=60, vision=guarantee(4), nlp=guarantee(4)),
    )
    assert [p.job_id for p in decide(snap, "priority").preemptions] == [20]


def test_fair_share_with_several_victims_leaves_the_team_its_guarantee() -> None:
    # nlp is guaranteed 6 and holds 8 in 1-GPU jobs (and a no-preempt 2-GPU job): vision's
    # 4-GPU job would need four of them, which leaves nlp 4
    run = [running(10 + i, "n0", i).user("carol") for i in range(6)]
    run += [running(30, "n0", 6, 7).user("carol").no_preempt()]
    snap = snapshot(
        [node("n0").gpus(8)],
        [job(1).gpus(4).user("alice").submitted(NOW - 60)],
        run,
        TREE,
        quotas=quotas(reclaim_after_s=10**9, nlp=guarantee(6)),
    )
    assert decide(snap).preemptions == ()
    # with a guarantee of 4, the same four victims are allowed
    snap = snapshot(
        [node("n0").gpus(8)],
        [job(1).gpus(4).user("alice").submitted(NOW - 60)],
        run,
        TREE,
        quotas=quotas(reclaim_after_s=10**9, nlp=guarantee(4)),
    )
    assert len(decide(snap).preemptions) == 4


def test_no_claim_for_a_job_its_quotas_would_hold_back_after_the_preemption() -> None:
    # a higher class may take nlp's GPUs within its guarantee, but nlp has work waiting for
    # them: vision's job would then be refused them ("guaranteed to team nlp"), so no
    # victim is preempted for it
    run = [running(10, "n0", 0, 1, 2, 3).user("carol")]
    pending = [job(1).gpus(4).user("alice").priority(1), job(2).gpus(4).user("carol")]
    snap = snapshot([node("n0").gpus(4)], pending, run, TREE, quotas=quotas(nlp=guarantee(4)))
    plan = decide(snap)
    assert plan.preemptions == ()
    # without the waiting job, the higher class takes them
    snap = snapshot([node("n0").gpus(4)], pending[:1], run, TREE, quotas=quotas(nlp=guarantee(4)))
    assert [p.job_id for p in decide(snap).preemptions] == [10]


@pytest.mark.parametrize(
    ("case", "claimant", "holder"),
    [
        ("typed guarantee reclaiming from an any-type one", "alice", "carol"),
        ("any-type guarantee reclaiming from a typed one", "carol", "alice"),
    ],
)
def test_typed_and_any_type_guarantees_do_not_reclaim_from_each_other(
    case: str, claimant: str, holder: str
) -> None:
    # vision is guaranteed 4 A100s, nlp 4 of any type; the node has 4 A100s: whoever holds
    # them holds them within its own guarantee
    q = quotas(reclaim_after_s=60, vision=guarantee({"a100": 4}), nlp=guarantee(4))
    snap = snapshot(
        [node("n0").gpus(4).model(A100)],
        [job(1).gpus(4).user(claimant).submitted(NOW - 3600)],
        [running(20, "n0", 0, 1, 2, 3).user(holder)],
        TREE,
        quotas=q,
    )
    assert decide(snap).preemptions == (), case


def test_a_typed_guarantee_is_not_borrowing_when_admitted() -> None:
    # vision is guaranteed 4 A100s only, nlp 8 of any type with work waiting for 8: vision's
    # job within its A100 guarantee starts on the A100s (it borrows nothing)
    q = quotas(vision=guarantee({"a100": 4}), nlp=guarantee(8))
    nodes = [node("n0").gpus(4).model(A100), node("n1").gpus(4).model("NVIDIA H100 80GB HBM3")]
    pending = [job(1).gpus(4).user("alice")]
    pending += [job(i).gpus(4).user("carol").priority(-1) for i in (2, 3)]
    plan = decide(snapshot(nodes, pending, [], TREE, quotas=q), "priority")
    assert [(s.job_id, s.node) for s in plan.starts] == [(1, "n0"), (2, "n1")]


@pytest.mark.parametrize(
    "cap",
    [
        quotas(nlp=guarantee(0, limit=8)),
        quotas(users={"carol": UserLimits(max_running_gpus=8)}),
    ],
)
def test_victims_still_yielding_count_against_limits_and_user_caps(cap: object) -> None:
    # carol's 8-GPU job on n0 is yielding to alice's job but still holds the GPUs
    run = [running(20, "n0", *range(8)).user("carol").yielding_to(1)]
    pending = [
        job(1).gpus(2).user("alice").submitted(NOW - 3600),
        job(2).gpus(8).user("carol").submitted(NOW - 100),
    ]
    nodes = [node("n0").gpus(8), node("n1").gpus(8)]
    plan = decide(snapshot(nodes, pending, run, TREE, quotas=cap))  # type: ignore[arg-type]
    assert 2 not in [s.job_id for s in plan.starts]
    assert "more would be over" in plan.reasons[2]


def test_a_claim_no_victim_yields_to_lapses() -> None:
    # job 1 claimed n0 earlier, but its victims are gone and nlp's job got the GPUs: the node
    # is not promised to job 1 for ever; its due reclaim takes it back
    q = quotas(reclaim_after_s=60, vision=guarantee(4))
    snap = snapshot(
        [node("n0").gpus(4)],
        [job(1).gpus(4).user("alice").submitted(NOW - 7200).claimed("n0")],
        [running(9, "n0", 0, 1, 2, 3).user("carol").started(7200)],
        TREE,
        quotas=q,
    )
    assert [p.job_id for p in decide(snap).preemptions] == [9]


def test_a_claim_still_being_freed_keeps_its_node() -> None:
    run = [running(9, "n0", 0, 1).user("carol").yielding_to(1)]
    pending = [job(1).gpus(4).user("alice").claimed("n0"), job(2).gpus(2).user("carol")]
    plan = decide(snapshot([node("n0").gpus(4)], pending, run, TREE))
    assert plan.starts == ()


def test_the_claimed_node_start_keeps_to_the_gpu_types_its_quotas_allow() -> None:
    # vision is at its A100 limit: its claimant does not start on its claimed A100 node
    q = quotas(vision=guarantee(0, limit={"a100": 4}))
    nodes = [
        node("n0").gpus(4).model(A100),
        node("n1").gpus(4).model(A100),
        node("n2").gpus(4).model("NVIDIA H100 80GB HBM3"),
    ]
    pending = [job(1).gpus(2).user("alice").submitted(NOW - 900).claimed("n0")]
    run = [running(9, "n1", 0, 1, 2, 3).user("alice")]
    plan = decide(snapshot(nodes, pending, run, TREE, quotas=q))
    assert [s.node for s in plan.starts] == ["n2"]


class _NoAgents:
    async def launch(self, job: object) -> None:
        raise AssertionError("nothing may start here")

    def preempt(self, job: object) -> None:
        raise AssertionError("nothing may be preempted here")

    def schedulable(self) -> list[str]:
        return ["n0000"]


async def test_the_cycle_lets_a_claim_lapse_once_no_victim_yields_to_it() -> None:
    # the daemon's own cycle: job 1 claimed n0000, its victims are gone, and its user's cap
    # now holds it back; the claim is cleared (and said why), not kept for ever
    from gshare.config import Config
    from schedulerd.changes import claim_change
    from schedulerd.cycle import Cycle
    from schedulerd.ledger import Ledger
    from schedulerd.model import GpuInfo, NodeRecord, NodeState
    from schedulerd.sim import TraceJob
    from schedulerd.simagents import _Clock, _submit
    from schedulerd.state import ClusterState, MemoryJournal

    clock = _Clock(NOW)
    journal = MemoryJournal()
    state = ClusterState(journal, clock)
    gpus = [GpuInfo(g, f"GPU-{g}", "sim", 81920, []) for g in range(4)]
    state.nodes["n0000"] = NodeRecord("n0000", gpus, 0, 0, state=NodeState.UP, last_seen=NOW)
    job_id = _submit(state, journal, TraceJob("j", NOW - 900, 60.0, 2, "alice", "vision"), NOW, 4)
    [claimant] = await state.change([claim_change(state.jobs[job_id], "n0000", "freed for it")])
    assert claimant.claimed_node == "n0000"
    ledger = Ledger(3600.0)
    cycle = Cycle(Config(), state, ledger, make_policy("fairshare"), _NoAgents(), lambda now: None)
    cycle.quotas = quotas(everyone=UserLimits(max_running_gpus=1))
    plan = await cycle.run()
    assert plan.starts == () and plan.preemptions == ()
    assert state.jobs[job_id].claimed_node == ""


@pytest.mark.parametrize(
    ("case", "holder", "reason", "reclaim_in"),
    [
        (
            "the only borrower runs --no-preempt",
            running(9, "n0", 0, 1, 2, 3).user("carol").no_preempt(),
            "team nlp borrows, but no borrowing job can be preempted",
            -1.0,
        ),
        (
            "the borrower's job is younger than min_runtime_s (600 s)",
            running(9, "n0", 0, 1, 2, 3).user("carol").started(100),
            "reclaims from borrowing teams nlp (4) in about 8 min",
            500.0,
        ),
    ],
)
def test_why_and_usage_promise_only_a_reclaim_that_can_happen(
    case: str, holder: running, reason: str, reclaim_in: float
) -> None:
    q = quotas(reclaim_after_s=60, vision=guarantee(4))
    snap = snapshot(
        [node("n0").gpus(4)],
        [job(1).gpus(4).user("alice").submitted(NOW - 3600)],
        [holder],
        TREE,
        quotas=q,
    )
    plan = decide(snap)
    assert plan.preemptions == (), case
    assert reason in plan.reasons[1], (case, plan.reasons[1])
    rows, _ = quota_report(snap, q, min_runtime_s=600)
    assert {r.account: r for r in rows}["vision"].reclaim_in_s == reclaim_in, case


def test_asking_admit_after_a_preemption_leaves_the_book_and_free_map_as_they_were() -> None:
    from policies.placement import FreeMap
    from policies.quotabook import QuotaBook

    q = quotas(vision=guarantee(4, limit=6), nlp=guarantee(2))
    run = [running(10, "n0", 0, 1, 2, 3).user("carol"), running(11, "n1", 0).user("alice")]
    snap = snapshot(NODES, [job(1).gpus(4).user("alice")], run, TREE, quotas=q)
    book = QuotaBook(snap, q)
    free = FreeMap(snap.nodes)
    before = (
        {t: dict(c) for t, c in book.held.items()},
        {t: dict(c) for t, c in book.physical.items()},
        dict(book.user_gpus),
        {n: set(g) for n, g in free.free.items()},
        free.free_count,
    )
    assert book.admit_after(snap.pending[0], free, [snap.running[0]]) == ""
    after = (
        {t: dict(c) for t, c in book.held.items()},
        {t: dict(c) for t, c in book.physical.items()},
        dict(book.user_gpus),
        {n: set(g) for n, g in free.free.items()},
        free.free_count,
    )
    assert after == before
    assert book.holds("nlp") == 4 and book.holds("vision", physical=True) == 1


def test_a_running_job_yielding_to_no_one_is_charged_whatever_the_job_ids() -> None:
    # yielding_to 0 means no one: a waiting job numbered 0 does not make every running
    # job's GPUs count as being freed for it (its team at its limit stays at its limit)
    run = [running(9, "n0", 0, 1, 2, 3).user("alice")]
    q = quotas(vision=guarantee(0, limit=4))
    plan = decide(snapshot(NODES, [job(0).user("bob")], run, TREE, quotas=q))
    assert plan.starts == ()
    assert "team vision holds 4 GPUs; 1 more would be over its limit of 4" in plan.reasons[0]
