"""The edge's limits (schedulerd/requests.py): each bad field refused by name, and the
limits keep every message an accepted job makes inside the wire's limit."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from gshare.api import gshare_pb2 as pb
from gshare.client import MAX_MESSAGE_BYTES
from gshare.config import Config
from policies import make_policy
from schedulerd import requests
from schedulerd.convert import job_to_pb, spec_of
from schedulerd.daemon import Scheduler
from schedulerd.peercred import Caller
from schedulerd.requests import Refused, validate
from schedulerd.store import DatabaseFull, NewJob, Store

ALICE = Caller("alice", 1000, 1000)


def spec(**kw: Any) -> pb.JobSpec:
    values: dict[str, Any] = dict(gpus=1, workdir="/tmp", script=b"#!/bin/sh\ntrue\n")
    values.update(kw)
    return pb.JobSpec(**values)


def check(s: pb.JobSpec, caller: Caller = ALICE, config: Config | None = None) -> Any:
    return validate(caller, s, config or Config(), {}, lambda c: c.uid == 0, 100.0)


BAD: dict[str, tuple[pb.JobSpec, str]] = {
    "huge workdir": (spec(workdir="/" + "a" * 1_500_000), "workdir: 1500001 characters"),
    "huge name": (spec(name="n" * 300), "name: 300 characters, over the limit of 256"),
    "huge queue": (spec(queue="q" * 200), "queue: 200 characters"),
    "huge output": (spec(output="o" * 5000), "output: 5000 characters"),
    "huge script name": (spec(script_name="s" * 300), "script_name: 300 characters"),
    "huge checkpoint dir": (spec(checkpoint_dir="c" * 5000), "checkpoint_dir: 5000"),
    "huge slurm": (spec(slurm="x" * 100), "slurm: 100 characters"),
    "NUL in workdir": (spec(workdir="/tmp/\0x"), "workdir: contains a NUL byte"),
    "NUL in output": (spec(output="a\0"), "output: contains a NUL byte"),
    "NUL in name": (spec(name="a\0"), "name: contains a NUL byte"),
    "NUL in env value": (spec(env={"A": "x\0y"}), "env: A: contains a NUL byte"),
    "NUL in env name": (spec(env={"A\0": "x"}), "env: a variable name: contains a NUL"),
    "NUL in an arg": (spec(args=["ok", "a\0"]), "args: argument 2: contains a NUL byte"),
    "bad env name": (spec(env={"A=B": "x"}), "env: 'A=B' is not a valid variable name"),
    "empty env name": (spec(env={"": "x"}), "env: '' is not a valid variable name"),
    "too many env": (
        spec(env={f"V{i}": "" for i in range(5000)}),
        "env: 5000 variables, over the limit of 4096",
    ),
    "huge env value": (spec(env={"A": "x" * 200_000}), "env: A: 200000 characters"),
    "too many args": (spec(args=["a"] * 2000), "args: 2000 arguments"),
    "huge arg": (spec(args=["a" * 40_000]), "args: argument 1: 40000 characters"),
    "whole spec": (
        spec(env={f"V{i}": "x" * 100_000 for i in range(12)}),
        "without its script, over the limit of 1048576",
    ),
    "listed part": (spec(args=["a" * 30_000] * 3), "over the limit of 65536"),
    "NaN grace": (spec(grace_s=math.nan), "grace_s: nan is not between 0 and 86400"),
    "inf grace": (spec(grace_s=math.inf), "grace_s: inf"),
    "negative grace": (spec(grace_s=-1), "grace_s: -1"),
    "mem int64 max": (spec(mem_mb=2**63 - 1), "mem_mb: 9223372036854775807 is not between"),
    "negative mem": (spec(mem_mb=-1), "mem_mb: -1"),
    "huge cpus": (spec(cpus=2**31 - 1), "cpus: 2147483647 is not between 0"),
    "negative time": (spec(time_limit_s=-5), "time_limit_s: -5"),
    "huge time": (spec(time_limit_s=2**63 - 1), "time_limit_s: 9223372036854775807"),
    "restarts": (spec(max_restarts=-2), "max_restarts: -2 is not between -1"),
    "gpus": (spec(gpus=0), "--gpus must be at least 1"),
    "signal": (spec(preempt_signal=9), "a job cannot catch that signal"),
    "script size": (spec(script=b"#!" + b"x" * (1 << 20)), "the job script is 1048578 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_field_is_refused_by_name(case: str) -> None:
    bad, message = BAD[case]
    with pytest.raises(Refused) as caught:
        check(bad)
    assert caught.value.code == "INVALID_ARGUMENT"
    text = str(caught.value)
    assert message in text and "\n" not in text and len(text) < 300, text


def test_a_good_spec_and_bash_functions_pass() -> None:
    env = {"PATH": "/usr/bin", "BASH_FUNC_module%%": "() {  eval $(lmod bash $*)\n}"}
    job = check(spec(env=env, grace_s=30.0, mem_mb=1 << 40, args=["--lr", "0.1"]))
    assert job.env == env and job.mem_mb == 1 << 40


def test_the_script_ceiling_holds_whatever_the_config_says() -> None:
    config = Config(max_script_bytes=1 << 30)
    big = spec(script=b"#!" + b"x" * requests.SCRIPT_CEILING)
    with pytest.raises(Refused, match=f"over the limit of {requests.SCRIPT_CEILING}"):
        check(big, config=config)


def _largest_accepted() -> pb.JobSpec:
    """A spec at (or just inside) every limit at once."""
    fill = "x" * 1000
    listed = spec(
        name="n" * 256,
        queue="",
        workdir="/" + "w" * 4095,
        output="%j" * 2048,
        script_name="s" * 256,
        checkpoint_dir="%j" * 2048,
        args=["a" * 4000] * 10,
        slurm="never",
    )
    room = requests.MAX_LISTED_BYTES - listed.ByteSize()
    listed.args.append("a" * (room - 10))
    env: dict[str, str] = {}
    s = pb.JobSpec()
    s.CopyFrom(listed)
    while s.ByteSize() < requests.MAX_SPEC_BYTES - 2000:
        env[f"V{len(env)}"] = fill
        s.env[f"V{len(env) - 1}"] = fill
    s.script = b"#!" + b"x" * (Config().max_script_bytes - 2)
    return s


def test_no_accepted_job_makes_a_message_over_the_limit() -> None:
    biggest = _largest_accepted()
    job = check(biggest)
    job.job_id = 2**63 - 1  # the longest %j
    job.gpu_indexes, job.gpu_uuids = list(range(8)), [f"GPU-{'f' * 36}"] * 8
    script = b"#!" + b"x" * (requests.SCRIPT_CEILING - 2)
    launch = pb.Launch(
        job_id=job.job_id,
        spec=spec_of(job, script),
        gpu_indexes=job.gpu_indexes,
        gpu_uuids=job.gpu_uuids,
        user="u" * 32,
        output_path=job.output_path,
        checkpoint_dir=job.checkpoint_path,
    )
    message = pb.SchedulerMessage(launch=launch)
    assert message.ByteSize() < 20 * 1024 * 1024 < MAX_MESSAGE_BYTES
    listed = pb.ClusterChange(job=job_to_pb(job))
    assert listed.ByteSize() < 160 * 1024, listed.ByteSize()


# ------------------------------------------------------------ the group commit's safety net


class FaultyStore(Store):
    """A store that fails any transaction holding a job named 'poison' (a fault injected
    where validation would let a bad value through)."""

    batches: list[list[str]]

    def submit_many(self, jobs: Any, now: float | None = None) -> list[tuple[int, bool]]:
        names = [n.record.name for n in jobs]
        self.batches.append(names)
        if "poison" in names:
            raise RuntimeError("NOT NULL constraint failed: jobs.grace_s")
        return super().submit_many(jobs, now)


async def test_a_failing_batch_is_retried_one_by_one(tmp_path: Path) -> None:
    store = FaultyStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.batches = []
    scheduler = Scheduler(Config(), store, make_policy("fairshare", {}))
    await scheduler.start()
    try:
        names = [f"good{i}" for i in range(60)]
        for at in (0, 25, 59):
            names.insert(at, "poison")

        async def submit(name: str) -> int:
            s = spec(name=name)
            record = validate(
                ALICE, s, scheduler.config, scheduler.state.nodes, scheduler.is_admin, 100.0
            )
            return await scheduler.verbs.submit(record, s.script)

        results = await asyncio.gather(*(submit(n) for n in names), return_exceptions=True)
    finally:
        await scheduler.stop()
    assert any(len(b) > 1 and "poison" in b for b in store.batches), store.batches
    for name, result in zip(names, results, strict=True):
        if name == "poison":
            assert isinstance(result, RuntimeError)
        else:
            assert isinstance(result, int), (name, result)
    ids = [r for r in results if isinstance(r, int)]
    assert len(set(ids)) == 60
    stored = {j.job_id: j.name for j in store.live_jobs()}
    assert stored == {i: n for i, n in zip(results, names, strict=True) if isinstance(i, int)}
    store.close()


def test_a_full_database_is_told_as_such(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")

    @event.listens_for(store.engine, "connect")
    def tiny(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA max_page_count = 1")

    store.engine.dispose()  # new connections, each with the limit
    record = check(spec(name="big"))
    with pytest.raises(DatabaseFull, match="database is full"):
        store.submit_many([NewJob(record, b"#!" + b"x" * 100_000)])
    store.close()


class _Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.status: tuple[Any, str] | None = None

    async def abort(self, code: Any, details: str) -> None:
        self.status = (code, details)
        raise _Aborted


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (DatabaseFull(), "RESOURCE_EXHAUSTED", "the scheduler's database is full"),
        (Refused("workdir: too long"), "INVALID_ARGUMENT", "workdir: too long"),
        (ZeroDivisionError("boom"), "INTERNAL", "the scheduler failed to serve this request"),
    ],
)
async def test_the_guard_maps_errors_to_one_line_statuses(
    error: Exception, code: str, details: str
) -> None:
    import grpc

    from schedulerd.boundary import _guard

    async def work() -> None:
        raise error

    context = FakeContext()
    with pytest.raises(_Aborted):
        await _guard(context, work())  # type: ignore[arg-type]
    assert context.status is not None
    assert context.status[0] == grpc.StatusCode[code]
    assert context.status[1].startswith(details) and "\n" not in context.status[1]
    assert "ZeroDivisionError" not in context.status[1]


def test_a_listing_is_cut_to_the_newest_jobs_that_fit() -> None:
    """However many large jobs one user submits, ListJobs answers inside the wire's limit
    (it used to fail for everyone once the jobs together passed it)."""
    from schedulerd.server import LIST_BUDGET, fit_listing

    big = pb.Job(job_id=1, spec=pb.JobSpec(name="n" * 256, workdir="/" + "w" * 4000))
    jobs = [pb.Job(job_id=i, spec=big.spec) for i in range(1, 101)]
    each = jobs[0].ByteSize() + 8
    kept, cut = fit_listing(jobs, 10 * each)
    assert cut and [j.job_id for j in kept] == list(range(91, 101))
    kept, cut = fit_listing(jobs, 1000 * each)
    assert not cut and len(kept) == 100
    assert LIST_BUDGET < MAX_MESSAGE_BYTES
