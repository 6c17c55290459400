"""Bad input: a clear one-line error, a non-zero exit, and nothing already accepted is lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.conftest import needs_root

GOOD = "#!/bin/bash\nsleep 30\n"


@pytest.fixture
def accepted(cluster: Cluster, workdir: Path) -> list[int]:
    """A queue that already holds jobs, running and pending."""
    ids = [cluster.submit("--wrap", "sleep 30", "--gpus", "4", cwd=workdir) for _ in range(3)]
    return ids


def _bad_inputs(workdir: Path) -> dict[str, tuple[list[str], str]]:
    good = workdir / "good.sh"
    good.write_text(GOOD)
    binary = workdir / "binary.sh"
    binary.write_bytes(b"#!/bin/bash\n\x00\x01\x02\xff\xfe")
    big = workdir / "big.sh"
    big.write_text("#!/bin/bash\n" + "# padding\n" * 110_000)
    malformed = workdir / "malformed.sh"
    malformed.write_text("#!/bin/bash\n#GSUB --gpus\necho hi\n")
    unknown_directive = workdir / "unknown.sh"
    unknown_directive.write_text("#!/bin/bash\n#GSUB --frobnicate 3\necho hi\n")
    quote = workdir / "quote.sh"
    quote.write_text("#!/bin/bash\n#GSUB --name 'unterminated\necho hi\n")
    noshebang = workdir / "noshebang.sh"
    noshebang.write_text("echo hi\n")
    fifo = workdir / "fifo.sh"
    os.mkfifo(fifo)
    return {
        "gpus zero": (["--gpus", "0", str(good)], "--gpus must be at least 1"),
        "gpus negative": (["--gpus", "-1", str(good)], "--gpus must be at least 1"),
        "gpus huge": (["--gpus", str(10**9), str(good)], "more than any node"),
        "gpus not a number": (["--gpus", "two", str(good)], "whole number"),
        "missing script": ([str(workdir / "nope.sh")], "No such file or directory"),
        "directory": ([str(workdir)], "is a directory"),
        "binary": ([str(binary)], "binary file"),
        "too big": ([str(big)], "limited to 1048576 bytes"),
        "unknown option": (["--frobnicate", str(good)], "unrecognized arguments: --frobnicate"),
        "malformed #GSUB": (
            [str(malformed)],
            "malformed.sh:2: #GSUB --gpus: argument -g/--gpus: expected one argument",
        ),
        "unknown #GSUB option": (
            [str(unknown_directive)],
            "unknown.sh:2: #GSUB: unknown option --frobnicate",
        ),
        "unbalanced quote in #GSUB": ([str(quote)], "quote.sh:2: malformed #GSUB line"),
        "no #! line": ([str(noshebang)], "interpreter line"),
        "bad time": (["--time", "soon", str(good)], "bad duration 'soon'"),
        "bad memory": (["--mem", "lots", str(good)], "bad memory size 'lots'"),
        "bad env": (["--env", "NOEQUALS", str(good)], "--env needs KEY=VALUE"),
        "no script": ([], "no job script given"),
        "a FIFO": ([str(fifo)], "not a regular file"),
        "a device": (["/dev/zero"], "not a regular file"),
        "memory past int64": (["--mem", "99999999999999999999T", str(good)], "--mem"),
        "cpus past int32": (["--cpus", "99999999999999999999", str(good)], "--cpus"),
        "a century": (["--time", "36500d", str(good)], "over the limit"),
    }


def test_bad_gsub_input(cluster: Cluster, workdir: Path, accepted: list[int]) -> None:
    """One cluster, every kind of bad submission; each checked on its own."""
    failures = []
    for case, (argv, message) in _bad_inputs(workdir).items():
        before = cluster.queue_ids()
        res = cluster.gsub(*argv, cwd=workdir)
        problems = []
        if res.code == 0:
            problems.append("exit 0")
        if message not in res.err:
            problems.append(f"message {message!r} missing")
        if "Traceback" in res.err or len(res.err.strip().splitlines()) > 3:
            problems.append("not a short error")
        if cluster.queue_ids() != before or not set(accepted) <= set(before):
            problems.append("the queue changed")
        if problems:
            failures.append(f"{case}: {', '.join(problems)}; stderr: {res.err.strip()!r}")
    assert not failures, "\n".join(failures)


@needs_root
def test_unreadable_script(cluster: Cluster, workdir: Path, accepted: list[int]) -> None:
    secret = workdir / "secret.sh"
    secret.write_text(GOOD)
    secret.chmod(0o600)
    before = cluster.queue_ids()
    res = cluster.gsub(str(secret), user="nobody", cwd=workdir)
    assert res.code != 0 and "Permission denied" in res.err, res.err
    assert cluster.queue_ids() == before


@needs_root
def test_users_may_only_lower_priority_and_only_touch_their_own_jobs(
    cluster: Cluster, workdir: Path
) -> None:
    good = workdir / "good.sh"
    good.write_text(GOOD)
    good.chmod(0o644)
    res = cluster.gsub("--priority", "5", str(good), user="nobody", cwd=workdir)
    assert res.code != 0 and "only an admin may give a job a positive priority" in res.err
    mine = cluster.submit("--priority", "-5", str(good), user="nobody", cwd=workdir)
    roots = cluster.submit(str(good), cwd=workdir)
    job = cluster.job(mine)
    assert job.user == "nobody" and job.uid == 65534
    for verb in ("cancel", "hold"):
        res = cluster.gshare(verb, str(roots), user="nobody")
        assert res.code != 0 and f"job {roots} belongs to root" in res.err
    assert cluster.state(roots) in ("PENDING", "RUNNING", "STARTING")
    res = cluster.gshare("cancel", str(mine), user="nobody")
    assert res.code == 0, res.err
    cluster.wait_state(mine, "CANCELLED")
    assert cluster.gshare("cancel", str(roots)).code == 0  # root may


@needs_root
def test_a_job_runs_as_its_owner(cluster: Cluster, workdir: Path) -> None:
    path = workdir / "whoami.sh"
    path.write_text('#!/bin/bash\necho "$(id -u) $(id -g) $(id -G) $HOME $USER"\n')
    path.chmod(0o755)
    job_id = cluster.submit(str(path), user="nobody", cwd=workdir)
    job = cluster.wait_state(job_id, {"COMPLETED", "FAILED"})
    assert job.exit_code == 0, job.reason
    out = Path(cluster.job(job_id).output_path).read_text().split()
    assert out[:3] == ["65534", "65534", "65534"] and out[-1] == "nobody"
    assert os.stat(cluster.job(job_id).output_path).st_uid == 65534


def test_gshare_errors_are_clear(cluster: Cluster) -> None:
    for argv, message in (
        (["show", "999"], "no job 999"),
        (["cancel", "999"], "no job 999"),
        (["release", "999"], "no job 999"),
        (["queue", "--state", "sleeping"], "unknown state 'sleeping'"),
        (["show", "abc"], "a job id is a whole number, not 'abc'"),
        (["frobnicate"], "invalid choice"),
        (["cancel", "99999999999999999999"], "no job can have the id"),
        (["show", "9223372036854775808"], "no job can have the id"),
        (["why", "0"], "no job can have the id"),
    ):
        res = cluster.gshare(*argv)
        assert res.code != 0 and message in res.err, (argv, res.err)
        assert "Traceback" not in res.err


def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = dict(os.environ, GSHARE_ADDRESS=f"unix:{tmp_path}/none.sock")
    gshare = Path(sys.executable).parent / "gshare"
    res = subprocess.run(
        [str(gshare), "queue"], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 1
    assert "cannot reach the scheduler" in res.stderr and "gshare up" in res.stderr
    env["GSHARE_ADDRESS"] = "not an address"
    res = subprocess.run(
        [str(gshare), "queue"], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode != 0 and "bad scheduler address" in res.stderr


@needs_root
def test_priority_changes_follow_the_same_rules_as_submits(cluster: Cluster, workdir: Path) -> None:
    good = workdir / "good.sh"
    good.write_text(GOOD)
    good.chmod(0o644)
    blockers = [cluster.submit("--wrap", "sleep 300", "--gpus", "4", cwd=workdir) for _ in range(2)]
    mine = cluster.submit(str(good), "--gpus", "4", user="nobody", cwd=workdir)
    res = cluster.gshare("priority", "5", str(mine), user="nobody")
    assert res.code != 0 and "only an admin may give a job a positive priority" in res.err
    assert cluster.gshare("priority", "-3", str(mine), user="nobody").code == 0
    assert cluster.job(mine).spec.priority == -3
    res = cluster.gshare("priority", "1", str(blockers[0]), user="nobody")
    assert res.code != 0 and "belongs to root" in res.err
    assert cluster.gshare("priority", "9", str(mine)).code == 0  # root is an admin
    assert cluster.job(mine).spec.priority == 9
