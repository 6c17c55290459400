"""Quotas (guaranteed, limit, lend, per-user caps), borrowing, reclaim and GPU types, as
tables over snapshots made with the test builders."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gshare.config import Config, ConfigError, load_config
from policies import Plan, make_policy
from policies.quota import UserLimits, type_matches
from policies.quotareport import quota_report
from policies.registry import PolicyError
from schedulerd.cycle import quotas_of
from tests.builders import NOW, guarantee, job, node, quotas, running, snapshot, teams

TREE = teams(vision=(50, {"alice": 1, "bob": 1}), nlp=(50, {"carol": 1}))


def decide(snap: object, policy: str = "fairshare") -> Plan:
    return make_policy(policy).decide(snap)  # type: ignore[arg-type]


# ---------------------------------------------------------------- admission: limits


@pytest.mark.parametrize(
    ("case", "quota", "run", "pending", "starts", "reason"),
    [
        (
            "team at its limit waits, though GPUs are free",
            quotas(vision=guarantee(0, limit=4)),
            [running(9, "n0", 0, 1, 2, 3).user("alice")],
            [job(1).user("bob")],
            [],
            "team vision holds 4 GPUs; 1 more would be over its limit of 4",
        ),
        (
            "team under its limit starts",
            quotas(vision=guarantee(0, limit=4)),
            [running(9, "n0", 0, 1).user("alice")],
            [job(1).gpus(2).user("bob")],
            [1],
            "",
        ),
        (
            "the limit counts the whole team, every user in it",
            quotas(vision=guarantee(0, limit=5)),
            [running(9, "n0", 0, 1, 2).user("alice")],
            [job(1).gpus(3).user("bob")],
            [],
            "over its limit of 5",
        ),
        (
            "a user at max_running_gpus waits",
            quotas(users={"alice": UserLimits(max_running_gpus=2)}),
            [running(9, "n0", 0, 1).user("alice")],
            [job(1).user("alice")],
            [],
            "user alice runs 2 GPUs; 1 more would be over their max_running_gpus of 2",
        ),
        (
            "the default max_running_gpus holds for users not named",
            quotas(everyone=UserLimits(max_running_gpus=1)),
            [],
            [job(1).gpus(2).user("carol")],
            [],
            "over their max_running_gpus of 1",
        ),
        (
            "a named user's own cap overrides the default",
            quotas(everyone=UserLimits(max_running_gpus=1), users={"carol": UserLimits(4)}),
            [],
            [job(1).gpus(2).user("carol")],
            [1],
            "",
        ),
        (
            "idle guaranteed GPUs of a team that does not lend stay free",
            quotas(nlp=guarantee(4, lend=False)),
            [],
            [job(1).gpus(4).user("alice"), job(2).gpus(2).user("alice")],
            [1],
            "the free GPUs are guaranteed to team nlp, which does not lend them",
        ),
        (
            "a team that does not lend still uses its own guarantee",
            quotas(nlp=guarantee(4, lend=False)),
            [],
            [job(1).gpus(4).user("carol"), job(2).gpus(4).user("carol")],
            [1, 2],
            "",
        ),
    ],
)
def test_admission(
    case: str,
    quota: object,
    run: list[running],
    pending: list[job],
    starts: list[int],
    reason: str,
) -> None:
    nodes = [node("n0").gpus(4), node("n1").gpus(4)]
    plan = decide(snapshot(nodes, pending, run, TREE, quotas=quota))  # type: ignore[arg-type]
    assert [s.job_id for s in plan.starts] == starts, case
    if reason:
        waiting = [r for j, r in plan.reasons.items() if j not in starts]
        assert any(reason in r for r in waiting), (case, plan.reasons)


def test_a_job_held_back_by_a_quota_does_not_hold_back_the_jobs_behind_it() -> None:
    nodes = [node("n0").gpus(4), node("n1").gpus(4)]
    run = [running(9, "n0", 0, 1, 2, 3).user("alice")]
    first = job(1).gpus(4).user("bob").submitted(1)  # vision at its limit: no reservation
    then = job(2).gpus(4).user("carol").submitted(2)
    snap = snapshot(nodes, [first, then], run, TREE, quotas=quotas(vision=guarantee(0, limit=4)))
    plan = decide(snap)
    assert [s.job_id for s in plan.starts] == [2]
    assert "limit of 4" in plan.reasons[1]


def test_no_account_goes_over_its_limit_in_one_cycle_of_many_starts() -> None:
    nodes = [node(f"n{i}").gpus(4) for i in range(4)]
    pending = [job(i).gpus(1 + i % 3).user("alice") for i in range(1, 20)]
    plan = decide(snapshot(nodes, pending, [], TREE, quotas=quotas(vision=guarantee(2, limit=7))))
    size = {j.build().job_id: j.build().gpus for j in pending}
    started = sum(size[s.job_id] for s in plan.starts)
    assert 0 < started <= 7


# ---------------------------------------------------------------- GPU types


MIXED = [node("h0").gpus(4).model("NVIDIA H100 80GB HBM3"), node("a0").gpus(4).model("A100")]


@pytest.mark.parametrize(
    ("wanted", "model", "matches"),
    [
        ("A100", "NVIDIA A100-SXM4-80GB", True),
        ("a100", "a100", True),
        ("a100-sxm4", "NVIDIA A100-SXM4-80GB", True),
        ("h100", "NVIDIA H100 80GB HBM3", True),
        ("a10", "NVIDIA A100-SXM4-80GB", False),
        ("A100-SXM4-80GB-X", "NVIDIA A100-SXM4-80GB", False),
        ("", "NVIDIA A100-SXM4-80GB", False),
        ("nvidia  a100", "NVIDIA A100-SXM4-80GB", True),
    ],
)
def test_gpu_type_names_match_models(wanted: str, model: str, matches: bool) -> None:
    assert type_matches(wanted, model) is matches


@pytest.mark.parametrize(
    ("types", "node_started", "reason"),
    [
        (("a100",), "a0", ""),
        (("H100",), "h0", ""),
        (("a100", "h100"), "h0", ""),  # either: best fit among both
        (("v100",), "", "needs 1 GPUs of type v100, 0 are up"),
    ],
)
def test_a_job_goes_only_on_gpus_of_its_types(
    types: tuple[str, ...], node_started: str, reason: str
) -> None:
    nodes = [node("h0").gpus(4).model("NVIDIA H100 80GB HBM3").busy(0), MIXED[1]]
    plan = decide(snapshot(nodes, [job(1).gpu_types(*types)]))
    assert [s.node for s in plan.starts] == ([node_started] if node_started else [])
    if reason:
        assert plan.reasons[1].startswith(reason)


def test_a_typed_job_waits_for_its_type_while_others_fill_the_rest() -> None:
    run = [running(9, "a0", 0, 1, 2, 3).user("carol").limit(7200)]
    pending = [job(1).gpus(4).gpu_types("a100"), job(2).gpus(4).user("bob")]
    plan = decide(snapshot(MIXED, pending, run))
    assert [(s.job_id, s.node) for s in plan.starts] == [(2, "h0")]
    assert "expected to start on a0" in plan.reasons[1]


def test_a_typed_job_preempts_only_on_nodes_of_its_type() -> None:
    run = [
        running(8, "h0", 0, 1, 2, 3).user("carol").started(7200),
        running(9, "a0", 0, 1, 2, 3).user("carol"),
    ]
    pending = [job(1).gpus(4).gpu_types("a100").priority(10)]
    plan = decide(snapshot(MIXED, pending, run))
    assert [p.job_id for p in plan.preemptions] == [9]  # not 8, though it loses more


def test_a_per_type_limit_sends_the_job_to_another_type() -> None:
    run = [running(9, "a0", 0, 1).user("alice")]
    quota = quotas(vision=guarantee(0, limit={"a100": 2}))
    plan = decide(snapshot(MIXED, [job(1).gpus(2).user("bob")], run, TREE, quotas=quota))
    assert [s.node for s in plan.starts] == ["h0"]
    only_a100 = job(2).gpus(2).user("bob").gpu_types("a100")
    plan = decide(snapshot(MIXED, [only_a100], run, TREE, quotas=quota))
    assert plan.starts == () and "team vision is at its a100 limit of 2" in plan.reasons[2]


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


# ---------------------------------------------------------------- configuration

GOOD = """
[fairshare]
reclaim_after = "10m"
max_running_gpus = 16
max_pending_jobs = 100

[fairshare.accounts.vision]
users = ["alice"]
guaranteed = 8
limit = 16

[fairshare.accounts.nlp]
users = ["carol"]
guaranteed = { A100 = 4, "*" = 6 }
limit = { A100 = 8 }
lend = false

[fairshare.users.alice]
max_running_gpus = 4
"""


def test_quotas_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "gshare.toml"
    path.write_text(GOOD)
    config = load_config(path)
    q = quotas_of(config)
    assert q is not None and q.reclaim_after_s == 600
    assert dict(q.accounts["vision"].guaranteed) == {"": 8}
    assert dict(q.accounts["vision"].limit) == {"": 16} and q.accounts["vision"].lend
    assert dict(q.accounts["nlp"].guaranteed) == {"A100": 4, "": 6}
    assert not q.accounts["nlp"].lend
    assert q.user_limits("alice") == UserLimits(4, 100)  # its own cap, the default queue cap
    assert q.user_limits("zed") == UserLimits(16, 100)
    assert quotas_of(Config()) is None  # no quota configured: the policies see none


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("guaranteed = -1", "[fairshare.accounts.t]: guaranteed must be between 0 and"),
        ("guaranteed = nan", "[fairshare.accounts.t]: guaranteed must be a whole number"),
        ("guaranteed = 2.5", "guaranteed must be a whole number of GPUs, not 2.5"),
        ("guaranteed = true", "guaranteed must be a whole number of GPUs, not True"),
        ("guaranteed = '4'", "guaranteed must be a whole number of GPUs, not '4'"),
        ("limit = inf", "limit must be a whole number of GPUs, not inf"),
        ("guaranteed = 8\nlimit = 4", "limit (4) must not be under guaranteed (8)"),
        ("guaranteed = {a100 = 4}\nlimit = {a100 = 2}", "limit.a100 (2) must not be under"),
        ("guaranteed = {a100 = -4}", "guaranteed.a100 must be between 0"),
        ('guaranteed = {"" = 4}', "guaranteed: bad GPU type name ''"),
        ('guaranteed = {"a\\u0000b" = 4}', "bad GPU type name"),
        ("lend = 'no'", "lend must be a bool"),
        ("gauranteed = 4", "unknown key 'gauranteed'"),
        ("guaranteed = 99999999999", "guaranteed must be between 0 and 10000000"),
        ("guaranteed = {A100 = 8}\nlimit = 4", "limit (4) must not be under guaranteed (8)"),
        (
            "guaranteed = {A100 = 2, h100 = 3}\nlimit = {'*' = 4}",
            "limit (4) must not be under guaranteed (5)",
        ),
        (
            "guaranteed = {A100 = 4, 'NVIDIA  a100' = 4}",
            "guaranteed: GPU types 'A100' and 'NVIDIA  a100' name the same GPUs",
        ),
        ("limit = {a100 = 4, A100 = 2}", "limit: GPU types 'a100' and 'A100' name the same"),
        ("shares = nan", "shares must be a finite number"),
    ],
)
def test_bad_quota_values_are_refused_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "gshare.toml"
    path.write_text(f"[fairshare.accounts.t]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fairshare]\nmax_running_gpus = -2", "max_running_gpus must be between 0"),
        ("[fairshare]\nmax_pending_jobs = 1.5", "max_pending_jobs must be a whole number"),
        ("[fairshare]\nreclaim_after = 'soon'", "reclaim_after: bad duration 'soon'"),
        ("[fairshare]\nreclaim_after = -5", "reclaim_after must not be negative"),
        ("[fairshare]\nreclaim_after = true", "reclaim_after must be a duration"),
        ("[fairshare.users.bob]\nmax_gpus = 2", "[fairshare.users.bob]: unknown key 'max_gpus'"),
        ("[fairshare]\nusers = 3", "[users] must be a table"),
        ("[fairshare]\nreclaim_after = 99999999999999999", "reclaim_after must be at most 30"),
        ("[fairshare]\nreclaim_after = '100000000000d'", "reclaim_after must be at most 30"),
        ("[fairshare]\nhalf_life = nan", "half_life must be positive"),
        ("[fairshare]\ndefault_shares = inf", "default_shares must be a finite number"),
    ],
)
def test_bad_user_limits_are_refused_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "gshare.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)


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
    from schedulerd.sim import TraceJob, _Clock, _submit
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
    ("policy", "params", "message"),
    [
        ("fairshare", {"min_runtime_s": math.nan}, "min_runtime_s must be a finite number"),
        ("fairshare", {"min_runtime_s": math.inf}, "min_runtime_s must be a finite number"),
        ("fairshare", {"fairshare_margin": math.nan}, "fairshare_margin must be a finite"),
        ("fairshare", {"min_runtime_s": "10m"}, "min_runtime_s must be a number, not '10m'"),
        ("fairshare", {"backfill": "yes"}, "backfill must be true or false"),
        ("priority", {"min_runtime_s": math.nan}, "min_runtime_s must be a finite number"),
        ("priority", {"weight_age": math.inf}, "weight_age must be a finite number"),
        ("priority", {"max_age_s": math.nan}, "max_age_s must be a finite number"),
    ],
)
def test_policy_parameters_that_are_not_finite_numbers_are_refused(
    policy: str, params: dict[str, object], message: str
) -> None:
    with pytest.raises(PolicyError) as err:
        make_policy(policy, params)
    assert message in str(err.value) and "\n" not in str(err.value)


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
