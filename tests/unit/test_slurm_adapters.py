"""The REST API adapters: request bodies, parsing of answers, and the shared parsing rules.
Records are shaped after real answers (v0.0.38: slurmrestd 22.05.8; v0.0.40: Slurm's
published schemas)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import pytest

import slurm_bridge
from slurm_bridge import JobState, SlurmJobSpec, SlurmRejected, api_contract
from slurm_bridge._adapter import expand_hostlist, gres_gpus, output_path, tres_gpus
from slurm_bridge._models import job_state_from_slurm
from slurm_bridge._v0038 import V0038
from slurm_bridge._v0040 import V0040

WORK = "/srv/work"


def make_spec(**kw: Any) -> SlurmJobSpec:
    base: dict[str, Any] = {
        "name": "train",
        "script": "#!/bin/bash\necho hi\n",
        "working_dir": WORK,
    }
    base.update(kw)
    return SlurmJobSpec(**base)


FULL = make_spec(
    comment="gshare-42",
    environment={"PATH": "/usr/bin", "FOO": "a=b"},
    gpus=2,
    cpus=4,
    time_limit_minutes=30,
    stdout="%x-%j.out",
    stderr="/logs/%j.err",
    partition="gpu",
)


# ------------------------------------------------------------ the public namespace


def test_public_namespace_is_exactly_all() -> None:
    public = {n for n in vars(slurm_bridge) if not n.startswith("_")}
    assert public == set(slurm_bridge.__all__)
    for name in slurm_bridge.__all__:
        obj = getattr(slurm_bridge, name)
        assert getattr(obj, "__module__", "slurm_bridge").startswith("slurm_bridge"), name


# ------------------------------------------------------------ requests


def test_v0038_submit_body() -> None:
    assert V0038().submit_body(FULL) == {
        "script": "#!/bin/bash\necho hi\n",
        "job": {
            "name": "train",
            "comment": "gshare-42",
            "current_working_directory": WORK,
            "environment": {"PATH": "/usr/bin", "FOO": "a=b"},
            "tasks": 1,
            "cpus_per_task": 4,
            "gres": "gpu:2",
            "time_limit": 30,
            "standard_output": "%x-%j.out",
            "standard_error": "/logs/%j.err",
            "partition": "gpu",
        },
    }


def test_v0040_submit_body() -> None:
    assert V0040().submit_body(FULL) == {
        "job": {
            "script": "#!/bin/bash\necho hi\n",
            "name": "train",
            "comment": "gshare-42",
            "current_working_directory": WORK,
            "environment": ["PATH=/usr/bin", "FOO=a=b"],
            "tasks": 1,
            "cpus_per_task": 4,
            "tres_per_node": "gres/gpu:2",
            "time_limit": {"set": True, "infinite": False, "number": 30},
            "standard_output": "%x-%j.out",
            "standard_error": "/logs/%j.err",
            "partition": "gpu",
        }
    }


@pytest.mark.parametrize("adapter", [V0038(), V0040()], ids=lambda a: a.version)
def test_minimal_spec_sends_only_what_is_needed(adapter: Any) -> None:
    body = adapter.submit_body(make_spec())
    job = body["job"]
    assert set(job) - {"script"} == {
        "name",
        "current_working_directory",
        "environment",
        "tasks",
        "cpus_per_task",
    }
    # Slurm refuses an empty environment ("environment must be set", error 2127)
    assert job["environment"] in (
        {"PATH": "/usr/local/bin:/usr/bin:/bin"},
        ["PATH=/usr/local/bin:/usr/bin:/bin"],
    )


def test_v0038_passes_arguments_inside_a_shell_script() -> None:
    body = V0038().submit_body(
        make_spec(argv=("a b", "it's"), script='#!/usr/bin/env bash\necho "$@"\n')
    )
    assert "argv" not in body["job"]  # slurmrestd 22.05.8 crashes on it
    assert body["script"] == "#!/usr/bin/env bash\nset -- 'a b' 'it'\"'\"'s'\necho \"$@\"\n"
    with pytest.raises(SlurmRejected, match="cannot pass arguments"):
        V0038().submit_body(make_spec(argv=("x",), script="#!/usr/bin/python3\nprint(1)\n"))


def test_v0040_passes_argv_with_the_script_name_first() -> None:
    body = V0040("v0.0.41").submit_body(make_spec(argv=("a", "b")))
    assert body["job"]["argv"] == ["train", "a", "b"]
    assert body["job"]["script"] == "#!/bin/bash\necho hi\n"


@pytest.mark.parametrize(
    ("kw", "problem"),
    [
        ({"script": "echo no shebang"}, "must start with #!"),
        ({"working_dir": "relative/dir"}, "absolute path"),
        ({"gpus": -1}, "gpus must be 0 or more"),
        ({"cpus": 0}, "cpus must be 1 or more"),
        ({"time_limit_minutes": 0}, "time_limit_minutes"),
        ({"environment": {"A=B": "x"}}, "environment names"),
    ],
)
def test_spec_refuses_what_slurm_would_accept_and_then_fail(
    kw: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        make_spec(**kw)


# ------------------------------------------------------------ answers: v0.0.38

V38_JOB: dict[str, Any] = {
    "job_id": 7,
    "name": "train",
    "comment": "gshare-42",
    "user_name": "alice",
    "partition": "debug",
    "job_state": "RUNNING",
    "state_reason": "None",
    "exit_code": 0,
    "submit_time": 1795454528,
    "start_time": 1795454529,
    "end_time": 1795454829,  # the projected end of a running job
    "nodes": "localhost",
    "node_count": 1,
    "gres_detail": ["gpu:2(IDX:0-1)"],
    "tres_per_node": "gres:gpu:2",
    "tres_per_job": "",
    "standard_output": "",
    "current_working_directory": WORK,
    # present in real answers, unused by the adapter
    "tres_alloc_str": "cpu=1,node=1,billing=1",
    "priority": 4294901759,
}


def v38(**changes: Any) -> dict[str, Any]:
    return {"jobs": [{**copy.deepcopy(V38_JOB), **changes}]}


def test_v0038_running_job() -> None:
    [job] = V0038().jobs(v38())
    assert job == slurm_bridge.SlurmJob(
        job_id=7,
        name="train",
        state=JobState.RUNNING,
        slurm_state="RUNNING",
        comment="gshare-42",
        user="alice",
        partition="debug",
        exit_code=None,
        signal=None,
        submit_time=1795454528.0,
        start_time=1795454529.0,
        end_time=None,
        gpus=2,
        nodes=("localhost",),
        stdout_path=f"{WORK}/slurm-7.out",
        reason=None,
    )


@pytest.mark.parametrize(
    ("changes", "state", "exit_code", "signal"),
    [
        ({"job_state": "COMPLETED", "exit_code": 0}, JobState.COMPLETED, 0, None),
        ({"job_state": "FAILED", "exit_code": 3 << 8}, JobState.FAILED, 3, None),
        ({"job_state": "FAILED", "exit_code": 9}, JobState.FAILED, 0, 9),  # kill -9 $$
        ({"job_state": "CANCELLED", "exit_code": 15}, JobState.CANCELLED, 0, 15),
        ({"job_state": "COMPLETING", "exit_code": 15}, JobState.COMPLETING, None, None),
        ({"job_state": "TIMEOUT", "exit_code": 0}, JobState.TIMEOUT, 0, None),
        ({"job_state": "OUT_OF_MEMORY", "exit_code": 0}, JobState.OUT_OF_MEMORY, 0, None),
    ],
)
def test_v0038_ended_jobs(
    changes: dict[str, Any], state: JobState, exit_code: int | None, signal: int | None
) -> None:
    [job] = V0038().jobs(v38(gres_detail=[], **changes))
    assert (job.state, job.exit_code, job.signal) == (state, exit_code, signal)
    assert job.end_time == (1795454829.0 if state.is_final else None)
    assert job.gpus == 2  # from tres_per_node once gres_detail is gone


def test_v0038_pending_job_has_no_times_and_a_reason() -> None:
    [job] = V0038().jobs(
        v38(
            job_state="PENDING",
            start_time=0,
            end_time=0,
            gres_detail=[],
            state_reason="Resources",
            nodes="",
        )
    )
    assert (job.state, job.start_time, job.end_time, job.reason, job.nodes) == (
        JobState.PENDING,
        None,
        None,
        "Resources",
        (),
    )


def test_v0038_gpus_from_the_gpus_field_and_output_patterns() -> None:
    [job] = V0038().jobs(
        v38(
            tres_per_node="",
            tres_per_job="gres:gpu:3",
            gres_detail=[],
            standard_output="/o/%x_%5j_%u.%%",
        )
    )
    assert job.gpus == 3
    assert job.stdout_path == "/o/train_00007_alice.%"


def test_v0038_nodes_partitions_pings() -> None:
    adapter = V0038()
    nodes = adapter.nodes(
        {
            "nodes": [
                {
                    "name": "localhost",
                    "state": "mixed",
                    "state_flags": ["DRAIN"],
                    "gres": "gpu:4",
                    "gres_used": "gpu:3(IDX:0-1,3)",
                    "partitions": ["debug"],
                    "cpus": 2,
                }
            ]
        }
    )
    assert nodes == [slurm_bridge.SlurmNode("localhost", "MIXED+DRAIN", 4, 3, ("debug",), 2)]
    assert nodes[0].gpus_free == 1
    parts = adapter.partitions(
        {
            "partitions": [
                {
                    "name": "debug",
                    "state": "UP",
                    "nodes": "n[1-2]",
                    "total_cpus": 4,
                    "total_nodes": 2,
                }
            ]
        }
    )
    assert parts == [slurm_bridge.SlurmPartition("debug", "UP", ("n1", "n2"), 4, 2)]
    assert adapter.pings({"pings": [{"hostname": "ctl", "ping": "UP"}]}) == {"ctl": "UP"}
    assert adapter.submit_answer({"job_id": 12, "errors": []}) == 12


# ------------------------------------------------------------ answers: v0.0.40


def no_val(number: int | None, infinite: bool = False) -> dict[str, Any]:
    return {"set": number is not None, "infinite": infinite, "number": number or 0}


V40_JOB: dict[str, Any] = {
    "job_id": 9,
    "name": "train",
    "comment": "gshare-43",
    "user_name": "bob",
    "partition": "gpu",
    "job_state": ["RUNNING"],
    "state_reason": "None",
    "exit_code": {
        "status": ["PENDING"],
        "return_code": no_val(0),
        "signal": {"id": no_val(None), "name": ""},
    },
    "submit_time": no_val(1795454528),
    "start_time": no_val(1795454529),
    "end_time": no_val(1795458129),
    "nodes": "gpu[01-02]",
    "node_count": no_val(2),
    "gres_detail": ["gpu:4(IDX:0-3)", "gpu:4(IDX:0-3)"],
    "tres_per_node": "gres/gpu:4",
    "tres_per_job": "",
    "tres_alloc_str": "cpu=2,mem=4G,node=2,billing=2,gres/gpu=8",
    "standard_output": "/logs/%j.out",
    "current_working_directory": WORK,
    "time_limit": no_val(60),
}


def v40(**changes: Any) -> dict[str, Any]:
    return {"jobs": [{**copy.deepcopy(V40_JOB), **changes}]}


def test_v0040_running_job() -> None:
    [job] = V0040().jobs(v40())
    assert (job.job_id, job.state, job.slurm_state, job.user, job.comment) == (
        9,
        JobState.RUNNING,
        "RUNNING",
        "bob",
        "gshare-43",
    )
    assert (job.exit_code, job.signal, job.end_time) == (None, None, None)
    assert (job.submit_time, job.start_time) == (1795454528.0, 1795454529.0)
    assert job.gpus == 8 and job.nodes == ("gpu01", "gpu02")
    assert job.stdout_path == "/logs/9.out"


@pytest.mark.parametrize(
    ("states", "exit_code", "expected"),
    [
        (
            ["COMPLETED"],
            {"status": ["SUCCESS"], "return_code": no_val(0)},
            (JobState.COMPLETED, 0, None),
        ),
        (["FAILED"], {"status": ["ERROR"], "return_code": no_val(3)}, (JobState.FAILED, 3, None)),
        (
            ["CANCELLED"],
            {
                "status": ["SIGNALED"],
                "return_code": no_val(0),
                "signal": {"id": no_val(15), "name": "TERM"},
            },
            (JobState.CANCELLED, 0, 15),
        ),
        (
            ["CANCELLED", "COMPLETING"],
            {"return_code": no_val(0)},
            (JobState.COMPLETING, None, None),
        ),
        (["PENDING", "REQUEUED"], {}, (JobState.PENDING, None, None)),
        (["TIMEOUT"], {"return_code": no_val(None)}, (JobState.TIMEOUT, None, None)),
    ],
)
def test_v0040_states_and_exit_codes(
    states: list[str], exit_code: dict[str, Any], expected: tuple[JobState, int | None, int | None]
) -> None:
    [job] = V0040().jobs(v40(job_state=states, exit_code=exit_code, tres_alloc_str=""))
    assert (job.state, job.exit_code, job.signal) == expected
    assert job.slurm_state == "+".join(states)
    assert job.gpus == 8  # 4 per node on 2 nodes, from what it asked for


def test_v0040_unset_and_infinite_numbers_are_none() -> None:
    [job] = V0040().jobs(
        v40(
            job_state=["PENDING"],
            start_time=no_val(None),
            end_time=no_val(None, infinite=True),
            nodes="",
        )
    )
    assert (job.start_time, job.end_time, job.nodes) == (None, None, ())


def test_v0040_nodes_partitions_pings() -> None:
    adapter = V0040("v0.0.41")
    nodes = adapter.nodes(
        {
            "nodes": [
                {
                    "name": "gpu01",
                    "state": ["IDLE", "DRAIN"],
                    "gres": "gpu:a100:4(S:0-1)",
                    "gres_used": "gpu:a100:0(IDX:N/A)",
                    "partitions": ["gpu"],
                    "cpus": 64,
                }
            ]
        }
    )
    assert nodes == [slurm_bridge.SlurmNode("gpu01", "IDLE+DRAIN", 4, 0, ("gpu",), 64)]
    parts = adapter.partitions(
        {
            "partitions": [
                {
                    "name": "gpu",
                    "partition": {"state": ["UP"]},
                    "nodes": {"configured": "gpu[01-02]", "total": 2},
                    "cpus": {"total": 128},
                }
            ]
        }
    )
    assert parts == [slurm_bridge.SlurmPartition("gpu", "UP", ("gpu01", "gpu02"), 128, 2)]
    assert adapter.pings({"pings": [{"hostname": "ctl", "pinged": "UP"}]}) == {"ctl": "UP"}


# ------------------------------------------------------------ adapters stay inside their contract


class Recording(dict[str, Any]):
    """A dict that notes every key read from it, as a dotted path (`jobs[].name`)."""

    def __init__(self, data: Mapping[str, Any], prefix: str, seen: set[str]) -> None:
        super().__init__({k: wrap(v, f"{prefix}{k}", seen) for k, v in data.items()})
        self.prefix, self.seen = prefix, seen

    def __getitem__(self, key: str) -> Any:
        self.seen.add(f"{self.prefix}{key}")
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(f"{self.prefix}{key}")
        return super().get(key, default)


def wrap(value: Any, path: str, seen: set[str]) -> Any:
    if isinstance(value, Mapping):
        return Recording(value, f"{path}.", seen)
    if isinstance(value, list):
        return [wrap(v, f"{path}[]", seen) for v in value]
    return value


def read_paths(doc: dict[str, Any], parse: Any) -> set[str]:
    seen: set[str] = set()
    parse(Recording(doc, "", seen))
    # v0.0.40+'s {set, infinite, number} is one value; a read of `a.b` also reads `a`, and
    # the contract names leaves
    seen = {re.sub(r"\.(set|infinite|number)$", "", p) for p in seen}
    return {p for p in seen if not any(q.startswith(p + ".") for q in seen)}


@pytest.mark.parametrize(
    ("version", "endpoint", "doc", "parse"),
    [
        ("v0.0.38", "job", v38(), lambda a, d: a.jobs(d)),
        ("v0.0.38", "jobs", v38(job_state="FAILED", exit_code=768), lambda a, d: a.jobs(d)),
        ("v0.0.40", "job", v40(), lambda a, d: a.jobs(d)),
        (
            "v0.0.40",
            "jobs",
            v40(
                job_state=["CANCELLED"],
                exit_code={"return_code": no_val(0), "signal": {"id": no_val(9)}},
            ),
            lambda a, d: a.jobs(d),
        ),
        ("v0.0.38", "submit", {"job_id": 3, "errors": []}, lambda a, d: a.submit_answer(d)),
        ("v0.0.40", "submit", {"job_id": 3, "errors": []}, lambda a, d: a.submit_answer(d)),
    ],
)
def test_adapters_read_only_fields_in_their_contract(
    version: str, endpoint: str, doc: dict[str, Any], parse: Any
) -> None:
    adapter = slurm_bridge._client.ADAPTERS[version]()
    [use] = [u for u in api_contract(version) if u.endpoint == endpoint]
    read = read_paths(doc, lambda d: parse(adapter, d))
    assert read, "the recording must see the adapter's reads"
    assert read - {"jobs"} <= set(use.response_fields)


@pytest.mark.parametrize("version", ["v0.0.38", "v0.0.40"])
def test_adapters_write_only_fields_in_their_contract(version: str) -> None:
    adapter = slurm_bridge._client.ADAPTERS[version]()
    [use] = [u for u in api_contract(version) if u.endpoint == "submit"]
    body = adapter.submit_body(make_spec(**{**FULL.__dict__, "argv": ("x",)}))
    written = {f"job.{k}" for k in body["job"]} | {k for k in body if k != "job"}
    assert written <= set(use.request_fields)


# ------------------------------------------------------------ shared parsing rules


@pytest.mark.parametrize(
    ("words", "state"),
    [
        (["PENDING"], JobState.PENDING),
        (["CONFIGURING"], JobState.RUNNING),
        (["RUNNING", "COMPLETING"], JobState.COMPLETING),
        (["COMPLETED", "STAGE_OUT"], JobState.COMPLETING),
        (["PENDING", "REQUEUE_HOLD"], JobState.PENDING),
        (["SUSPENDED"], JobState.RUNNING),
        (["BOOT_FAIL"], JobState.FAILED),
        (["DEADLINE"], JobState.TIMEOUT),
        (["REVOKED"], JobState.CANCELLED),
        (["NODE_FAIL"], JobState.NODE_FAIL),
        (["PREEMPTED"], JobState.PREEMPTED),
        (["SOMETHING_NEW"], JobState.UNKNOWN),
        ([], JobState.UNKNOWN),
    ],
)
def test_slurm_states_fold_into_the_bridge_states(words: list[str], state: JobState) -> None:
    assert job_state_from_slurm(words) is state


def test_final_states() -> None:
    assert {s for s in JobState if s.is_final} == {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.OUT_OF_MEMORY,
    }


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("gpu:4", 4),
        ("gpu:0", 0),
        ("gpu:2(IDX:0-1)", 2),
        ("gpu:3(IDX:0-1,3)", 3),
        ("gpu:a100:2(S:0-1),gpu:v100:1", 3),
        ("gres:gpu:2", 2),
        ("gres/gpu:2", 2),
        ("nic:2,gpu:1", 1),
        ("(null)", 0),
        ("", 0),
        (None, 0),
    ],
)
def test_gres_gpus(gres: str | None, gpus: int) -> None:
    assert gres_gpus(gres) == gpus


@pytest.mark.parametrize(
    ("tres", "gpus"),
    [
        ("cpu=1,node=1,gres/gpu=2", 2),
        ("gres/gpu:a100=2,gres/gpu=2", 2),
        ("cpu=1,node=1", None),
        ("", None),
    ],
)
def test_tres_gpus(tres: str, gpus: int | None) -> None:
    assert tres_gpus(tres) == gpus


@pytest.mark.parametrize(
    ("hostlist", "names"),
    [
        ("localhost", ("localhost",)),
        ("node[01-03,7]", ("node01", "node02", "node03", "node7")),  # each range its width
        ("a[1-2]-ib,b5", ("a1-ib", "a2-ib", "b5")),
        ("", ()),
        ("(null)", ()),
    ],
)
def test_expand_hostlist(hostlist: str, names: tuple[str, ...]) -> None:
    assert expand_hostlist(hostlist) == names


def test_output_path() -> None:
    assert output_path("", cwd="/w", job_id=5, name="n", user="u") == "/w/slurm-5.out"
    assert (
        output_path("o/%x-%j-%u.log", cwd="/w/", job_id=5, name="n", user="u") == "/w/o/n-5-u.log"
    )
    assert output_path("/abs/%N-%j", cwd="/w", job_id=5, name="n", user="u") == "/abs/%N-5"
