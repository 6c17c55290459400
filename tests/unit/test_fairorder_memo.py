"""OrderMemo gives fair_order's list at every cycle, and fair_order the order its module
docstring defines (a plain reference below, the pre-memo code with the logarithmic key)."""

from __future__ import annotations

from dataclasses import replace
from math import log2

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.accounts import Account, AccountTree
from policies.fairorder import OrderMemo, fair_order
from policies.fairtree import FairTree, fair_tree
from policies.snapshot import PendingJob, RunningJob

INF = float("inf")
AGING = 1000.0
NOW = 50_000.0
# three teams, one without a share, one user without a share; "zed" falls to the default
CONFIGURED = AccountTree.build(
    Account(
        "root",
        1.0,
        (
            Account("t0", 3.0, (), (("ann", 1.0), ("bob", 2.0))),
            Account("t1", 1.0, (), (("cat", 1.0), ("dan", 0.0))),
            Account("t2", 0.0, (), (("eve", 1.0),)),
        ),
    )
)
USERS = ["ann", "bob", "cat", "dan", "eve", "zed"]
TREE = CONFIGURED.with_users(USERS)


def reference_order(
    pending: list[PendingJob], held_user: dict[str, int], ft: FairTree, now: float
) -> list[PendingJob]:
    """The order by the definition, one job at a time."""
    team_of = {u: TREE.path_of(u)[0] for u in USERS}

    def share(path: tuple[str, ...]) -> float:
        s = ft.standings.get(path)
        return s.share if s is not None else 0.0

    held_team: dict[str, float] = {}
    for user, gpus in held_user.items():
        held_team[team_of[user]] = held_team.get(team_of[user], 0) + gpus
    ordered = sorted(pending, key=lambda j: (-j.priority, j.submit_time, j.job_id))
    cum_user = {u: float(held_user.get(u, 0)) for u in USERS}
    user_key = {}
    for j in ordered:
        s = share((*TREE.path_of(j.user), j.user))
        user_key[j.job_id] = cum_user[j.user] * (1 / s) if s > 0 else INF
        cum_user[j.user] += j.gpus

    def rank_key(j: PendingJob) -> tuple[int, float, float, float, int]:
        factor = -ft.factors.get(j.user, 0.0)
        return (-j.priority, user_key[j.job_id], factor, j.submit_time, j.job_id)

    team_key = {}
    for team in set(team_of.values()):
        s = share((team,))
        cum = float(held_team.get(team, 0))
        for j in sorted((j for j in pending if team_of[j.user] == team), key=rank_key):
            if s <= 0:
                team_key[j.job_id] = INF
            else:
                wait = min(j.submit_time, now) / AGING
                team_key[j.job_id] = log2(cum / s) + wait if cum > 0 else -INF
            cum += j.gpus
    return sorted(pending, key=lambda j: (-j.priority, team_key[j.job_id], *rank_key(j)[1:]))


def running_of(held_user: dict[str, int]) -> list[RunningJob]:
    return [
        RunningJob(900 + i, user, "default", (("n", tuple(range(gpus))),), 0.0)
        for i, (user, gpus) in enumerate(held_user.items())
    ]


def assert_same(got: list[PendingJob], want: list[PendingJob]) -> None:
    assert [j.job_id for j in got] == [j.job_id for j in want]
    assert all(a is b for a, b in zip(got, want, strict=True))


def job(job_id: int, user: str, gpus: int = 1, submitted: float = 0.0, prio: int = 0) -> PendingJob:
    return PendingJob(job_id, user, "default", gpus, prio, submitted)


# ------------------------------------------------------------------ plain cases

JOBS = [
    job(1, "ann", 2, 10.0),
    job(2, "ann", 1, 20.0),
    job(3, "bob", 4, 15.0),
    job(4, "cat", 1, 5.0),
    job(5, "dan", 1, 1.0),
    job(6, "eve", 1, 2.0),
    job(7, "zed", 2, 3.0, prio=1),
    job(8, "cat", 1, NOW + 50),  # submitted after now: not waiting yet
]
HELD = {"ann": 4, "cat": 1}
USAGE = {"ann": 1e6, "bob": 5e5, "cat": 1e3, "zed": 10.0}


def test_the_first_call_is_the_order_by_definition() -> None:
    ft = fair_tree(TREE, USAGE)
    want = reference_order(JOBS, HELD, ft, NOW)
    assert_same(OrderMemo().order(JOBS, HELD, TREE, ft, NOW, AGING), want)
    assert_same(fair_order(JOBS, running_of(HELD), TREE, ft, NOW, AGING), want)
    # class 1 first (zed's team holds nothing: -inf); then by log2(team GPUs / share) +
    # submit / aging: 4 (1/0.2 -> 2.33), 3 (4/0.6 -> 2.75), 1 (8/0.6 -> 3.75), 5 (dan has
    # no share but t1 has: 3/0.2 -> 3.91), 2 (9/0.6 -> 3.93), 8 (submitted after now: waits
    # nothing, 53.3), and 6 last (t2 has no share: +inf)
    assert [j.job_id for j in want] == [7, 4, 3, 1, 5, 2, 8, 6]


def test_nothing_changed_gives_the_same_order_as_a_new_list() -> None:
    memo = OrderMemo()
    ft = fair_tree(TREE, USAGE)
    first = memo.order(JOBS, HELD, TREE, ft, NOW, AGING)
    again = memo.order(list(JOBS), dict(HELD), TREE, fair_tree(TREE, USAGE), NOW, AGING)
    assert again is not first
    assert_same(again, first)


def test_one_users_held_gpus_change() -> None:
    memo = OrderMemo()
    ft = fair_tree(TREE, USAGE)
    memo.order(JOBS, HELD, TREE, ft, NOW, AGING)
    held = {**HELD, "ann": 0}
    got = memo.order(JOBS, held, TREE, ft, NOW + 1, AGING)
    assert_same(got, reference_order(JOBS, held, ft, NOW + 1))
    # t0 holds nothing: bob's job first (-inf; ahead of ann's on the factor), and ann's
    # second job (6/0.6 -> 3.34) now ahead of dan's (3.91)
    assert [j.job_id for j in got] == [7, 3, 4, 1, 2, 5, 8, 6]


def test_a_teammate_with_nothing_pending_starts_holding() -> None:
    memo = OrderMemo()
    ft = fair_tree(TREE, USAGE)
    jobs = [j for j in JOBS if j.user != "bob"]
    memo.order(jobs, HELD, TREE, ft, NOW, AGING)
    held = {**HELD, "bob": 8}  # t0 holds 12: ann's jobs go behind dan's
    got = memo.order(jobs, held, TREE, ft, NOW, AGING)
    assert_same(got, reference_order(jobs, held, ft, NOW))
    assert [j.job_id for j in got] == [7, 4, 5, 1, 2, 8, 6]


def test_a_job_submitted_after_now_moves_as_the_clock_does() -> None:
    memo = OrderMemo()
    ft = fair_tree(TREE, USAGE)
    for now in (NOW, NOW + 40, NOW + 100, NOW + 3000):
        assert_same(
            memo.order(JOBS, HELD, TREE, ft, now, AGING), reference_order(JOBS, HELD, ft, now)
        )


def test_job_ids_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct job ids"):
        OrderMemo().order([job(1, "ann"), job(1, "bob")], {}, TREE, fair_tree(TREE, {}), NOW, AGING)


def test_many_jobs_of_one_user_come_and_go_at_once() -> None:
    memo = OrderMemo()
    ft = fair_tree(TREE, USAGE)
    jobs = [job(i, "ann", i % 3, NOW - 100 * (i % 7), prio=i % 2) for i in range(1, 31)]
    memo.order(jobs, HELD, TREE, ft, NOW, AGING)
    came = [job(i, "ann", 1, NOW - 50 * (i % 5), prio=i % 2) for i in range(31, 51)]
    jobs = [j for j in jobs if j.job_id % 3 == 0] + came  # 10 of each class's 15 go, 20 come
    got = memo.order(jobs, HELD, TREE, ft, NOW, AGING)
    assert_same(got, reference_order(jobs, HELD, ft, NOW))


@pytest.mark.parametrize(
    "listed",
    [
        [*JOBS, JOBS[2]],  # a kept job twice, in place
        [JOBS[2], *JOBS],  # a kept job twice, out of place
        [*JOBS[::-1], job(9, "ann"), JOBS[0]],  # moved, and twice
    ],
)
def test_a_job_listed_twice_is_refused_and_the_memo_still_works(listed: list[PendingJob]) -> None:
    memo = OrderMemo()
    ft = fair_tree(TREE, USAGE)
    memo.order(JOBS, HELD, TREE, ft, NOW, AGING)
    with pytest.raises(ValueError, match="listed twice"):
        memo.order(listed, HELD, TREE, ft, NOW, AGING)
    new = job(11, "bob", submitted=NOW - 5)
    jobs = [*JOBS[::-1], new]
    assert_same(memo.order(jobs, HELD, TREE, ft, NOW, AGING), reference_order(jobs, HELD, ft, NOW))


# ------------------------------------------------------------------ random cycles


@st.composite
def cycles(draw: st.DrawFn) -> list[dict[str, object]]:
    """Each cycle: jobs that come (as (user, gpus, priority, submit offset from now)), how
    many go and change, held GPUs, usage factor per user, and how far the clock moves."""
    steps = []
    for _ in range(draw(st.integers(1, 8))):
        steps.append(
            {
                "came": draw(
                    st.lists(
                        st.tuples(
                            st.sampled_from(USERS),
                            st.integers(0, 4),
                            st.sampled_from([0, 0, 1, 2]),
                            st.sampled_from([-3 * AGING, -AGING, -10.0, 0.0, 5.0, 2 * AGING])
                            | st.floats(-4 * AGING, AGING),
                        ),
                        max_size=12,
                    )
                ),
                "gone": draw(st.lists(st.integers(0, 10**6), max_size=4)),
                "changed": draw(st.lists(st.integers(0, 10**6), max_size=2)),
                "held": draw(
                    st.dictionaries(st.sampled_from(USERS), st.integers(0, 6), max_size=4)
                ),
                "usage": draw(
                    st.dictionaries(
                        st.sampled_from(USERS), st.sampled_from([0.0, 1.0, 50.0, 1e4]), max_size=6
                    )
                ),
                "tick": draw(st.sampled_from([0.0, 0.0, 1.0, 7.5, AGING])),
                # how the jobs are listed: as kept (most cycles), reversed, or rotated
                "listing": draw(st.sampled_from(["kept", "kept", "reversed", "rotated"])),
                "same_tree_object": draw(st.booleans()),
            }
        )
    return steps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cycles())
def test_the_memo_is_fair_order_at_every_cycle(steps: list[dict[str, object]]) -> None:
    memo = OrderMemo()
    pending: list[PendingJob] = []
    held: dict[str, int] = {}
    now = NOW
    next_id = 1
    for step in steps:
        for index in step["gone"]:  # type: ignore[attr-defined]
            if pending:
                pending.pop(index % len(pending))
        for index in step["changed"]:  # type: ignore[attr-defined]
            if pending:  # a changed job is a new object with the same id
                i = index % len(pending)
                pending[i] = replace(pending[i], gpus=(pending[i].gpus + 1) % 5)
        for user, gpus, prio, offset in step["came"]:  # type: ignore[attr-defined]
            pending.append(job(next_id, user, gpus, now + offset, prio))
            next_id += 1
        held = {**held, **step["held"]}  # type: ignore[dict-item]
        now += step["tick"]  # type: ignore[operator]
        tree = TREE if step["same_tree_object"] else CONFIGURED.with_users(USERS[::-1])
        ft = fair_tree(tree, step["usage"])  # type: ignore[arg-type]
        listed = list(pending)
        if step["listing"] == "reversed":
            listed.reverse()
        elif step["listing"] == "rotated":
            listed = listed[1:] + listed[:1]
        got = memo.order(tuple(listed), held, tree, ft, now, AGING)
        want = fair_order(pending, running_of(held), tree, ft, now, AGING)
        assert_same(got, want)
        assert_same(want, reference_order(pending, held, ft, now))
