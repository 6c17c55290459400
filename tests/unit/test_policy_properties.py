"""Properties every built-in policy keeps, on random clusters (Hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    Account,
    AccountTree,
    ClusterSnapshot,
    GpuSlot,
    NodeView,
    PendingJob,
    RunningJob,
    make_policy,
)
from policies.fairshare import horizon_s

POLICIES = ["fifo", "priority", "fairshare"]
USERS = ["u0", "u1", "u2", "u3"]
TREE = AccountTree.build(
    Account(
        "root",
        1.0,
        (
            Account("t0", 3.0, (), (("u0", 1.0), ("u1", 1.0))),
            Account("t1", 1.0, (), (("u2", 1.0), ("u3", 1.0))),
        ),
    )
)
NOW = 100_000.0


@st.composite
def clusters(draw: st.DrawFn) -> ClusterSnapshot:
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))
    nodes = []
    running: list[RunningJob] = []
    next_id = 1000
    for i, size in enumerate(sizes):
        name = f"n{i}"
        free = set(range(size))
        # some running jobs on this node
        while free and draw(st.booleans()):
            take = draw(st.integers(1, len(free)))
            gpus = tuple(sorted(free)[:take])
            free -= set(gpus)
            running.append(
                RunningJob(
                    next_id,
                    draw(st.sampled_from(USERS)),
                    "default",
                    ((name, gpus),),
                    NOW - draw(st.floats(0, 5000)),
                    draw(st.integers(-2, 2)),
                    draw(st.sampled_from([0.0, 600.0, 3600.0])),
                    preemptible=draw(st.booleans()),
                )
            )
            next_id += 1
        slots = tuple(GpuSlot(g, f"{name}-{g}") for g in range(size))
        nodes.append(
            NodeView(name, slots, frozenset(free), schedulable=draw(st.booleans()) or i == 0)
        )
    pending = tuple(
        PendingJob(
            i,
            draw(st.sampled_from(USERS)),
            "default",
            draw(st.integers(1, 12)),
            draw(st.integers(-2, 2)),
            draw(st.floats(0, NOW)),
            time_limit_s=draw(st.sampled_from([0.0, 300.0, 7200.0])),
        )
        for i in range(draw(st.integers(0, 12)))
    )
    usage = {u: draw(st.floats(0, 1e6)) for u in USERS}
    return ClusterSnapshot(
        NOW, tuple(nodes), pending, tuple(running), TREE, MappingProxyType(usage)
    )


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(clusters(), st.sampled_from(POLICIES))
def test_no_gpu_is_in_two_jobs_and_gangs_are_whole(snap: ClusterSnapshot, name: str) -> None:
    plan = make_policy(name).decide(snap)
    nodes = {n.name: n for n in snap.nodes}
    held = {(node, g) for r in snap.running for node, gs in r.parts for g in gs}
    wanted = {j.job_id: j.gpus for j in snap.pending}
    for start in plan.starts:
        got = [(node, g) for node, gs in start.parts for g in gs]
        assert len(set(got)) == len(got)
        assert not set(got) & held, "a start uses a GPU that is already held"
        held |= set(got)
        for node, gs in start.parts:
            assert nodes[node].schedulable and set(gs) <= nodes[node].free_gpus
        if len(start.parts) == 1:
            assert len(got) == wanted[start.job_id]
        else:  # wider than a node: whole nodes
            assert len(got) >= wanted[start.job_id]
            assert all(len(gs) == nodes[n].gpu_count for n, gs in start.parts)


@SETTINGS
@given(clusters(), st.sampled_from(POLICIES))
def test_decide_is_deterministic_and_leaves_the_snapshot_alone(
    snap: ClusterSnapshot, name: str
) -> None:
    before = repr(snap)
    policy = make_policy(name)
    assert policy.decide(snap) == policy.decide(snap)
    assert repr(snap) == before


@SETTINGS
@given(clusters(), st.sampled_from(POLICIES), st.integers(1, 8))
def test_a_job_that_fits_an_idle_cluster_starts(
    snap: ClusterSnapshot, name: str, gpus: int
) -> None:
    idle = tuple(
        replace(n, free_gpus=frozenset(g.index for g in n.gpus), schedulable=True)
        for n in snap.nodes
    )
    if gpus > max(n.gpu_count for n in idle):
        return
    lone = ClusterSnapshot(NOW, idle, (PendingJob(1, "u0", "default", gpus, 0, 0.0),), (), TREE)
    assert [s.job_id for s in make_policy(name).decide(lone).starts] == [1]


@SETTINGS
@given(clusters(), st.sampled_from(["priority", "fairshare"]))
def test_victims_are_preemptible_and_past_their_minimum_runtime(
    snap: ClusterSnapshot, name: str
) -> None:
    plan = make_policy(name).decide(snap)
    by_id = {r.job_id: r for r in snap.running}
    for p in plan.preemptions:
        victim = by_id[p.job_id]
        assert victim.preemptible and not victim.yielding_to
        assert NOW - victim.start_time >= 600.0
        assert p.for_job in {j.job_id for j in snap.pending}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from(["priority", "fairshare"]))
def test_no_preemption_loop_over_many_cycles(snap: ClusterSnapshot, name: str) -> None:
    """Run 25 cycles, applying each plan at once (victims back to the queue, starts to
    running, the clock past the minimum runtime): no job ever preempts one that preempted
    it, directly."""
    policy = make_policy(name)
    nodes = tuple(replace(n, schedulable=True) for n in snap.nodes)
    running = {r.job_id: r for r in snap.running}
    pending = {j.job_id: j for j in snap.pending}
    now = NOW
    pairs: set[tuple[int, int]] = set()
    for _ in range(25):
        held = {(n, g) for r in running.values() for n, gs in r.parts for g in gs}
        views = tuple(
            replace(
                n, free_gpus=frozenset(g.index for g in n.gpus if (n.name, g.index) not in held)
            )
            for n in nodes
        )
        plan = policy.decide(
            ClusterSnapshot(now, views, tuple(pending.values()), tuple(running.values()), TREE)
        )
        for p in plan.preemptions:
            assert (p.for_job, p.job_id) not in pairs, (
                f"{p.job_id} and {p.for_job} preempt each other"
            )
            pairs.add((p.job_id, p.for_job))
            victim = running.pop(p.job_id)
            pending[victim.job_id] = PendingJob(
                victim.job_id, victim.user, "default", victim.gpus, victim.priority, now
            )
        for s in plan.starts:
            job = pending.pop(s.job_id)
            running[job.job_id] = RunningJob(
                job.job_id, job.user, "default", s.parts, now, job.priority
            )
        now += 601.0


@SETTINGS
@given(clusters(), st.sampled_from(["least_work_lost", "youngest", "lowest_priority"]))
def test_the_fairshare_order_keeps_classes_and_each_users_submit_order(
    snap: ClusterSnapshot, victim_order: str
) -> None:
    plan = make_policy("fairshare", {"victim_order": victim_order}).decide(snap)
    pending = {j.job_id: j for j in snap.pending}
    assert sorted(plan.order) == sorted(pending)  # every pending job, once
    ranked = [pending[i] for i in plan.order]
    classes = [-j.priority for j in ranked]
    assert classes == sorted(classes)  # a higher priority class is never behind a lower
    # jobs that would end after all the known work, and the oldest job wider than a node
    # that cannot start, are moved to the head of their class (fairshare.ends_last_first,
    # oldest_wide_first); the others keep each user's submit order
    horizon = horizon_s(snap)
    widest = max((n.gpu_count for n in snap.nodes if n.schedulable), default=0)
    for user in USERS:
        mine = [
            (-j.priority, j.submit_time, j.job_id)
            for j in ranked
            if j.user == user and j.time_limit_s <= horizon and j.gpus <= widest
        ]
        assert mine == sorted(mine)  # a user's own jobs in class, then submit order
