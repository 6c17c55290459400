"""The scheduler's core in-process: a `Scheduler` over SQLite in memory, with a fake clock
and fake agents whose sessions collect the commands sent down to them. No processes, no
gRPC, no background loops: a test drives the cycle and the agents' reports itself."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from gshare.api import gshare_pb2 as pb
from gshare.config import AccountConfig, Config
from policies import make_policy
from schedulerd import agents as ag
from schedulerd.changes import JobReport
from schedulerd.daemon import Scheduler
from schedulerd.model import GpuInfo, JobRecord
from schedulerd.peercred import Caller
from schedulerd.requests import validate
from schedulerd.store import Store


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeAgent:
    session: ag.AgentSession
    seen: list[ag.Command] = field(default_factory=list)

    def take(self) -> list[ag.Command]:
        """What the scheduler sent down since the last look."""
        while not self.session.outbox.empty():
            self.seen.append(self.session.outbox.get_nowait())
        out, self.seen = self.seen, []
        return out


def config_for(groups: dict[str, list[str]], **kw: object) -> Config:
    accounts = tuple(
        AccountConfig(g, 1.0, tuple((u, 1.0) for u in users)) for g, users in groups.items()
    )
    # the first group is the default account, as in `gshare sim`: no empty team beside them
    kw.setdefault("default_account", next(iter(groups)))
    return replace(Config(), accounts=accounts, **kw)  # type: ignore[arg-type]


class Core:
    """Build with `await Core.make(...)`; close with `await core.close()`."""

    def __init__(self, scheduler: Scheduler, clock: FakeClock) -> None:
        self.s = scheduler
        self.clock = clock
        self.agents: dict[str, FakeAgent] = {}
        self.launched: list[tuple[float, int]] = []  # (time, job id), in order
        self.preempted: list[tuple[float, int]] = []

    @classmethod
    async def make(
        cls,
        config: Config,
        policy: str = "fairshare",
        start: float = 0.0,
        lease_clock: FakeClock | None = None,
    ) -> Core:
        """`lease_clock`: the monotonic clock leases are kept on (default: the same fake
        clock as the wall clock)."""
        clock = FakeClock(start)
        store = Store("sqlite://")
        policy_ = make_policy(policy, {"explain": False})
        s = Scheduler(config, store, policy_, clock, lease_clock or clock)
        s.cluster_id = await s.db(store.cluster_id)
        return cls(s, clock)

    async def close(self) -> None:
        self.s._db_thread.shutdown(wait=True)
        self.s.store.close()

    async def add_node(self, name: str, gpus: int) -> FakeAgent:
        session = ag.AgentSession(name)
        info = tuple(
            GpuInfo(i, f"GPU-{name}-{i}", "fake", 81920, [p for p in range(gpus) if p != i])
            for i in range(gpus)
        )
        await self.s.agents.connected(session, ag.Registration(name, info, 0, 0, ()))
        agent = self.agents[name] = FakeAgent(session)
        agent.take()
        return agent

    async def submit(self, user: str, gpus: int, limit_s: int, name: str = "") -> int:
        spec = pb.JobSpec(
            gpus=gpus,
            script=b"#!/bin/sh\n",
            workdir="/tmp",
            name=name,
            time_limit_s=limit_s,
            max_restarts=-1,
        )
        caller = Caller(user, 1000, 1000)
        record = validate(
            caller, spec, self.s.config, self.s.state.nodes, lambda c: False, self.clock()
        )
        job_id, _ = (await self.s.db(self.s.store.submit_many, [_new(record)], self.clock()))[0]
        record.job_id, record.submit_time = job_id, self.clock()
        self.s.state.admit(record)
        return job_id

    async def cycle(self) -> list[ag.Command]:
        """One cycle; the agents run what they are launched at once. Returns what was sent."""
        await self.s.cycle.run()
        sent: list[ag.Command] = []
        for agent in self.agents.values():
            for command in agent.take():
                sent.append(command)
                if isinstance(command, ag.Launch):
                    self.launched.append((self.clock(), command.job.job_id))
                    report = JobReport(command.job.job_id, pid=4242, start_time=self.clock())
                    await self.s.agents.job_report(agent.session, report)
                elif isinstance(command, ag.Preempt):
                    self.preempted.append((self.clock(), command.job_id))
        return sent

    async def report(self, job_id: int, report: JobReport) -> None:
        job = self.s.state.jobs[job_id]
        await self.s.agents.job_report(self.agents[job.node].session, report)

    def job(self, job_id: int) -> JobRecord:
        return self.s.state.jobs[job_id]


def _new(record: JobRecord) -> object:
    from schedulerd.store import NewJob

    return NewJob(record, b"#!/bin/sh\n")
