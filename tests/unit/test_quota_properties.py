"""Quotas over whole simulated runs (Hypothesis): random traces through `gshare sim`'s core
(the daemon's own cycle, change builders and ledger) on 2 nodes of 4 GPUs, two teams.

- no team ever holds more GPUs than its `limit`;
- a team that has waited `reclaim_after` with a job that fits within its guarantee is not
  left there while another team borrows: the reclaim has happened by then.

Team a's jobs take one GPU each, so a reclaim can always make room for them on one node
(a wider job may wait on fragmentation, which no reclaim promises to undo).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import make_policy
from policies.quota import AccountQuota, Quotas
from schedulerd.sim import TraceJob, simulate

RECLAIM_AFTER = 300.0
NODES, PER_NODE = 2, 4


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[TraceJob], Quotas]:
    guaranteed_a = draw(st.integers(1, 4))
    guaranteed_b = draw(st.integers(0, NODES * PER_NODE - guaranteed_a))
    limit_a = draw(st.integers(guaranteed_a, NODES * PER_NODE))
    limit_b = draw(st.integers(max(guaranteed_b, PER_NODE), NODES * PER_NODE))  # b: 1-4 wide
    quotas = Quotas(
        MappingProxyType(
            {
                "a": AccountQuota(
                    MappingProxyType({"": guaranteed_a}), MappingProxyType({"": limit_a})
                ),
                "b": AccountQuota(
                    MappingProxyType({"": guaranteed_b} if guaranteed_b else {}),
                    MappingProxyType({"": limit_b}),
                ),
            }
        ),
        reclaim_after_s=RECLAIM_AFTER,
    )
    jobs = []
    count = draw(st.integers(1, 24))
    for i in range(count):
        team = draw(st.sampled_from("ab"))
        # b tends to come first and stay long: it borrows what a later wants back
        early, long = (1000, 8000) if team == "b" else (4000, 3000)
        jobs.append(
            TraceJob(
                f"j{i}",
                float(draw(st.integers(0, early))),
                float(draw(st.integers(60, long))),
                1 if team == "a" else draw(st.integers(1, PER_NODE)),
                f"{team}{draw(st.integers(0, 1))}",
                team,
            )
        )
    return jobs, quotas


def held(jobs: Sequence[TraceJob], team: str) -> int:
    return sum(j.gpus for j in jobs if j.group == team)


@settings(max_examples=80, deadline=None)
@given(runs(), st.sampled_from(["fairshare", "priority"]))
def test_limits_hold_and_guarantees_come_back_within_the_reclaim_time(
    run: tuple[list[TraceJob], Quotas], policy_name: str
) -> None:
    """fairshare runs without its fair-share preemption here: with min_runtime_s = 0 that
    preemption alone can swap two teams' jobs back and forth for ever (seen on main too,
    without quotas: 13 jobs of 60 s still unfinished after 2000 cycles), and the property
    is about what quotas do."""
    trace, quotas = run
    instants = []

    def watch(now: float, running: Sequence[TraceJob], pending: Sequence[TraceJob]) -> None:
        instants.append(now)
        for team, quota in quotas.accounts.items():
            assert held(running, team) <= quota.limit[""], (now, team)
        guaranteed = quotas.accounts["a"].guaranteed[""]
        borrowing = held(running, "b") > quotas.accounts["b"].guaranteed.get("", 0)
        for job in pending:
            overdue = now - job.submit >= RECLAIM_AFTER
            if job.group == "a" and overdue and held(running, "a") + job.gpus <= guaranteed:
                assert not borrowing, (now, job, running)

    params: dict[str, object] = {"min_runtime_s": 0.0, "explain": False}
    if policy_name == "fairshare":
        params["fairshare_preemption"] = False
    policy = make_policy(policy_name, params)
    result = simulate(
        trace, policy, NODES, PER_NODE, checkpoint_every_s=60.0, quotas=quotas, watch=watch
    )
    assert instants and result.jobs == len(trace)
