"""The daemon's cycle: a job's place in line and in its team, among the jobs still waiting
(the cycle's order also holds the jobs it just started)."""

from __future__ import annotations

from gshare.config import AccountConfig, Config
from policies import make_policy
from schedulerd.cycle import Cycle
from schedulerd.ledger import Ledger
from schedulerd.model import GpuInfo, JobRecord, NodeRecord, NodeState
from schedulerd.sim import TraceJob
from schedulerd.simagents import _Clock, _submit
from schedulerd.state import ClusterState, MemoryJournal

NOW = 1_000_000.0


class _Agents:
    def __init__(self) -> None:
        self.launched: list[int] = []

    async def launch(self, job: JobRecord) -> None:
        self.launched.append(job.job_id)

    def preempt(self, job: object) -> None:
        raise AssertionError("nothing is preempted here")

    def schedulable(self) -> list[str]:
        return ["n0"]


async def test_places_count_only_the_jobs_still_waiting() -> None:
    clock = _Clock(NOW)
    journal = MemoryJournal()
    state = ClusterState(journal, clock)
    gpus = [GpuInfo(g, f"GPU-{g}", "sim", 81920, []) for g in range(2)]
    state.nodes["n0"] = NodeRecord("n0", gpus, 0, 0, state=NodeState.UP, last_seen=NOW)
    ids = [
        _submit(state, journal, TraceJob(f"j{i}", NOW - 100 + i, 60.0, 2, user, ""), NOW, 2)
        for i, user in enumerate(["alice", "alice", "bob", "alice"])
    ]
    config = Config(accounts=(AccountConfig("vision", 1.0, (("alice", 1.0),)),))
    agents = _Agents()
    cycle = Cycle(config, state, Ledger(3600.0), make_policy("fifo"), agents, lambda n: None)
    plan = await cycle.run()
    assert [s.job_id for s in plan.starts] == [ids[0]] == agents.launched
    assert plan.order == tuple(ids)  # the started job is still in the plan's order
    # but not in line: the next of alice's jobs is first in line and in its team
    assert cycle.positions == {ids[1]: 1, ids[2]: 2, ids[3]: 3}
    assert [cycle.team_place(state.jobs[i]) for i in ids] == [
        "",
        "1st in team vision",
        "1st in team default",
        "2nd in team vision",
    ]
