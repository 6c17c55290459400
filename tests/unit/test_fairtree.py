"""Fair Tree factors against examples worked out by hand."""

from __future__ import annotations

import math

import pytest

from policies import decayed_usage, fair_tree
from tests.builders import teams


def test_worked_example_three_users_two_teams() -> None:
    # vision 60 shares (alice 1, bob 1), nlp 40 (carol 1); usage alice 100, bob 300, carol 100.
    # Level 1: vision S=0.6 U=400/500=0.8 LF=0.75; nlp S=0.4 U=0.2 LF=2.0  -> nlp first.
    # In vision: alice S=0.5 U=0.25 LF=2; bob S=0.5 U=0.75 LF=0.67 -> alice, then bob.
    # Visiting order carol, alice, bob: factors 3/3, 2/3, 1/3.
    tree = teams(vision=(60, {"alice": 1, "bob": 1}), nlp=(40, {"carol": 1}))
    ft = fair_tree(tree, {"alice": 100, "bob": 300, "carol": 100})
    assert ft.factors == {"carol": 1.0, "alice": pytest.approx(2 / 3), "bob": pytest.approx(1 / 3)}
    assert ft.standings[("vision",)].level_fairshare == pytest.approx(0.75)
    assert ft.standings[("nlp",)].level_fairshare == pytest.approx(2.0)
    assert ft.standings[("vision", "bob")].usage_share == pytest.approx(0.75)
    assert ft.ratio(("vision",)) == pytest.approx(0.8 / 0.6)


def test_a_team_with_more_use_than_share_ranks_its_best_user_below_a_frugal_team() -> None:
    # Even alice, the lighter user of vision, ranks below carol: teams are compared first.
    tree = teams(vision=(50, {"alice": 1, "bob": 1}), nlp=(50, {"carol": 1}))
    ft = fair_tree(tree, {"alice": 1, "bob": 500, "carol": 400})
    # vision: S=.5 U=501/901 LF=0.899; nlp: S=.5 U=400/901 LF=1.126 -> nlp first
    assert [u for u, _ in sorted(ft.factors.items(), key=lambda kv: -kv[1])] == [
        "carol",
        "alice",
        "bob",
    ]


def test_unused_shares_tie_and_rank_first() -> None:
    tree = teams(x=(1, {"dave": 1, "erin": 1}), y=(1, {"frank": 1}))
    ft = fair_tree(tree, {"frank": 10})
    assert ft.factors == {"dave": 1.0, "erin": 1.0, "frank": pytest.approx(1 / 3)}


def test_users_outside_the_tree_land_in_the_default_account() -> None:
    tree = teams(x=(1, {"dave": 1})).with_users(["zoe"])
    assert tree.team_of("zoe") == "default" and tree.team_of("dave") == "x"
    ft = fair_tree(tree, {})
    assert ft.factors["dave"] == 1.0 and ft.factors["zoe"] == 0.5  # default has 0 shares here


def test_usage_decays_with_the_half_life() -> None:
    half_life = 7 * 86400.0
    later = decayed_usage({"a": 100.0}, {}, half_life, half_life)
    assert later["a"] == pytest.approx(50.0)
    # 2 GPUs for one half-life add 2 * h / ln 2 * (1 - 1/2) GPU-seconds, not 2 * h
    added = decayed_usage({}, {"b": 2}, half_life, half_life)["b"]
    assert added == pytest.approx(2 * half_life / math.log(2) * 0.5)
    # over a short interval, adding is almost plain GPU-seconds
    assert decayed_usage({}, {"b": 2}, 10.0, half_life)["b"] == pytest.approx(20.0, rel=1e-4)
