"""A policy that keeps its indexes from one cycle to the next (policies/memo.py) decides
exactly as a fresh one does, over random sequences of cycles (Hypothesis): jobs start,
end, yield, checkpoint and arrive, nodes change, time passes, usage moves; views that did
not change stay the same objects, as the daemon's snapshot keeps them."""

from __future__ import annotations

import random
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
    Plan,
    RunningJob,
    make_policy,
)
from policies.quota import AccountQuota, Quotas, UserLimits

USERS = ["u0", "u1", "u2", "u3", "stray"]  # "stray": in no account (the default one)
TREE = AccountTree.build(
    Account(
        "root",
        1.0,
        (
            Account("t0", 3.0, (), (("u0", 1.0), ("u1", 1.0))),
            Account("t1", 1.0, (), (("u2", 1.0), ("u3", 2.0))),
        ),
    )
)
QUOTAS = Quotas(
    MappingProxyType(
        {
            "t1": AccountQuota(MappingProxyType({"": 4}), MappingProxyType({"": 12})),
            "t0": AccountQuota(MappingProxyType({"a100": 2}), lend=False),
        }
    ),
    MappingProxyType({"u0": UserLimits(max_running_gpus=6)}),
    reclaim_after_s=120.0,
)
MODELS = ["a100", "h100"]
NOW = 100_000.0


class Cluster:
    """A random cluster moved on cycle by cycle, keeping unchanged views as they are."""

    def __init__(self, rnd: random.Random, quotas: bool) -> None:
        self.rnd = rnd
        self.next_id = 1
        nodes = []
        for i in range(rnd.randint(2, 6)):
            size = rnd.choice([2, 4, 8])
            model = rnd.choice(MODELS)
            slots = tuple(
                GpuSlot(g, f"n{i}-{g}", frozenset(range(size)) - {g}, model) for g in range(size)
            )
            nodes.append(NodeView(f"n{i}", slots, frozenset(range(size))))
        self.snap = ClusterSnapshot(
            NOW,
            tuple(nodes),
            (),
            (),
            TREE,
            MappingProxyType({u: rnd.uniform(0, 1e5) for u in USERS}),
            quotas=QUOTAS if quotas else None,
        )
        for _ in range(rnd.randint(0, 12)):
            self.submit()
        self.start_some()

    def job(self) -> PendingJob:
        rnd = self.rnd
        job_id, self.next_id = self.next_id, self.next_id + 1
        shape = rnd.random()
        nodes, each, gpus = 1, 0, rnd.choice([1, 1, 2, 4, 8, 12])
        if shape < 0.1:
            nodes, each = 2, rnd.choice([1, 2, 4])
            gpus = 2 * each
        return PendingJob(
            job_id,
            rnd.choice(USERS),
            "default",
            gpus,
            rnd.choice([0, 0, 0, 1, -1]),
            self.snap.now - rnd.uniform(0, 5000),
            time_limit_s=rnd.choice([0.0, 300.0, 3600.0, 86400.0 * 30]),
            preemptible=rnd.random() < 0.9,
            gpu_types=frozenset({rnd.choice(MODELS)}) if rnd.random() < 0.15 else frozenset(),
            nodes=nodes,
            gpus_per_node=each,
        )

    def submit(self) -> None:
        self.snap = replace(self.snap, pending=(*self.snap.pending, self.job()))

    def start_some(self) -> None:
        """Put some pending jobs straight onto free GPUs (as if started long ago)."""
        snap, rnd = self.snap, self.rnd
        free = {n.name: set(n.free_gpus) for n in snap.nodes}
        pending, running = list(snap.pending), list(snap.running)
        for job in list(pending):
            if job.nodes != 1 or rnd.random() < 0.3:
                continue
            where = next((n for n, f in free.items() if len(f) >= job.gpus), None)
            if where is None:
                continue
            gpus = tuple(sorted(free[where])[: job.gpus])
            free[where] -= set(gpus)
            pending.remove(job)
            running.append(
                RunningJob(
                    job.job_id,
                    job.user,
                    job.queue,
                    ((where, gpus),),
                    snap.now - rnd.uniform(0, 4000),
                    job.priority,
                    job.time_limit_s,
                    last_checkpoint=snap.now - rnd.uniform(0, 900) if rnd.random() < 0.5 else None,
                    preemptible=job.preemptible,
                )
            )
        self.set(pending, running, free)

    def set(
        self, pending: list[PendingJob], running: list[RunningJob], free: dict[str, set[int]]
    ) -> None:
        nodes = tuple(
            n if n.free_gpus == free[n.name] else replace(n, free_gpus=frozenset(free[n.name]))
            for n in self.snap.nodes
        )
        self.snap = replace(self.snap, nodes=nodes, pending=tuple(pending), running=tuple(running))

    def step(self, plan: Plan) -> None:
        """The plan applied as the daemon would, then a random change or several."""
        snap, rnd = self.snap, self.rnd
        free = {n.name: set(n.free_gpus) for n in snap.nodes}
        pending = {j.job_id: j for j in snap.pending}
        running = {r.job_id: r for r in snap.running}
        for s in plan.starts:
            job = pending.pop(s.job_id)
            for where, gpus in s.parts:
                free[where] -= set(gpus)
            running[job.job_id] = RunningJob(
                job.job_id, job.user, job.queue, s.parts, snap.now, job.priority, job.time_limit_s
            )
        for p in plan.preemptions:
            if p.job_id in running and rnd.random() < 0.8:
                running[p.job_id] = replace(running[p.job_id], yielding_to=p.for_job)
            if p.for_job in pending:
                pending[p.for_job] = replace(pending[p.for_job], claimed_node=p.node)
        for job_id in list(running):
            r = running[job_id]
            roll = rnd.random()
            if (r.yielding_to and roll < 0.7) or roll < 0.1:  # it ends
                for where, gpus in running.pop(job_id).parts:
                    free[where] |= set(gpus)
            elif roll < 0.2:  # a checkpoint: a new view of the same job
                running[job_id] = replace(r, last_checkpoint=snap.now - rnd.uniform(0, 60))
        for job_id in list(pending):
            if rnd.random() < 0.05:
                del pending[job_id]  # cancelled
        for _ in range(rnd.randint(0, 4)):
            job = self.job()
            pending[job.job_id] = job
        nodes = list(snap.nodes)
        if rnd.random() < 0.15:  # a node goes down or comes back
            i = rnd.randrange(len(nodes))
            nodes[i] = replace(nodes[i], schedulable=not nodes[i].schedulable)
        usage = dict(snap.usage)
        if rnd.random() < 0.5:
            user = rnd.choice(USERS)
            usage[user] = usage[user] * rnd.uniform(0.5, 2.0) + 1.0
        self.snap = replace(
            snap,
            now=snap.now + rnd.choice([0.0, 1.0, 30.0, 700.0]),
            nodes=tuple(nodes),
            usage=MappingProxyType(usage) if usage != dict(snap.usage) else snap.usage,
        )
        self.set(list(pending.values()), list(running.values()), free)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.randoms(use_true_random=False),
    st.sampled_from(["least_work_lost", "youngest", "lowest_priority"]),
    st.booleans(),
    st.booleans(),
    st.integers(2, 14),
)
def test_a_policy_that_remembers_decides_as_a_fresh_one(
    rnd: random.Random, victim_order: str, quotas: bool, explain: bool, cycles: int
) -> None:
    params = {"victim_order": victim_order, "explain": explain}
    kept = make_policy("fairshare", params)
    cluster = Cluster(rnd, quotas)
    for _ in range(cycles):
        snap = cluster.snap
        plan = kept.decide(snap)
        assert plan == make_policy("fairshare", params).decide(snap)
        cluster.step(plan)


def test_a_memo_handed_an_unrelated_snapshot_starts_over() -> None:
    kept = make_policy("fairshare")
    for seed in range(6):  # each a different cluster: everything in the memo goes
        snap = Cluster(random.Random(seed), quotas=seed % 2 == 1).snap
        assert kept.decide(snap) == make_policy("fairshare").decide(snap)


def test_the_same_snapshot_twice_gives_the_same_plan() -> None:
    snap = Cluster(random.Random(3), quotas=False).snap
    kept = make_policy("fairshare")
    assert kept.decide(snap) == kept.decide(snap)


@st.composite
def busy_nodes(draw: st.DrawFn) -> tuple[list[NodeView], list[RunningJob]]:
    """Nodes with running jobs whose ends and starts often tie (times on a coarse grid)."""
    nodes, running, job_id = [], [], 100
    for i in range(draw(st.integers(1, 6))):
        size = draw(st.sampled_from([2, 4, 8]))
        free = set(range(size))
        while free and draw(st.booleans()):
            gpus = tuple(sorted(free)[: draw(st.integers(1, len(free)))])
            free -= set(gpus)
            running.append(
                RunningJob(
                    job_id,
                    draw(st.sampled_from(USERS)),
                    "default",
                    ((f"n{i}", gpus),),
                    NOW - 600 * draw(st.integers(0, 6)),
                    draw(st.integers(-1, 1)),
                    draw(st.sampled_from([0.0, 600.0, 1200.0, 3600.0])),
                    last_checkpoint=NOW - 300 * draw(st.integers(0, 3)),
                )
            )
            job_id += 1
        slots = tuple(GpuSlot(g, f"n{i}-{g}") for g in range(size))
        nodes.append(
            NodeView(f"n{i}", slots, frozenset(free), schedulable=i == 0 or draw(st.booleans()))
        )
    return nodes, running


@settings(max_examples=300, deadline=None)
@given(busy_nodes(), st.integers(1, 8), st.floats(0, 3000))
def test_the_reservation_from_the_index_is_the_one_read_from_every_node(
    cluster: tuple[list[NodeView], list[RunningJob]], gpus: int, later: float
) -> None:
    from policies.engine import _reserve
    from policies.memo import RunningIndex
    from policies.placement import FreeMap

    nodes, running = cluster
    now = NOW + later  # some jobs past their time limit: ends before now
    index = RunningIndex()
    index.update(running)
    job = PendingJob(1, "u0", "default", gpus, 0, 0.0)
    whole = _reserve(job, FreeMap(nodes), running, now)
    swept = _reserve(job, FreeMap(nodes), [], now, index)
    assert (swept.start, swept.nodes, swept.spare) == (whole.start, whole.nodes, whole.spare)


@settings(max_examples=300, deadline=None)
@given(
    busy_nodes(),
    st.integers(1, 8),
    st.sampled_from(["least_work_lost", "youngest", "lowest_priority"]),
)
def test_the_single_victim_found_is_the_cheapest_of_all(
    cluster: tuple[list[NodeView], list[RunningJob]], gpus: int, order: str
) -> None:
    from policies.placement import FreeMap
    from policies.preemption import VICTIM_ORDERS, choose_victims

    nodes, running = cluster
    cost = VICTIM_ORDERS[order]
    job = PendingJob(1, "u0", "default", gpus, 5, 0.0)
    free = FreeMap(nodes)

    def claim(_: PendingJob, victim: RunningJob) -> str | None:
        return "lower class" if victim.priority < 1 else None

    choice = choose_victims(job, free, running, NOW, 600.0, claim, frozenset(), cost)
    singles = [
        (cost(r, NOW), r.node, r.job_id)
        for r in running
        if claim(job, r) is not None
        and NOW - r.start_time >= 600.0
        and r.node in free.nodes
        and free.nodes[r.node].gpu_count >= gpus
        and 0 < gpus - len(free.free[r.node]) <= r.gpus
    ]
    if singles:
        assert choice is not None and len(choice.victims) == 1
        victim = choice.victims[0]
        assert (cost(victim, NOW), victim.node, victim.job_id) == min(singles)
    elif choice is not None:
        assert len(choice.victims) > 1


def test_views_that_cannot_be_told_apart_leave_the_memo_as_a_fresh_one() -> None:
    # (snapshots the daemon does not make, but a policy may be handed)
    slots = tuple(GpuSlot(g, f"a-{g}") for g in range(4))
    whole, none_free = NodeView("a", slots, frozenset(range(4))), NodeView("a", slots, frozenset())
    job = PendingJob(1, "u0", "default", 2, 0, 0.0)
    victim = RunningJob(7, "u1", "default", (("a", (0, 1)),), 0.0, yielding_to=1)
    sequence = [
        ClusterSnapshot(NOW, (whole, none_free), (job,)),  # a node named twice: the last counts
        ClusterSnapshot(NOW, (whole,), (job,)),
        ClusterSnapshot(NOW, (none_free, whole), (job,)),
        ClusterSnapshot(NOW, (none_free,), (job,), (victim, replace(victim))),  # one job twice
        ClusterSnapshot(NOW, (whole,), (job,)),
    ]
    kept = make_policy("fairshare")
    for snap in sequence:
        assert kept.decide(snap) == make_policy("fairshare").decide(snap)


def test_a_victim_holding_a_gpu_its_node_no_longer_lists_is_no_crash() -> None:
    # its agent came back with fewer GPUs while the job ran on the one now missing
    node = NodeView("n0", tuple(GpuSlot(g, f"n0-{g}") for g in range(2)), frozenset())
    victim = RunningJob(7, "u1", "default", (("n0", (0, 1, 2)),), 0.0, priority=0)
    job = PendingJob(1, "u0", "default", 2, 5, 0.0)
    snap = ClusterSnapshot(
        10_000.0, (node,), (job,), (victim,), quotas=Quotas(user_default=UserLimits(100))
    )
    plan = make_policy("fairshare").decide(snap)
    assert [(p.job_id, p.for_job) for p in plan.preemptions] == [(7, 1)]
