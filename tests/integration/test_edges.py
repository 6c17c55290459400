"""Regressions for the trust-boundaries findings 2, 3 and 9: one user's bad request never
breaks the cluster or another's request, and the command line answers bad input in one line."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from tests.cluster import PY, Cluster
from tests.conftest import needs_root

GOOD = "#!/bin/bash\nsleep 30\n"


@pytest.fixture
def stub(cluster: Cluster) -> Iterator[pb_grpc.ClientServiceStub]:
    """The ClientService straight over the Unix socket (as root: the test's own user)."""
    with grpc.insecure_channel(cluster.address) as channel:
        yield pb_grpc.ClientServiceStub(channel)


def spec(where: Path, **kw: Any) -> pb.JobSpec:
    values: dict[str, Any] = dict(gpus=1, workdir=str(where), script=b"#!/bin/sh\ntrue\n")
    values.update(kw)
    return pb.JobSpec(**values)


def refusal(stub: pb_grpc.ClientServiceStub, bad: pb.JobSpec) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitJob(pb.SubmitJobRequest(spec=bad), timeout=30)
    err = caught.value
    assert isinstance(err, grpc.Call)
    return err.code(), err.details() or ""


def one_line_error(res: Any) -> None:
    assert res.code != 0, res.out
    assert "Traceback" not in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1, res.err


@needs_root
def test_a_huge_workdir_is_refused_and_the_queue_works_for_others(
    cluster: Cluster, workdir: Path, stub: pb_grpc.ClientServiceStub
) -> None:
    good = workdir / "good.sh"
    good.write_text(GOOD)
    good.chmod(0o644)
    theirs = cluster.submit(str(good), user="nobody", cwd=workdir)
    code, details = refusal(stub, spec(workdir, workdir="/" + "w" * 1_500_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("workdir: 1500001 characters, over the limit of 4096"), details
    res = cluster.gshare("queue", user="nobody")
    assert res.code == 0, res.err
    assert str(theirs) in res.out
    assert cluster.state(theirs) in ("PENDING", "STARTING", "RUNNING", "COMPLETED")


def test_nul_bytes_and_out_of_range_numbers_are_refused_by_field(
    cluster: Cluster, workdir: Path, stub: pb_grpc.ClientServiceStub
) -> None:
    before = cluster.queue_ids()
    for bad, field in (
        (spec(workdir, workdir=f"{workdir}/\0x"), "workdir:"),
        (spec(workdir, env={"A": "1\0"}), "env: A:"),
        (spec(workdir, output="log\0.txt"), "output:"),
        (spec(workdir, mem_mb=2**63 - 1), "mem_mb:"),
        (spec(workdir, grace_s=math.nan), "grace_s:"),
        (spec(workdir, grace_s=math.inf), "grace_s:"),
        (spec(workdir, time_limit_s=2**63 - 1), "time_limit_s:"),
    ):
        code, details = refusal(stub, bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, code, details)
        assert details.startswith(field) and "\n" not in details, details
    assert cluster.queue_ids() == before


BURST = """
import json, sys, grpc
from gshare.api import gshare_pb2 as pb, gshare_pb2_grpc as pb_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = pb_grpc.ClientServiceStub(channel)
    spec = pb.JobSpec(gpus=1, workdir=sys.argv[2], script=b"#!/bin/sh\\ntrue\\n", name="good")
    calls = [stub.SubmitJob.future(pb.SubmitJobRequest(spec=spec), timeout=60)
             for _ in range(int(sys.argv[3]))]
    out = []
    for c in calls:
        try:
            out.append(c.result().job_id)
        except grpc.RpcError as e:
            out.append(str(e.code()) + " " + e.details())
print(json.dumps(out))
"""


@needs_root
def test_bad_submits_in_a_burst_fail_alone(
    cluster: Cluster, workdir: Path, stub: pb_grpc.ClientServiceStub
) -> None:
    """200 good submits from nobody, and bad ones (NaN grace) from root in the same burst."""
    script = workdir / "burst.py"
    script.write_text(BURST)
    script.chmod(0o644)
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    cmd += [PY, str(script), cluster.address, str(workdir), "200"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    others = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    nan = pb.SubmitJobRequest(spec=spec(workdir, grace_s=math.nan))
    bad: list[Any] = []
    while others.poll() is None and len(bad) < 400:  # bad ones all through the burst
        wave = [stub.SubmitJob.future(nan, timeout=60) for _ in range(10)]
        for call in wave:
            with contextlib.suppress(grpc.RpcError):
                call.result()
        bad += wave
    out, err = others.communicate(timeout=120)
    assert others.returncode == 0, err.decode()
    results = json.loads(out)
    refused = [r for r in results if not isinstance(r, int)]
    assert not refused, (len(refused), refused[:3])
    assert len(set(results)) == 200
    assert bad
    for call in bad:
        assert call.code() == grpc.StatusCode.INVALID_ARGUMENT, call.details()
    with cluster.client() as c:
        mine = {j.job_id for j in c.jobs(users=["nobody"], include_finished=True)}
    assert set(results) <= mine


def test_cli_edges_answer_in_one_line(cluster: Cluster, workdir: Path) -> None:
    ok = workdir / "ok.sh"
    ok.write_text(GOOD)
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    before = cluster.queue_ids()
    cases: list[tuple[list[str], str, str]] = [
        (["gsub", str(ok), "--mem", "99999999999999999999T"], "--mem", "limit"),
        (["gsub", str(ok), "--mem", "9" * 5000], "--mem", ""),
        (["gsub", str(ok), "--gpus", "99999999999999999999"], "--gpus", "more than any node"),
        (["gsub", str(ok), "--cpus", "99999999999999999999"], "--cpus", "not between"),
        (["gsub", str(ok), "--time", "99999999999999999999d"], "--time", "over the limit"),
        (["gsub", str(ok), "--grace", "2d"], "--grace", "over the limit"),
        (["gsub", "/dev/zero"], "/dev/zero", "not a regular file"),
        (["gsub", str(fifo)], "fifo", "not a regular file"),
        (["gsub", str(workdir)], str(workdir), "is a directory"),
        (["gshare", "cancel", "99999999999999999999"], "no job can have the id", ""),
        (["gshare", "show", "9223372036854775808"], "no job can have the id", ""),
        (["gshare", "show", "0"], "no job can have the id", ""),
        (["gshare", "why", "-5"], "", ""),
        (["gshare", "hold", "1", "18446744073709551616"], "no job can have the id", ""),
    ]
    for argv, *messages in cases:
        run = cluster.gsub if argv[0] == "gsub" else cluster.gshare
        res = run(*argv[1:], cwd=workdir, timeout=30)
        one_line_error(res)
        for message in messages:
            assert message in res.err, (argv, res.err)
    assert cluster.queue_ids() == before


EVIL = "evil\x1b[31mred\x1b[0m\nFAKE  nobody  default  RUNNING  1  node0  0s\x07\x9b\u202e"


def test_control_characters_in_a_name_are_shown_escaped(cluster: Cluster, workdir: Path) -> None:
    job = cluster.submit("--wrap", "sleep 30", "--name", EVIL, cwd=workdir)
    queue = cluster.gshare("queue")
    assert queue.code == 0, queue.err
    assert len(queue.out.strip().splitlines()) == 1 + len(cluster.queue_ids()), queue.out
    show = cluster.gshare("show", str(job))
    assert show.code == 0, show.err
    why = cluster.gshare("why", str(job))
    for out in (queue.out, show.out, why.out):
        assert not any(c in out for c in "\x1b\x07\x9b\u202e"), out
        assert not any(line.startswith("FAKE") for line in out.splitlines()), out
    assert "evil\\x1b[31mred" in queue.out
    assert f"{job} (evil\\x1b[31mred\\x1b[0m\\nFAKE  nobody" in show.out
    assert "\\x07\\x9b\\u202e)" in show.out
    assert json.loads(cluster.gshare("show", str(job), "--json").out)["name"] == EVIL
