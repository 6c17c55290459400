"""Quotas at admission: account limits and per-user caps, GPU types, and quotas and policy
parameters read from the configuration, as tables over snapshots made with the test
builders. Borrowing, reclaim and claims are in test_quota_reclaim.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gshare.config import Config, ConfigError, load_config
from policies import Plan, make_policy
from policies.quota import UserLimits, type_matches
from policies.registry import PolicyError
from schedulerd.cycle import quotas_of
from tests.builders import guarantee, job, node, quotas, running, snapshot, teams

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
