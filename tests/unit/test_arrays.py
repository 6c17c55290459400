"""Arrays, dependencies, job references and sweeps: the parsers, the gates' verdicts, and
an array stored in one transaction."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gshare.arrays import (
    ArraySpec,
    Dependency,
    Target,
    Term,
    fold,
    parse_array,
    parse_dependency,
    parse_job_ref,
)
from gshare.jobenv import task_environment
from gshare.sweep import load_sweep, parse_sweep, read_result, report
from schedulerd.gates import Gates
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord
from schedulerd.store import Change, NewJob, Store
from tests.unit.test_store import record

# ---------------------------------------------------------------- --array


@pytest.mark.parametrize(
    ("text", "tasks", "limit"),
    [
        ("0-3", (0, 1, 2, 3), 0),
        ("0-9:4", (0, 4, 8), 0),
        ("1,3,7-9", (1, 3, 7, 8, 9), 0),
        ("0-999%16", tuple(range(1000)), 16),
        ("5", (5,), 0),
        ("3,1,3", (1, 3), 0),
        ("0-3%10", (0, 1, 2, 3), 4),  # a limit over the count is the count
    ],
)
def test_array_syntax(text: str, tasks: tuple[int, ...], limit: int) -> None:
    spec = parse_array(text)
    assert spec.tasks == tasks and spec.limit == limit


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("0-9%0", "never run a task"),
        ("0-9%", "%K needs a number"),
        ("5-1", "ends before it starts"),
        ("0-9:0", "step of 0"),
        ("a-b", "is not N, N-M or N-M:S"),
        ("-1", "is not N, N-M or N-M:S"),
        ("0-10001", "over the largest allowed"),
        ("0-9\x00", "printable"),
        ("1," * 3000, "at most 4096"),
        ("99999999999999999999999", "over 12 digits"),
        ("0000000000005", "over 12 digits"),
        ("0-3%²", "%K needs a number"),
        ("0-9999,0-9999:2", "more than max_array_size"),
    ],
)
def test_bad_arrays_say_why_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_array(text)
    assert "\n" not in str(caught.value)


def test_array_size_is_bounded_by_max_array_size() -> None:
    assert parse_array("0-99", max_size=100).count == 100
    with pytest.raises(ValueError, match="max_array_size"):
        parse_array("0-100", max_size=100)


@given(st.sets(st.integers(0, 500), min_size=1, max_size=60), st.integers(0, 20))
def test_fold_and_parse_are_inverse(ids: set[int], limit: int) -> None:
    spec = ArraySpec(tuple(sorted(ids)), min(limit, len(ids)))
    assert parse_array(str(spec), 1000) == spec


def test_fold_writes_ranges() -> None:
    assert fold([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    assert fold([]) == ""


# ---------------------------------------------------------------- --dependency


def test_dependency_syntax() -> None:
    dep = parse_dependency("afterok:12:13_4,afterany:14")
    assert dep == Dependency(
        (
            Term("afterok", (Target(12), Target(13, 4))),
            Term("afterany", (Target(14),)),
        )
    )
    assert str(dep) == "afterok:12:13_4,afterany:14"
    either = parse_dependency("afterok:1?afternotok:2")
    assert either.any_of and len(either.terms) == 2
    assert parse_dependency("singleton").terms == (Term("singleton"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("afterok", "needs job ids"),
        ("afterok:", "not a job id"),
        ("afterok:x", "not a job id"),
        ("afterok:0", "not a job id"),
        ("afterok:1,afterany:2?after:3", "not both"),
        ("before:3", "is not one of"),
        ("singleton:3", "takes no job ids"),
        ("afterok:" + ":".join(str(i) for i in range(1, 1026)), "more than 1024"),
        ("afterok:99999999999999999999", "not a job id"),
    ],
)
def test_bad_dependencies(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_dependency(text)


def test_job_references() -> None:
    assert str(parse_job_ref("12")) == "12"
    assert parse_job_ref("12_7").tasks == (7,)
    assert parse_job_ref("12_[3-5]").tasks == (3, 4, 5)
    assert parse_job_ref("12_[1,3,7-9]").tasks == (1, 3, 7, 8, 9)
    for bad in ("", "x", "12_", "12_[]", "12_[5-3]", "12__3", "-1", "1" * 30, "0", "0_0", "12_²"):
        with pytest.raises(ValueError):
            parse_job_ref(bad)
    with pytest.raises(ValueError, match="no array has task"):
        parse_job_ref("2_1234567890123456")
    # ranges are sized before they are made: a reference of many large ranges is refused
    with pytest.raises(ValueError, match="max_array_size"):
        parse_job_ref("1_[" + ",".join(["0-999999"] * 400) + "]")
    with pytest.raises(ValueError, match="max_array_size"):
        parse_job_ref("1_[0-99,100-199]", max_size=150)


# ---------------------------------------------------------------- sweeps


def test_a_grid_sweep_is_every_combination() -> None:
    sweep = parse_sweep(
        "max_concurrent = 2\n[params]\nlr = [0.1, 0.01]\nlayers = { from = 2, to = 6, step = 2 }\n"
        'opt = "adam"\n',
        100,
    )
    assert sweep.max_concurrent == 2
    assert len(sweep.trials) == 6
    assert {(t["lr"], t["layers"], t["opt"]) for t in sweep.trials} == {
        (lr, n, "adam") for lr in ("0.1", "0.01") for n in ("2", "4", "6")
    }


def test_a_random_sweep_is_the_same_for_the_same_seed() -> None:
    text = (
        'method = "random"\ncount = 5\nseed = 3\n[params]\n'
        "lr = { loguniform = [1e-4, 1e-1] }\nbatch = [16, 32]\n"
    )
    first, again = parse_sweep(text, 100), parse_sweep(text, 100)
    assert first == again and len(first.trials) == 5
    for trial in first.trials:
        assert 1e-4 <= float(trial["lr"]) <= 1e-1 and trial["batch"] in ("16", "32")
    other = parse_sweep(text.replace("seed = 3", "seed = 4"), 100)
    assert other != first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[params\n", "not valid TOML"),
        ("[params]\n", "no \\[params\\] table"),
        ("[params]\nlr = []\n", "an empty list"),
        ("[params]\n'bad-name' = [1]\n", "not a valid variable name"),
        ("[params]\nlr = [1]\nLR = [2]\n", "differ only in case"),
        ("[params]\nx = { from = 5, to = 1 }\n", "an empty range"),
        ("[params]\nx = { uniform = [0, 1] }\n", 'method = "random"'),
        ('method = "random"\n[params]\nx = [1]\n', "needs count"),
        ('method = "bayes"\n[params]\nx = [1]\n', "grid"),
        ("[params]\nx = [1.0, nan]\n", "finite"),
        ("colour = 3\n[params]\nx = [1]\n", "unknown key"),
        ("[params]\nx = { from = 0, to = 200 }\n", "over max_array_size"),
    ],
)
def test_bad_sweep_files(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_sweep(text, 100)
    assert "\n" not in str(caught.value)


def test_a_sweep_file_is_read_safely(tmp_path: Path) -> None:
    good = tmp_path / "s.toml"
    good.write_text("[params]\nx = [1, 2]\n")
    assert len(load_sweep(good).trials) == 2
    with pytest.raises(ValueError, match="not a regular file"):
        load_sweep(tmp_path)
    with pytest.raises(ValueError, match="No such file"):
        load_sweep(tmp_path / "none.toml")
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_sweep(binary)


def test_results_are_written_whole_and_read_with_care(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt" / "result.json"
    monkeypatch.setenv("GSHARE_RESULT_FILE", str(path))
    report(loss=0.25, acc=0.9)
    assert read_result(str(path)) == {"loss": 0.25, "acc": 0.9}
    with pytest.raises(ValueError, match="finite"):
        report(loss=float("nan"))
    assert read_result(str(tmp_path / "none.json")) == "no result"
    link = tmp_path / "link.json"
    link.symlink_to(path)
    assert read_result(str(link)).startswith("unreadable")  # type: ignore[union-attr]
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * (1 << 20)}))
    assert read_result(str(big)) == "over 1 MiB"
    (tmp_path / "list.json").write_text("[1, 2]")
    assert read_result(str(tmp_path / "list.json")) == "not a JSON object"
    (tmp_path / "dir.json").mkdir()
    assert read_result(str(tmp_path / "dir.json")) == "not a regular file"
    os.mkfifo(tmp_path / "fifo.json")
    assert read_result(str(tmp_path / "fifo.json")) == "not a regular file"
    mixed = tmp_path / "mixed.json"
    mixed.write_text('{"a": 1, "b": "text", "c": true, "d": 1e999}')
    assert read_result(str(mixed)) == {"a": 1.0}


def test_a_task_finds_its_variables() -> None:
    env = task_environment(12, 7, "1,3,7-9%2", {"lr": "0.1"}, "/w/ck/")
    assert env["GSHARE_ARRAY_JOB_ID"] == "12" and env["GSHARE_ARRAY_TASK_ID"] == "7"
    assert (env["GSHARE_ARRAY_TASK_COUNT"], env["GSHARE_ARRAY_TASK_MIN"]) == ("5", "1")
    assert env["GSHARE_ARRAY_TASK_MAX"] == "9"
    assert env["GSHARE_PARAM_LR"] == "0.1" and json.loads(env["GSHARE_PARAMS"]) == {"lr": "0.1"}
    assert env["GSHARE_RESULT_FILE"] == "/w/ck/result.json"
    assert task_environment(0, 0, "", {}, "/w") == {}


def test_output_paths_expand_array_ids() -> None:
    job = record(job_id=15, array_job_id=12, array_task_id=3, output="o-%A_%a-%j.log")
    assert job.output_path == "/tmp/o-12_3-15.log"
    single = record(job_id=15, output="o-%A_%a.log")
    assert single.output_path == "/tmp/o-15_0.log"


# ---------------------------------------------------------------- the gates


class Live(dict[int, JobRecord]):
    """The live jobs as ClusterState keeps them, with the gates listening."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = Gates()
        self.gates.bind(self)

    def put(self, job: JobRecord) -> JobRecord:
        if job.state.final:
            self.pop(job.job_id, None)
        else:
            self[job.job_id] = job
        self.gates.job_changed(job)
        return job

    def move(self, job_id: int, state: JobState) -> None:
        old = self.get(job_id)
        assert old is not None
        self.put(replace(old, state=state, start_time=old.start_time or 1.0))


def test_afterok_waits_then_runs_and_is_doomed_by_a_failure() -> None:
    live = Live()
    live.put(record(job_id=1))
    live.put(record(job_id=2))
    live.put(record(job_id=3, dependency="afterok:1:2"))
    live.gates.watch([1, 2])
    assert "waiting for dependency afterok:1:2" in live.gates.check().held[3]
    live.move(1, JobState.RUNNING)
    live.move(1, JobState.COMPLETED)
    assert 3 in live.gates.check().held
    live.move(2, JobState.RUNNING)
    live.move(2, JobState.FAILED)
    verdict = live.gates.check()
    assert 3 not in verdict.held
    assert verdict.doomed[3] == "dependency afterok:2 can never be met: job 2 ended FAILED"


def test_after_afterany_afternotok_and_any_of() -> None:
    live = Live()
    live.put(record(job_id=1))
    live.put(record(job_id=10, dependency="after:1"))
    live.put(record(job_id=11, dependency="afterany:1"))
    live.put(record(job_id=12, dependency="afternotok:1"))
    live.put(record(job_id=13, dependency="afterok:1?afternotok:1"))
    live.gates.watch([1])
    assert set(live.gates.check().held) == {10, 11, 12, 13}
    live.move(1, JobState.RUNNING)
    assert set(live.gates.check().held) == {11, 12, 13}
    live.move(1, JobState.CANCELLED)
    verdict = live.gates.check()
    assert not verdict.held and not verdict.doomed  # afternotok: a cancel is "not ok"
    live2 = Live()
    live2.put(record(job_id=1))
    live2.put(record(job_id=12, dependency="afternotok:1"))
    live2.gates.watch([1])
    live2.move(1, JobState.COMPLETED)
    assert 12 in live2.gates.check().doomed


def test_a_dependency_on_an_array_waits_for_every_task() -> None:
    live = Live()
    for task in range(3):
        live.put(record(job_id=5 + task, array_job_id=5, array_task_id=task, array_spec="0-2"))
    live.put(record(job_id=9, dependency="afterok:5"))
    live.gates.watch([5])
    live.move(5, JobState.COMPLETED)  # the first task: the array's id is no longer live
    live.move(6, JobState.COMPLETED)
    assert 9 in live.gates.check().held
    live.move(7, JobState.COMPLETED)
    assert 9 not in live.gates.check().held


def test_ended_outcomes_loaded_at_start_count() -> None:
    """After a restart the store gives the ends of what live jobs wait on."""
    live = Live()
    live.put(record(job_id=9, dependency="afterok:5"))
    live.gates.outcomes(
        [
            record(job_id=5, array_job_id=5, array_task_id=0, state=JobState.COMPLETED),
            record(job_id=6, array_job_id=5, array_task_id=1, state=JobState.FAILED),
        ]
    )
    assert "job 6 ended FAILED" in live.gates.check().doomed[9]


def test_an_array_limit_holds_back_all_but_k() -> None:
    live = Live()
    for task in range(6):
        live.put(record(job_id=20 + task, array_job_id=20, array_task_id=task, array_spec="0-5%2"))
    held = live.gates.check().held
    assert sorted(held) == [22, 23, 24, 25]  # the lowest tasks go first
    live.move(20, JobState.RUNNING)
    assert sorted(live.gates.check().held) == [22, 23, 24, 25]
    live.move(21, JobState.RUNNING)
    assert sorted(live.gates.check().held) == [22, 23, 24, 25]  # two run: none may start
    live.move(20, JobState.COMPLETED)
    assert sorted(live.gates.check().held) == [23, 24, 25]
    assert "its limit (%2)" in live.gates.check().held[23]


def test_singleton_lets_one_of_a_name_run_at_a_time() -> None:
    live = Live()
    live.put(record(job_id=1, name="nightly", dependency="singleton"))
    live.put(record(job_id=2, name="nightly", dependency="singleton"))
    live.put(record(job_id=3, name="nightly", user="bob", dependency="singleton"))
    assert set(live.gates.check().held) == {2}
    live.move(1, JobState.RUNNING)
    assert "job 1 of alice named 'nightly' is running" in live.gates.check().held[2]
    live.move(1, JobState.COMPLETED)
    assert not live.gates.check().held


def test_a_singleton_waits_for_an_older_job_of_its_name_that_is_not_one() -> None:
    live = Live()
    live.put(record(job_id=1, name="nightly"))  # pending, no dependency of its own
    live.put(record(job_id=2, name="nightly", dependency="singleton"))
    assert "job 1 of alice named 'nightly' was submitted first" in live.gates.check().held[2]
    live.move(1, JobState.CANCELLED)
    assert not live.gates.check().held


def test_a_dependency_on_one_task_is_that_task_alone() -> None:
    """`afterok:5_0` is task 0, although its job id is the array's."""
    live = Live()
    for task in range(2):
        live.put(record(job_id=5 + task, array_job_id=5, array_task_id=task, array_spec="0-1"))
    live.put(record(job_id=9, dependency="afterok:5_0"))
    live.put(record(job_id=10, dependency="afterok:5_1"))
    live.gates.watch([5])
    live.move(6, JobState.FAILED)
    verdict = live.gates.check()
    assert 9 in verdict.held and verdict.doomed[10].endswith("job 6 ended FAILED")
    live.move(5, JobState.COMPLETED)
    assert 9 not in live.gates.check().held


def test_each_target_is_counted_once_a_cycle_and_outcomes_are_forgotten() -> None:
    live = Live()
    for task in range(50):
        live.put(record(job_id=100 + task, array_job_id=100, array_task_id=task, array_spec="0-49"))
    for job_id in range(1, 41):
        live.put(record(job_id=job_id, dependency="afterany:100"))
    live.gates.watch([100])
    counted: list[object] = []
    real = live.gates._counts
    live.gates._counts = lambda t: counted.append(t) or real(t)  # type: ignore[method-assign]
    assert len(live.gates.check().held) == 40 and len(counted) == 1
    for task in range(50):
        live.move(100 + task, JobState.COMPLETED)
    assert not live.gates.check().held
    for job_id in range(1, 41):
        live.move(job_id, JobState.COMPLETED)
    for _ in range(100):
        live.gates.check()
    assert not live.gates.ended and not live.gates.array_ended and not live.gates.arrays
    assert not live.gates.array_live and not live.gates.watched


def test_a_stepped_array_is_kept_short_and_read_back() -> None:
    from gshare.api import gshare_pb2 as pb
    from schedulerd.requests import array_of, tasks_of

    spec = pb.JobSpec(gpus=1, array="0-9999:3%2")
    tasks = tasks_of(record(), array_of(spec, 10_001), spec)  # type: ignore[arg-type]
    assert len(tasks) == 3334 and {t.array_spec for t in tasks} == {"0-9999:3%2"}
    env = task_environment(1, 9999, tasks[0].array_spec, {}, "/c")
    assert (env["GSHARE_ARRAY_TASK_COUNT"], env["GSHARE_ARRAY_TASK_MAX"]) == ("3334", "9999")
    live = Live()
    for number, task in enumerate(tasks[:5]):
        live.put(replace(task, job_id=1 + number, array_job_id=1))
    assert len(live.gates.check().held) == 3


def test_a_gate_that_cannot_read_a_job_leaves_it_ungated() -> None:
    live = Live()
    live.put(record(job_id=1, dependency="afterok:not-a-job"))  # a hand-edited database
    assert live.gates.check().held == {}


# ---------------------------------------------------------------- the store


def test_an_array_is_stored_whole_in_one_transaction(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    head = record(array_spec="0-2", array_task_id=0, submit_key="k1")
    tasks = tuple(record(array_spec="0-2", array_task_id=t) for t in (1, 2))
    [(array_id, created)] = store.submit_many([NewJob(head, b"#!/bin/sh\n", tasks)], 5.0)
    assert created
    stored = store.array_tasks(array_id)
    assert [(j.array_job_id, j.array_task_id) for j in stored] == [(array_id, t) for t in range(3)]
    assert all(store.script(j.job_id) == b"#!/bin/sh\n" for j in stored)
    # kept once, with the first task; every task gets it back when the scheduler starts
    assert [j.env for j in store.live_jobs()] == [{"A": "1"}] * 3
    # and keeps it through every change (the store's row of a task has none of its own)
    from schedulerd.state import ClusterState

    state = ClusterState(store, lambda: 9.0)
    for job in store.live_jobs():
        state.jobs[job.job_id] = job
    [moved] = asyncio.run(
        state.change([Change(stored[2].job_id, JobState.HELD, "hold", "alice", "held", ())])
    )
    assert moved.env == {"A": "1"}
    assert store.task_job_id(array_id, 2) == stored[2].job_id
    assert store.task_job_id(array_id, 5) is None
    # a retried submit (same key) makes nothing more
    again = store.submit_many([NewJob(replace(head, job_id=0), b"#!/bin/sh\n", tasks)], 6.0)
    assert again == [(array_id, False)] and len(store.array_tasks(array_id)) == 3
    # a batch that fails writes none of its array
    bad = record(array_spec="0-1", array_task_id=0)
    broken = (record(array_spec="0-1", array_task_id=1, user=None),)  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - whatever the database says
        store.submit_many([NewJob(bad, b"#!/bin/sh\n", broken)], 7.0)
    assert len(store.live_jobs()) == 3


def test_an_array_is_bounded_in_bytes_and_its_parameters_checked() -> None:
    from gshare.api import gshare_pb2 as pb
    from schedulerd.errors import Refused
    from schedulerd.requests import array_of

    fat = pb.JobSpec(gpus=1, args=["x" * 30_000, "y" * 30_000], env={"BIG": "z" * 100_000})
    assert array_of(pb.JobSpec(gpus=1, array="0-99", args=fat.args), 10_001) is not None
    fat.array = "0-9999"
    with pytest.raises(Refused, match="over the limit of 256 MiB"):
        array_of(fat, 10_001)
    # the environment is kept once, so a large one does not multiply
    assert array_of(pb.JobSpec(gpus=1, array="0-9999", env=fat.env), 10_001) is not None
    sweep = pb.JobSpec(gpus=1, array="0-1", task_params=[pb.TaskParams(params={"lr": "1"})])
    with pytest.raises(Refused, match="1 parameter sets for 2 tasks"):
        array_of(sweep, 100)
    for params, message in (
        ({"bad-name": "1"}, "not a valid parameter name"),
        ({"lr": "1", "LR": "2"}, "differ in case"),
        ({"lr": "a\0b"}, "NUL"),
        ({"lr": "v" * 5000}, "over the limit"),
    ):
        spec = pb.JobSpec(gpus=1, array="0", task_params=[pb.TaskParams(params=params)])
        with pytest.raises(Refused, match=message):
            array_of(spec, 100)
    with pytest.raises(Refused, match="only an array"):
        array_of(pb.JobSpec(gpus=1, task_params=[pb.TaskParams()]), 100)


# ---------------------------------------------------------------- a pipeline in gshare sim

PIPELINE = """job_id,submit_time_s,duration_s,gpus,user,group,status,after
prep,0,3600,8,alice,a,completed,
train,0,7200,8,alice,a,completed,afterok:prep
eval,10,600,1,alice,a,completed,afterany:train
never,20,600,1,bob,b,completed,afternotok:prep
other,0,36000,8,bob,b,completed,
wide,0,60,24,bob,b,completed,
afterwide,5,60,1,bob,b,completed,afterok:wide
"""


def test_the_simulator_replays_a_pipeline(tmp_path: Path) -> None:
    from policies import make_policy
    from schedulerd.sim import read_trace, simulate

    path = tmp_path / "pipeline.csv"
    path.write_text(PIPELINE)
    jobs = read_trace(path)
    result = simulate(jobs, make_policy("fifo"), 2, 8)
    assert (result.jobs, result.cancelled, result.left_out) == (4, 1, 2)
    started = {job_id: t for t, job_id in result.starts}
    # job ids follow the submit order: prep 1, train 2, other 3, eval 4 (never: 5)
    by_name = dict(zip(["prep", "train", "other", "eval"], sorted(started), strict=True))
    assert started[by_name["train"]] == 3600.0  # when prep ended, not when it was submitted
    assert started[by_name["eval"]] == 3600.0 + 7200.0
    assert started[by_name["prep"]] == 0.0 and started[by_name["other"]] == 0.0


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ("afterok:nosuch", "'nosuch' is not in the trace"),
        ("afterok:late", "'late' is submitted later"),
        ("afterok:dup", "'dup' is not unique"),
        ("before:a", "is not one of"),
        ("afterok", "needs job names"),
        ("afterok:a,afterany:a?after:a", "',' or '?'"),
    ],
)
def test_bad_after_fields_name_their_line(tmp_path: Path, after: str, message: str) -> None:
    from schedulerd.sim import TraceError, check_dependencies, read_trace

    path = tmp_path / "t.csv"
    path.write_text(
        "job_id,submit_time_s,duration_s,gpus,user,group,status,after\n"
        "a,0,10,1,u,g,completed,\n"
        "dup,0,10,1,u,g,completed,\n"
        "dup,1,10,1,u,g,completed,\n"
        f'x,5,10,1,u,g,completed,"{after}"\n'
        "late,9,10,1,u,g,completed,\n"
    )
    with pytest.raises(TraceError, match=message) as caught:
        check_dependencies(read_trace(path), str(path))
    assert ":5:" in str(caught.value) and "\n" not in str(caught.value)
