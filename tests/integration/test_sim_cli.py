"""`gshare sim` as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cluster import BIN

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
        ([str(trace), "--nodes", "0"], "--nodes and --gpus-per-node must be at least 1"),
        ([str(trace), "--half-life", "soon"], "bad duration 'soon'"),
    ):
        res = run(*argv)
        assert res.returncode == 2 and message in res.stderr, (argv, res.stderr)
        assert "Traceback" not in res.stderr
