"""Fuzzing a real scheduler process at its edge: every JobSpec field, raw protobuf bodies
and raw bytes on its Unix socket. After each case the scheduler is alive, answers, and the
jobs other users submitted beforehand are as they were; every refusal is one line with a
status that names the caller's mistake, never UNKNOWN or INTERNAL."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from gshare.client import CHANNEL_OPTIONS
from tests.cluster import PY, Cluster
from tests.conftest import needs_root

REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------ the cluster, shared by the module


class Fuzzed:
    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.channel = grpc.insecure_channel(cluster.address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.ClientServiceStub(self.channel)
        self.others: dict[int, tuple[str, bytes]] = {}
        self.roots: list[int] = []  # of those, root's (the rest are nobody's)

    def snapshot(self, job_id: int) -> tuple[str, bytes]:
        job = self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
        return pb.JobState.Name(job.state), job.spec.SerializeToString(deterministic=True)

    def still_fine(self) -> None:
        """The scheduler lives, answers, and other users' jobs are unchanged."""
        proc = self.cluster.scheduler
        assert proc is not None and proc.poll() is None, self.cluster.logs("schedulerd")
        listed = {j.job_id for j in self.stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs}
        assert set(self.others) <= listed
        assert self.stub.ListNodes(pb.ListNodesRequest(), timeout=30).nodes
        for job_id, before in self.others.items():
            assert self.snapshot(job_id) == before, job_id


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    root = Path(tempfile.mkdtemp(prefix="gshare-fuzz-"))
    root.chmod(0o755)
    workdir = root / "work"
    workdir.mkdir()
    workdir.chmod(0o777)
    cluster = Cluster(root, agents=1, gpus_per_node=4)
    cluster.start()
    state = Fuzzed(cluster, workdir)
    try:
        user = "nobody" if os.geteuid() == 0 else None
        # another user's jobs: one running on every GPU (never preempted), one waiting
        running = cluster.submit(
            "--wrap", "sleep 600", "--gpus", "4", "--no-preempt", user=user, cwd=workdir
        )
        cluster.wait_state(running, "RUNNING")
        waiting = cluster.submit("--wrap", "sleep 1", "--name", "waits", user=user, cwd=workdir)
        held = cluster.submit("--wrap", "sleep 1", "--name", "held", user=user, cwd=workdir)
        assert cluster.gshare("hold", str(held), user=user).code == 0
        state.roots = [cluster.submit("--wrap", "sleep 1", "--name", "root's", cwd=workdir)]
        for job_id in (running, waiting, held, *state.roots):
            state.others[job_id] = state.snapshot(job_id)
        yield state
    finally:
        state.channel.close()
        cluster.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def assert_refusal(err: grpc.RpcError) -> None:
    assert isinstance(err, grpc.Call)
    code, details = err.code(), err.details() or ""
    assert code in REFUSALS, (code, details[:300])
    assert details and "\n" not in details and len(details) < 1000, details[:300]
    assert "Traceback" not in details and "Exception" not in details, details[:300]


# ------------------------------------------------------------ strategies

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def ints(low: int, high: int, usual: tuple[int, int]) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(*usual), st.sampled_from([low, high, 0, -1, 1]), st.integers(low, high)
    )


def huge(char: str) -> st.SearchStrategy[str]:
    return st.sampled_from([255, 256, 257, 4096, 4097, 70_000, 200_000, 1_500_000]).map(
        lambda n: char * n
    )


TEXT = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.text(alphabet="\x00\x1b\n\r\t\x7f\x9b\u202e[]%j/", max_size=30),
    huge("x"),
    huge("%j"),
    st.just("/tmp/\x00/x"),
)
PATHS = st.one_of(st.just("/tmp"), st.builds(lambda t: "/" + t, TEXT), TEXT)
GRACE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 86400.0, 86400.5, 5e-324]),
)
SCRIPT = st.one_of(
    st.just(b"#!/bin/sh\ntrue\n"),
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: b"#!" + b),
    st.sampled_from([(1 << 20) - 2, 1 << 20, 17 << 20]).map(lambda n: b"#!" + b"x" * n),
)
ENV = st.one_of(
    st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=4),
    st.dictionaries(
        st.sampled_from(["A", "B_1", "BASH_FUNC_f%%", "1X", "A=B", ""]), TEXT, max_size=3
    ),
    st.sampled_from([1000, 5000]).map(lambda n: {f"V{i}": "v" for i in range(n)}),
    st.just({f"V{i}": "x" * 100_000 for i in range(12)}),
)
ARGS = st.one_of(
    st.lists(TEXT, max_size=4),
    st.sampled_from([1025, 3000]).map(lambda n: ["a"] * n),
)


@st.composite
def job_specs(draw: st.DrawFn) -> pb.JobSpec:
    spec = pb.JobSpec(
        name=draw(TEXT),
        queue=draw(st.one_of(st.just(""), st.just("default"), TEXT)),
        gpus=draw(ints(*INT32, usual=(1, 4))),
        priority=draw(ints(*INT32, usual=(-10, 0))),
        time_limit_s=draw(ints(*INT64, usual=(0, 3600))),
        cpus=draw(ints(*INT32, usual=(0, 8))),
        mem_mb=draw(ints(*INT64, usual=(0, 4096))),
        workdir=draw(PATHS),
        env=draw(ENV),
        output=draw(st.one_of(st.just(""), PATHS)),
        script=draw(SCRIPT),
        args=draw(ARGS),
        script_name=draw(TEXT),
        preempt_signal=draw(ints(*INT32, usual=(0, 12))),
        grace_s=draw(GRACE),
        no_preempt=draw(st.booleans()),
        checkpoint_dir=draw(st.one_of(st.just(""), PATHS)),
        slurm=draw(st.one_of(st.sampled_from(["", "auto", "never", "always"]), TEXT)),
    )
    if draw(st.booleans()):
        spec.max_restarts = draw(ints(*INT32, usual=(-1, 3)))
    return spec


# ------------------------------------------------------------ the cases


@needs_root
@settings(FUZZ, max_examples=150)
@given(spec=job_specs())
def test_submit_any_job_spec(fuzzed: Fuzzed, spec: pb.JobSpec) -> None:
    try:
        job_id = fuzzed.stub.SubmitJob(pb.SubmitJobRequest(spec=spec), timeout=60).job_id
    except grpc.RpcError as err:
        assert_refusal(err)
    else:  # accepted: it must list, show and go like any job
        job = fuzzed.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
        assert job.spec.name
        fuzzed.stub.CancelJob(pb.JobIdRequest(job_id=job_id), timeout=30)
    fuzzed.still_fine()


# SubmitJob and the read-only methods: a root caller may change any job, so fuzzing the
# changing methods' bodies could legitimately touch the other users' jobs
RAW_METHODS = ["SubmitJob", "GetJob", "ListNodes", "GetUsage"]


@needs_root
@FUZZ
@given(
    method=st.sampled_from(RAW_METHODS),
    body=st.one_of(
        st.binary(max_size=200),
        st.sampled_from(
            [
                b"\x0a\x03\xff\xfe\xfd",  # a string field that is not UTF-8
                b"\x0a\xff\xff\xff\xff\x0f",  # a length far past the end
                b"\x08" + b"\xff" * 10 + b"\x01",  # a varint too long
                b"\x0a\x06\x1a\x04\xff\xfe\xfd\xfc",  # JobSpec.workdir: not UTF-8
            ]
        ),
    ),
)
def test_raw_message_bodies(fuzzed: Fuzzed, method: str, body: bytes) -> None:
    call = fuzzed.channel.unary_unary(
        f"/gshare.v1.ClientService/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        reply = call(body, timeout=30)
    except grpc.RpcError as err:
        assert_refusal(err)
    else:
        if method == "SubmitJob":  # a body that happens to be a good job
            job_id = pb.SubmitJobResponse.FromString(reply).job_id
            fuzzed.stub.CancelJob(pb.JobIdRequest(job_id=job_id), timeout=30)
    fuzzed.still_fine()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@needs_root
@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=512),
        st.integers(0, len(PREFACE)).map(lambda n: PREFACE[:n]),
        st.binary(max_size=256).map(lambda b: PREFACE + b),
        st.binary(max_size=256).map(lambda b: PREFACE + SETTINGS + b),
        st.just(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        st.just(PREFACE + b"\x00\xff\xff\x01\x05\x00\x00\x00\x01" + b"\x00" * 64),
    ),
    close_early=st.booleans(),
)
def test_raw_bytes_on_the_socket(fuzzed: Fuzzed, data: bytes, close_early: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(fuzzed.cluster.sock))
        try:
            sock.sendall(data)
            if not close_early:
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
        except (TimeoutError, ConnectionError):
            pass  # the server may hang up, or wait for more: both are fine
    fuzzed.still_fine()


NOBODY = """
import json, math, sys, grpc
from gshare.api import gshare_pb2 as pb, gshare_pb2_grpc as pb_grpc
w = sys.argv[2]
def spec(**kw):
    values = dict(gpus=1, workdir=w, script=b"#!/bin/sh\\ntrue\\n")
    values.update(kw)
    return pb.JobSpec(**values)
bad = [
    spec(workdir="/" + "w" * 1_500_000), spec(grace_s=math.nan), spec(workdir=w + "/\\0"),
    spec(env={"A": "\\0"}), spec(output="\\0"), spec(mem_mb=2**63 - 1), spec(priority=5),
    spec(name="\\x1b[2J" * 100), spec(args=["a" * 40_000]), spec(env={"A=B": "1"}),
]
out = []
with grpc.insecure_channel(sys.argv[1], options=[("grpc.max_send_message_length", 1 << 26)]) as ch:
    stub = pb_grpc.ClientServiceStub(ch)
    for s in bad:
        try:
            out.append(["accepted", stub.SubmitJob(pb.SubmitJobRequest(spec=s)).job_id])
        except grpc.RpcError as e:
            out.append([e.code().name, e.details()])
    for job_id in json.loads(sys.argv[3]):  # root's jobs: not nobody's to change
        try:
            stub.CancelJob(pb.JobIdRequest(job_id=job_id))
            out.append(["cancelled", job_id])
        except grpc.RpcError as e:
            out.append([e.code().name, e.details()])
print(json.dumps(out))
"""


@needs_root
def test_hostile_requests_from_an_ordinary_user(fuzzed: Fuzzed) -> None:
    """The same through a client that `nobody` owns: identified by SO_PEERCRED as nobody."""
    script = fuzzed.workdir / "nobody_client.py"
    script.write_text(NOBODY)
    script.chmod(0o644)
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", PY, str(script)]
    cmd += [fuzzed.cluster.address, str(fuzzed.workdir), json.dumps(fuzzed.roots)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results: list[list[Any]] = json.loads(proc.stdout)
    names = {c.name for c in REFUSALS}
    assert len(results) == 10 + len(fuzzed.roots)
    for outcome, details in results:
        assert outcome in names, (outcome, str(details)[:200])
        assert "\n" not in details
    assert results[6][0] == "PERMISSION_DENIED"  # a positive priority: admins only
    assert all(outcome == "PERMISSION_DENIED" for outcome, _ in results[10:])
    fuzzed.still_fine()


@needs_root
def test_list_jobs_with_an_unknown_state_or_a_negative_limit(fuzzed: Fuzzed) -> None:
    for request in (
        pb.ListJobsRequest(states=[99]),  # type: ignore[list-item]
        pb.ListJobsRequest(states=[0]),  # type: ignore[list-item]
        pb.ListJobsRequest(limit=-5),
        pb.ListJobsRequest(limit=2**31 - 1),
    ):
        try:
            fuzzed.stub.ListJobs(request, timeout=30)
        except grpc.RpcError as err:
            assert_refusal(err)
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
        else:
            raise AssertionError(f"accepted {request}")
    fuzzed.still_fine()
