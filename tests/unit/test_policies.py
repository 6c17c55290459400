"""The built-in policies on small hand-made clusters: order, backfill, preemption, reasons."""

from __future__ import annotations

import pytest

from policies import Plan, make_policy
from policies.registry import PolicyError
from tests.builders import NOW, job, node, running, snapshot, teams


def started(plan: Plan) -> list[int]:
    return [s.job_id for s in plan.starts]


# ------------------------------------------------------------------ order


def test_fifo_is_submit_order_whatever_the_priority() -> None:
    snap = snapshot([node("a").gpus(1)], [job(1).submitted(2), job(2).priority(500).submitted(3)])
    assert started(make_policy("fifo").decide(snap)) == [1]


def test_priority_class_dominates_the_multifactor_score() -> None:
    snap = snapshot(
        [node("a").gpus(1)], [job(1).submitted(0), job(2).priority(5).submitted(NOW - 1)]
    )
    plan = make_policy("priority").decide(snap)
    assert started(plan) == [2]
    assert plan.order == (2, 1) and plan.position(1) == 2
    score = make_policy("priority").scores(snap)[1]  # type: ignore[attr-defined]
    assert plan.reasons[1].endswith(f"priority {score:.0f}")


def test_priority_weights_come_from_parameters() -> None:
    snap = snapshot(
        [node("a").gpus(8)], [job(1).gpus(1).submitted(0), job(2).gpus(8).submitted(NOW)]
    )
    by_age = make_policy("priority", {"weight_size": 0, "max_age_s": NOW})
    by_size = make_policy("priority", {"weight_age": 0})
    assert by_age.decide(snap).order == (1, 2)
    assert by_size.decide(snap).order == (2, 1)


def test_fairshare_puts_the_user_under_their_share_first() -> None:
    tree = teams(vision=(50, {"alice": 1}), nlp=(50, {"carol": 1}))
    snap = snapshot(
        [node("a").gpus(1)],
        [job(1).user("alice").submitted(0), job(2).user("carol").submitted(5)],
        accounts=tree,
        usage={"alice": 1000.0, "carol": 10.0},
    )
    plan = make_policy("fairshare").decide(snap)
    assert started(plan) == [2]
    assert plan.reasons[1].endswith("; team vision at 2.0x its share")
    assert plan.reasons[1].startswith("needs 1 GPUs on one node, largest free block is 0")


def test_unknown_policy_and_bad_parameters_are_refused() -> None:
    with pytest.raises(PolicyError, match="unknown scheduling policy 'nope'"):
        make_policy("nope")
    with pytest.raises(PolicyError, match="bad parameters"):
        make_policy("priority", {"weight": 3})
    with pytest.raises(PolicyError, match="must not be negative"):
        make_policy("priority", {"weight_age": -1})


# ------------------------------------------------------------------ blocking and backfill


def test_a_blocked_job_reserves_and_only_short_jobs_backfill() -> None:
    # node a: 2 of 4 GPUs busy until NOW+100; node b: full until NOW+1000
    snap = snapshot(
        [node("a").gpus(4), node("b").gpus(4)],
        [job(1).gpus(4), job(2).gpus(2).limit(50), job(3).gpus(2).limit(500)],
        run=[
            running(10, "a", 0, 1).started(0).limit(100),
            running(11, "b", 0, 1, 2, 3).started(0).limit(1000),
        ],
    )
    plan = make_policy("fifo").decide(snap)
    assert started(plan) == [2]  # ends before job 1's reserved start
    assert plan.starts[0].backfilled
    assert plan.reasons[1].startswith(
        "needs 4 GPUs on one node, largest free block is 2; expected to start on a in about 2 min"
    )
    assert plan.reasons[3] == "needs 2 GPUs on one node, largest free block is 0"
    assert plan.position(3) == 3


def test_a_long_job_backfills_off_the_reserved_node() -> None:
    snap = snapshot(
        [node("a").gpus(4), node("b").gpus(4)],
        [job(1).gpus(4), job(2).gpus(2).limit(5000)],
        run=[running(10, "a", 0, 1).limit(3700), running(11, "b", 0, 1).limit(7200)],
    )
    plan = make_policy("fifo").decide(snap)
    # job 1 waits for a (free at NOW+100); job 2 runs long, so it goes to b, not a
    assert [(s.job_id, s.node) for s in plan.starts] == [(2, "b")]


def test_without_backfill_the_first_blocked_job_holds_everyone() -> None:
    snap = snapshot([node("a").gpus(4).busy(0, 1)], [job(1).gpus(4), job(2).gpus(1).limit(1)])
    plan = make_policy("fifo", {"backfill": False}).decide(snap)
    assert started(plan) == []
    assert plan.reasons[2] == "behind job 1, which is first in line"
    assert plan.position(2) == 2


def test_a_job_no_node_can_hold_blocks_no_one() -> None:
    plan = make_policy("fifo").decide(snapshot([node("a").gpus(2)], [job(1).gpus(4), job(2)]))
    assert started(plan) == [2]
    assert plan.reasons[1] == "needs 4 GPUs, the cluster has 2 up"


def test_jobs_wider_than_a_node_take_whole_idle_nodes() -> None:
    nodes = [node("a").gpus(8), node("b").gpus(8), node("c").gpus(8).busy(0)]
    plan = make_policy("fifo").decide(snapshot(nodes, [job(1).gpus(16)]))
    assert [(p[0], len(p[1])) for p in plan.starts[0].parts] == [("a", 8), ("b", 8)]
    plan = make_policy("fifo").decide(snapshot(nodes, [job(1).gpus(20)]))
    assert started(plan) == [] and "on whole nodes, 16 GPUs are on idle nodes" in plan.reasons[1]


def test_no_node_up() -> None:
    plan = make_policy("fairshare").decide(snapshot([node("a").gpus(2).down()], [job(1)]))
    assert plan.reasons[1].startswith("no node is up")


# ------------------------------------------------------------------ preemption


def test_a_higher_priority_class_preempts() -> None:
    snap = snapshot(
        [node("a").gpus(4)], [job(1).gpus(4).priority(10)], run=[running(9, "a", 0, 1, 2, 3)]
    )
    plan = make_policy("fairshare").decide(snap)
    assert [(p.job_id, p.for_job) for p in plan.preemptions] == [(9, 1)]
    assert "higher priority class (10 > 0)" in plan.preemptions[0].reason
    assert plan.reasons[1].startswith("preempting job 9 on a")
    assert started(plan) == []


@pytest.mark.parametrize(
    "victim",
    [
        running(9, "a", 0, 1, 2, 3).no_preempt(),
        running(9, "a", 0, 1, 2, 3).started(100),  # under the 600 s minimum runtime
        running(9, "a", 0, 1, 2, 3).priority(10),  # same class
    ],
)
def test_jobs_that_must_not_be_preempted(victim: running) -> None:
    snap = snapshot([node("a").gpus(4)], [job(1).gpus(4).priority(10)], run=[victim])
    assert make_policy("fairshare").decide(snap).preemptions == ()


def test_the_victim_is_the_one_that_loses_least_work() -> None:
    snap = snapshot(
        [node("a").gpus(4)],
        [job(1).gpus(2).priority(10)],
        run=[
            running(7, "a", 0, 1).started(3000).checkpointed(2000),  # 2000 s lost
            running(8, "a", 2, 3).started(3000).checkpointed(60),  # 60 s lost
        ],
    )
    assert [p.job_id for p in make_policy("fairshare").decide(snap).preemptions] == [8]


def test_the_smallest_set_of_victims_wins_over_less_lost_work() -> None:
    snap = snapshot(
        [node("a").gpus(4)],
        [job(1).gpus(2).priority(10)],
        run=[
            running(6, "a", 0).started(700),
            running(7, "a", 1).started(700),
            running(8, "a", 2, 3).started(5000),
        ],
    )
    assert [p.job_id for p in make_policy("fairshare").decide(snap).preemptions] == [8]


def test_a_job_already_waiting_for_a_victim_does_not_preempt_again() -> None:
    snap = snapshot(
        [node("a").gpus(4), node("b").gpus(4)],
        [job(1).gpus(4).priority(10), job(2).gpus(2).limit(10)],
        run=[running(9, "a", 0, 1, 2, 3).yielding_to(1), running(5, "b", 0, 1, 2, 3)],
    )
    plan = make_policy("fairshare").decide(snap)
    assert plan.preemptions == ()
    assert plan.reasons[1].startswith("waiting for job 9 to yield its GPUs")


def test_fair_share_preemption_only_from_an_over_team_to_an_under_team() -> None:
    tree = teams(vision=(50, {"alice": 1}), nlp=(50, {"carol": 1}))
    # vision holds all 8 GPUs (2x its share), nlp none
    run = [running(20 + i, f"n{i}", 0, 1, 2, 3).user("alice") for i in range(2)]
    nodes = [node("n0").gpus(4), node("n1").gpus(4)]
    plan = make_policy("fairshare").decide(
        snapshot(nodes, [job(1).gpus(4).user("carol")], run, tree)
    )
    assert (
        len(plan.preemptions) == 1
        and "team nlp is at 0.00x its share of GPUs, team vision at 2.00x"
        in plan.preemptions[0].reason
    )
    # the same swap the other way round is not allowed: nlp would then be the team over
    run = [running(20, "n0", 0, 1, 2, 3).user("alice"), running(21, "n1", 0, 1, 2, 3).user("carol")]
    plan = make_policy("fairshare").decide(
        snapshot(nodes, [job(2).gpus(4).user("alice")], run, tree)
    )
    assert plan.preemptions == ()


def test_priority_policy_does_not_preempt_on_fair_share() -> None:
    tree = teams(vision=(50, {"alice": 1}), nlp=(50, {"carol": 1}))
    run = [running(20, "n0", 0, 1, 2, 3).user("alice")]
    plan = make_policy("priority").decide(
        snapshot([node("n0").gpus(4)], [job(1).gpus(4).user("carol")], run, tree)
    )
    assert plan.preemptions == ()


def test_preemption_can_be_switched_off() -> None:
    snap = snapshot(
        [node("a").gpus(4)], [job(1).gpus(4).priority(10)], run=[running(9, "a", 0, 1, 2, 3)]
    )
    assert make_policy("fairshare", {"preemption": False}).decide(snap).preemptions == ()


def test_two_teams_cannot_preempt_each_other_back_and_forth() -> None:
    """t0 is entitled to 6 of 8 GPUs and t1 to 2. t1 runs a 4-GPU job (2x its share) while
    t0 holds 4 and wants 4 more. Taking t1's GPUs would put t0 at 1.33x, over its share,
    and t1 could then claim them back: the swap is not made."""
    tree = teams(t0=(3, {"u0": 1}), t1=(1, {"u2": 1}))
    nodes = [node("a").gpus(4), node("b").gpus(4)]
    run = [running(1, "a", 0, 1, 2, 3).user("u0"), running(2, "b", 0, 1, 2, 3).user("u2")]
    plan = make_policy("fairshare").decide(snapshot(nodes, [job(3).gpus(4).user("u0")], run, tree))
    assert plan.preemptions == ()
    # 16 GPUs: t0 entitled to 12 holds 8, t1 entitled to 4 holds 8 (2x). Taking 4 from t1
    # puts both at exactly 1.0x: allowed, and t1 cannot take them back (t0 is not over).
    nodes = [node(n).gpus(4) for n in "abcd"]
    run = [running(1, "a", 0, 1, 2, 3).user("u0"), running(2, "b", 0, 1, 2, 3).user("u0")]
    run += [
        running(8, "c", 0, 1, 2, 3).user("u2"),
        running(9, "d", 0, 1, 2, 3).user("u2").started(7200),
    ]
    plan = make_policy("fairshare").decide(snapshot(nodes, [job(3).gpus(4).user("u0")], run, tree))
    assert [p.job_id for p in plan.preemptions] == [8]  # the one that loses less work
    after = [*run[:2], running(3, "c", 0, 1, 2, 3).user("u0"), run[3]]
    back = make_policy("fairshare").decide(
        snapshot(nodes, [job(8).gpus(4).user("u2")], after, tree)
    )
    assert back.preemptions == ()


def test_third_party_policies_come_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass
    from importlib.metadata import EntryPoint

    import policies.registry as registry

    @dataclass(frozen=True)
    class Nothing:
        name: str = "nothing"

        def decide(self, snapshot: object) -> Plan:
            return Plan()

    class Broken:
        pass

    def fake_entry_points(group: str) -> list[EntryPoint]:
        assert group == "gshare.policies"
        return [EntryPoint("nothing", "x:y", group), EntryPoint("broken", "x:z", group)]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(
        EntryPoint, "load", lambda self: Nothing if self.name == "nothing" else Broken
    )
    assert "nothing" in registry.available_policies()
    assert make_policy("nothing").decide(snapshot([node("a").gpus(1)], [job(1)])) == Plan()
    with pytest.raises(PolicyError, match="does not provide name and decide"):
        make_policy("broken")


# ------------------------------------------------------------------ victim order

VICTIMS = [
    running(6, "a", 0, 1).started(5000).checkpointed(30).priority(-5),  # oldest, 30 s lost
    running(7, "a", 2, 3).started(700).priority(0),  # youngest, 700 s lost
    running(8, "a", 4, 5).started(3000).checkpointed(2000).priority(-9),  # lowest class
]


@pytest.mark.parametrize("name", ["fairshare", "priority"])
@pytest.mark.parametrize(
    ("order", "victim"),
    [
        (None, 6),  # the default: least work lost since the last checkpoint
        ("least_work_lost", 6),
        ("youngest", 7),
        ("lowest_priority", 8),
    ],
)
def test_the_victim_order_is_a_policy_parameter(name: str, order: str | None, victim: int) -> None:
    snap = snapshot([node("a").gpus(6)], [job(1).gpus(2).priority(10)], run=VICTIMS)
    params = {"victim_order": order} if order else {}
    plan = make_policy(name, params).decide(snap)
    assert [p.job_id for p in plan.preemptions] == [victim]


def test_lowest_priority_breaks_class_ties_by_least_work_lost() -> None:
    run = [
        running(6, "a", 0, 1).started(5000).checkpointed(1000).priority(-5),
        running(7, "a", 2, 3).started(5000).checkpointed(10).priority(-5),
        running(8, "a", 4, 5).started(5000).checkpointed(5).priority(0),
    ]
    snap = snapshot([node("a").gpus(6)], [job(1).gpus(2).priority(10)], run=run)
    plan = make_policy("fairshare", {"victim_order": "lowest_priority"}).decide(snap)
    assert [p.job_id for p in plan.preemptions] == [7]


def test_a_set_of_victims_is_the_cheapest_by_the_order() -> None:
    # 4 GPUs wanted, 2 free: two 1-GPU victims are needed among three
    run = [
        running(6, "a", 2).started(4000).checkpointed(5),
        running(7, "a", 3).started(900),
        running(8, "a", 4).started(800),
    ]
    snap = snapshot([node("a").gpus(5)], [job(1).gpus(4).priority(10)], run=run)
    least = make_policy("fairshare").decide(snap)
    assert sorted(p.job_id for p in least.preemptions) == [6, 8]
    youngest = make_policy("fairshare", {"victim_order": "youngest"}).decide(snap)
    assert sorted(p.job_id for p in youngest.preemptions) == [7, 8]


@pytest.mark.parametrize("name", ["fairshare", "priority"])
@pytest.mark.parametrize("bad", ["oldest", "", 3, "least_work_lost\x00"])
def test_an_unknown_victim_order_is_refused(name: str, bad: object) -> None:
    with pytest.raises(PolicyError, match="victim_order must be one of least_work_lost"):
        make_policy(name, {"victim_order": bad})


# ------------------------------------------------------------------ the fairshare order

TWO_TEAMS = teams(x=(1, {"alice": 1, "bob": 1}), y=(1, {"carol": 1}))
DAY = 86400.0


def fair_order_of(jobs: list[job], run: list[running], usage: dict[str, float]) -> list[int]:
    snap = snapshot([node("a").gpus(32)], jobs, run=run, accounts=TWO_TEAMS, usage=usage)
    return list(make_policy("fairshare").decide(snap).order)


@pytest.mark.parametrize(
    ("jobs", "run", "usage", "order"),
    [
        # nothing running, no usage: a team's second job waits behind the other team's first
        (
            [
                job(1).user("alice").submitted(1),
                job(2).user("bob").submitted(2),
                job(3).user("carol").submitted(3),
                job(4).user("carol").submitted(4),
            ],
            [],
            {},
            [1, 3, 2, 4],
        ),
        # heavy past usage but nothing running now goes before a light user running 4 GPUs
        (
            [job(1).user("carol").submitted(1), job(2).user("alice").submitted(2)],
            [running(9, "a", 0, 1, 2, 3).user("carol")],
            {"alice": 1e9},
            [2, 1],
        ),
        # holding the same (nothing): the Fair Tree factor decides, least used first
        (
            [job(1).user("alice").submitted(1), job(2).user("carol").submitted(2)],
            [],
            {"alice": 1e9, "carol": 1e3},
            [2, 1],
        ),
        # within a team, users by what they hold: bob (nothing) before alice's next job
        (
            [job(1).user("alice").submitted(1), job(2).user("bob").submitted(2)],
            [running(9, "a", 0).user("alice")],
            {},
            [2, 1],
        ),
        # the priority class comes first, whatever is held
        (
            [job(1).user("carol").submitted(1), job(2).user("alice").priority(1).submitted(2)],
            [running(9, "a", *range(8)).user("alice")],
            {},
            [2, 1],
        ),
        # aging: team x holds 8 GPUs, team y 2; x's job has waited 10 days (its key falls to
        # 16 x 2^(-10/3) = 1.6, under y's 4): it goes first; a fresh one of x's would not
        (
            [job(1).user("carol").submitted(NOW), job(2).user("alice").submitted(NOW - 10 * DAY)],
            [running(8, "a", *range(8)).user("bob"), running(9, "a", 8, 9).user("carol")],
            {},
            [2, 1],
        ),
        (
            [job(1).user("carol").submitted(NOW), job(2).user("alice").submitted(NOW)],
            [running(8, "a", *range(8)).user("bob"), running(9, "a", 8, 9).user("carol")],
            {},
            [1, 2],
        ),
    ],
)
def test_the_fairshare_order(
    jobs: list[job], run: list[running], usage: dict[str, float], order: list[int]
) -> None:
    assert fair_order_of(jobs, run, usage) == order


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_a_bad_aging_is_refused(bad: float) -> None:
    with pytest.raises(PolicyError, match="aging_s must be a positive number of seconds"):
        make_policy("fairshare", {"aging_s": bad})


# ------------------------------------------------- fairshare: wide and long jobs


def test_fairshare_keeps_the_reservation_with_the_oldest_job_across_nodes() -> None:
    # Fair order alone puts carol's job first: it would take the GPU freed on a node that
    # is draining for the gang, and the gang's reservation would move on each cycle.
    tree = teams(vision=(50, {"alice": 1, "bob": 1}), nlp=(50, {"carol": 1}))
    snap = snapshot(
        [node("a").gpus(2), node("b").gpus(2)],
        [
            job(1).across(2, 2).user("alice").submitted(0).limit(3600),
            job(2).across(2, 2).user("bob").submitted(10).limit(3600),
            job(3).gpus(1).user("carol").submitted(20),  # no time limit
        ],
        run=[
            running(100, "a", 0).user("carol").limit(3600),
            running(101, "b", 0).user("carol").limit(3600),
        ],
        accounts=tree,
        usage={"alice": 1000.0, "bob": 10.0, "carol": 1.0},
    )
    plan = make_policy("fairshare").decide(snap)
    assert plan.order[0] == 1  # the oldest gang that cannot start holds the reservation
    assert started(plan) == []
    assert "would delay job 1" in plan.reasons[3]
    # once nothing across nodes waits, fair order alone again
    alone = snapshot(
        [node("a").gpus(2), node("b").gpus(2)],
        [job(3).gpus(1).user("carol").submitted(20), job(4).gpus(1).user("alice")],
        run=[running(100, "a", 0).user("carol"), running(101, "b", 0, 1).user("alice")],
        accounts=tree,
        usage={"alice": 1000.0, "carol": 1.0},
    )
    assert started(make_policy("fairshare").decide(alone)) == [3]


def test_fairshare_never_promotes_a_gang_larger_than_the_cluster() -> None:
    snap = snapshot(
        [node("a").gpus(2), node("b").gpus(2)],
        [job(1).across(3, 2).submitted(0), job(2).gpus(1).user("carol").submitted(5)],
        usage={"alice": 1000.0, "carol": 1.0},
    )
    plan = make_policy("fairshare").decide(snap)
    assert started(plan) == [2]
    assert plan.reasons[1].startswith("needs 6 GPUs, the cluster has 4 up")


def test_fairshare_starts_first_a_job_that_would_end_after_all_other_work() -> None:
    # one free GPU; alice's 100 h job ends last whenever it starts: each hour it waits is
    # an hour more before the cluster's work is done
    tree = teams(vision=(50, {"alice": 1}), nlp=(50, {"carol": 1}))

    def cluster(long_limit: float, carol_class: int = 0) -> Plan:
        snap = snapshot(
            [node("a").gpus(2)],
            [
                job(1).user("alice").submitted(0).limit(long_limit),
                job(2).user("carol").submitted(5).limit(3600).priority(carol_class),
            ],
            run=[running(100, "a", 0).user("alice").limit(3600)],
            accounts=tree,
            usage={"alice": 1000.0, "carol": 10.0},
        )
        return make_policy("fairshare").decide(snap)

    assert started(cluster(100 * 3600)) == [1]
    assert started(cluster(3600)) == [2]  # not longer than the rest: fair order
    assert started(cluster(100 * 3600, carol_class=1)) == [2]  # a higher class stays ahead
