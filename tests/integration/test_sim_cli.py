"""`gshare sim` as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cluster import BIN
from tests.conftest import needs_root

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
HEADER = "job_id,submit_time_s,duration_s,gpus,user,group,status\n"
ROWS = [
    "a1,0,3600,8,alice,vision,completed",
    "a2,10,3600,8,alice,vision,completed",
    "a3,20,3600,8,alice,vision,failed",
    "c1,30,600,4,carol,nlp,completed",
    "c2,40,600,4,carol,nlp,killed",
    "w1,50,60,64,dave,nlp,completed",
]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "gshare"), "sim", *argv], capture_output=True, text=True, timeout=120
    )


def test_sim_reports_text_json_and_a_plot(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "\n".join(ROWS) + "\n")
    text = run(str(trace), "--nodes", "2", "--gpus-per-node", "8")
    assert text.returncode == 0, text.stderr
    assert "policy fairshare, 2 nodes x 8 GPUs (16 GPUs), 5 jobs, 1 left out" in text.stdout
    assert "Jain's fairness index" in text.stdout and "vision" in text.stdout
    out = run(str(trace), "--nodes", "2", "--gpus-per-node", "8", "--policy", "fifo", "--json")
    figures = json.loads(out.stdout)
    for key in (
        "avg_jct_s",
        "p95_wait_s",
        "utilization",
        "jain_fairness",
        "jain_fairness_users",
        "preemptions",
        "groups",
    ):
        assert key in figures
    assert set(figures["groups"]) == {"vision", "nlp"} and figures["jobs"] == 5
    assert 0 < figures["utilization"] <= 1
    png = tmp_path / "plot.png"
    res = run(str(trace), "--nodes", "2", "--plot", str(png), "--policy-param", "backfill=false")
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sim_bad_input(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text(HEADER + ROWS[0] + "\n" + "x,5,soon,1,u,g,completed\n")
    for argv, message in (
        ([str(trace)], f"{trace}:3: duration_s must be a number, not 'soon'"),
        ([str(tmp_path / "none.csv")], "cannot read trace"),
        ([str(trace), "--policy", "nope"], "unknown scheduling policy 'nope'"),
        (
            [str(trace), "--policy-param", "weight_age=-1", "--policy", "priority"],
            "must not be negative",
        ),
        (
            [str(trace), "--policy-param", "min_runtime_s=nan"],
            "bad parameters: min_runtime_s must be a finite number, not nan",
        ),
        ([str(trace), "--nodes", "0"], "--nodes and --gpus-per-node must be at least 1"),
        ([str(trace), "--half-life", "soon"], "bad duration 'soon'"),
    ):
        res = run(*argv)
        assert res.returncode == 2 and message in res.stderr, (argv, res.stderr)
        assert "Traceback" not in res.stderr


def test_sim_reports_the_cost_of_decisions_and_groups_by_user(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    # no group column at all: each user is a group of their own
    rows = [r.rsplit(",", 2)[0] + ",," + r.rsplit(",", 1)[1] for r in ROWS]
    trace.write_text(HEADER + "\n".join(rows) + "\n")
    argv = [str(trace), "--nodes", "1", "--gpus-per-node", "8", "--checkpoint-every", "10"]
    text = run(*argv, "--group-by", "user")
    assert text.returncode == 0, text.stderr
    assert "(groups: each user)" in text.stdout
    assert "lost to preemption" in text.stdout and "idle while a job that fit waited" in text.stdout
    figures = json.loads(run(*argv, "--json").stdout)
    assert set(figures["groups"]) == {"alice", "carol"}  # empty group: the user alone
    assert figures["group_by"] == "group"
    assert figures["preemption_gpu_h"] == pytest.approx(
        figures["lost_work_gpu_h"] + figures["restart_gpu_h"]
    )
    assert figures["idle_waiting_gpu_h"] == pytest.approx(sum(figures["idle_gpu_h"].values()))
    victims = run(*argv, "--json", "--policy-param", "victim_order=youngest")
    assert victims.returncode == 0, victims.stderr
    res = run(*argv, "--policy-param", "victim_order=oldest")
    assert res.returncode == 2 and "victim_order must be one of" in res.stderr
    res = run(*argv, "--group-by", "team")
    assert res.returncode == 2 and "invalid choice: 'team'" in res.stderr


@needs_root
def test_sim_as_nobody_refuses_what_it_cannot_read(workdir: Path) -> None:
    tmp_path = workdir
    secret = tmp_path / "secret.csv"
    secret.write_text(HEADER + ROWS[0] + "\n")
    secret.chmod(0o600)
    link = tmp_path / "link.csv"
    link.symlink_to("/etc/shadow")
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    nul = tmp_path / "nul.csv"
    nul.write_bytes(HEADER.encode() + b"a,0,5,1,al\x00ice,g,completed\n")
    nul.chmod(0o644)
    for path, message in (
        (secret, "Permission denied"),
        (link, "Permission denied"),
        (loop, "Too many levels of symbolic links"),
        (nul, ":2: user has a control character"),
    ):
        res = subprocess.run(
            [*NOBODY, str(BIN / "gshare"), "sim", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 2, (path, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
