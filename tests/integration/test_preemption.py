"""Checkpoint-preempt-resume with real processes: the agent signals, the job saves and
yields, the scheduler requeues it, and it resumes where it saved."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gshare.api import gshare_pb2 as pb
from gshare.client import Client
from tests.cluster import Cluster, wait_until

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
[scheduler]
kill_grace_s = 3

[scheduler.policy_params]
min_runtime_s = 0

[queues.default]
grace = "20s"
"""
TRAIN_ARGS = ["--steps", "160", "--save-every", "20", "--step-sleep", "0.03", "--width", "128"]

# a job without torch that uses the plain-Python side of the SDK
PLAIN = f"""#!/bin/bash
exec {sys.executable} -c '
import time
from gshare.checkpoint import Checkpointer
c = Checkpointer()
saved = c.load()
step = saved[0] if saved else 0
print("start at", step, flush=True)
while step < 100000:
    time.sleep(0.05)
    step += 1
    if step % 5 == 0 or c.should_stop():
        c.save(step, {{"step": step}})
    if c.should_stop():
        c.exit_yielded()
'
"""


@pytest.fixture
def small(cluster_factory: Callable[..., Cluster]) -> Cluster:
    return cluster_factory(config=CONFIG, agents=1, gpus_per_node=4)


def events(cluster: Cluster, job_id: int) -> list[tuple[str, str]]:
    return [(e.kind, e.to_state) for e in cluster.job(job_id).events]


def checkpointed(cluster: Cluster, job_id: int, after: float = 0.0) -> bool:
    job = cluster.job(job_id)
    return job.state == pb.RUNNING and job.last_checkpoint > after


def test_a_high_priority_job_preempts_and_the_victims_resume_bitwise(
    small: Cluster, workdir: Path
) -> None:
    train = str(REPO / "examples" / "train.sh")
    victims = [small.submit(train, "--gpus", "2", "--", *TRAIN_ARGS, cwd=workdir) for _ in range(2)]
    for job_id in victims:  # running, and far enough that torch is loaded and a save happened
        wait_until(
            f"job {job_id} to checkpoint", lambda j=job_id: checkpointed(small, j), timeout=90
        )
    submitted = time.time()
    high = small.submit(
        "--wrap", "sleep 2", "--gpus", "4", "--priority", "10", "--no-preempt", cwd=workdir
    )
    started = small.wait_state(high, {"RUNNING", "COMPLETED"}, timeout=30)
    assert started.start_time - submitted <= 20 + 2  # within the grace period + 2 s
    small.wait_state(high, "COMPLETED")
    for job_id in victims:
        done = small.wait_state(job_id, {"COMPLETED", "FAILED"}, timeout=120)
        assert pb.JobState.Name(done.state) == "COMPLETED", done.reason
        assert done.restarts == 1 and done.preemptions == 1
        kinds = events(small, job_id)
        assert ("preempt", "PREEMPTING") in kinds and ("requeue", "PENDING") in kinds
        assert kinds.count(("running", "RUNNING")) == 2
        shown = json.loads(small.gshare("show", str(job_id), "--json").out)
        assert shown["checkpoints"] and shown["preemptions"] == 1
        log = Path(small.job(job_id).output_path).read_text()
        assert "yielding at step" in log and "resumed at step" in log
    # the same training, never interrupted
    reference = workdir / "reference"
    import subprocess

    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "train.py"),
            *TRAIN_ARGS,
            "--checkpoint-dir",
            str(reference),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
    )
    assert res.returncode == 0, res.stderr
    import torch

    want = torch.load(reference / "final.pt")
    for job_id in victims:
        got = torch.load(Path(small.job(job_id).checkpoint_dir) / "final.pt")
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), f"job {job_id} differs"


def test_a_job_that_ignores_the_signal_is_killed_at_the_end_of_its_grace(
    small: Cluster, workdir: Path
) -> None:
    stubborn = small.submit(
        "--wrap",
        "trap '' USR1; sleep 300",
        "--gpus",
        "4",
        "--grace",
        "2s",
        "--max-restarts",
        "0",
        cwd=workdir,
    )
    small.wait_state(stubborn, "RUNNING")
    time.sleep(0.5)
    res = small.gshare("preempt", str(stubborn))
    assert res.code == 0, res.err
    asked = time.time()
    done = small.wait_state(stubborn, {"FAILED", "PENDING", "COMPLETED"}, timeout=30)
    ended = time.time()
    assert pb.JobState.Name(done.state) == "FAILED"
    assert "ignored SIGUSR1 and was killed at the end of its 2s grace" in done.reason
    assert "over --max-restarts 0" in done.reason
    assert 1.5 <= ended - asked <= 2 + 3 + 3  # grace, then SIGTERM (kill_grace 3 s at most)
    with Client(small.address) as c:
        assert all(not n.busy_gpus for n in c.nodes())  # its GPUs are free


def test_repeated_preemption_stops_at_max_restarts(small: Cluster, workdir: Path) -> None:
    script = workdir / "plain.sh"
    script.write_text(PLAIN)
    job_id = small.submit(str(script), "--gpus", "1", "--max-restarts", "2", cwd=workdir)
    for round_ in range(3):
        wait_until("a checkpoint", lambda: checkpointed(small, job_id), timeout=30)
        res = small.gshare("preempt", str(job_id))
        assert res.code == 0, res.err
        state = small.wait_state(job_id, {"RUNNING", "FAILED", "PENDING"}, timeout=30)
        if round_ < 2:
            state = small.wait_state(job_id, "RUNNING", timeout=30)
            assert state.restarts == round_ + 1
    done = small.wait_state(job_id, "FAILED", timeout=30)
    assert "yielded after its checkpoint" in done.reason and "over --max-restarts 2" in done.reason
    assert done.preemptions == 3 and done.exit_code == 75
    starts = [
        line
        for line in Path(small.job(job_id).output_path).read_text().splitlines()
        if line.startswith("start at")
    ]
    assert starts[0] == "start at 0" and all(int(s.split()[-1]) > 0 for s in starts[1:])


def test_no_preempt_jobs_are_never_chosen_and_preempt_refuses_clearly(
    small: Cluster, workdir: Path
) -> None:
    keeper = small.submit(
        "--wrap", "sleep 300", "--gpus", "4", "--no-preempt", "--priority", "-1", cwd=workdir
    )
    small.wait_state(keeper, "RUNNING")
    high = small.submit("--wrap", "true", "--gpus", "4", "--priority", "10", cwd=workdir)
    time.sleep(2)
    assert small.state(keeper) == "RUNNING" and small.state(high) == "PENDING"
    res = small.gshare("preempt", str(high))
    assert res.code != 0 and "only a running job can be preempted" in res.err
    res = small.gsub("--wrap", "true", "--signal", "KILL", cwd=workdir)
    assert res.code == 2 and "cannot catch that signal" in res.err
    small.gshare("cancel", str(keeper), str(high))


def test_the_victim_order_from_the_config_picks_the_youngest_and_it_resumes(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    config = CONFIG.replace("min_runtime_s = 0", 'min_runtime_s = 0\nvictim_order = "youngest"')
    cluster = cluster_factory(config=config, agents=1, gpus_per_node=4)
    script = workdir / "plain.sh"
    script.write_text(PLAIN)
    older = cluster.submit(str(script), "--gpus", "2", cwd=workdir)
    wait_until("the older job to checkpoint", lambda: checkpointed(cluster, older), timeout=30)
    younger = cluster.submit(str(script), "--gpus", "2", cwd=workdir)
    wait_until("the younger job to checkpoint", lambda: checkpointed(cluster, younger), timeout=30)
    high = cluster.submit("--wrap", "sleep 1", "--gpus", "2", "--priority", "10", cwd=workdir)
    cluster.wait_state(high, "COMPLETED", timeout=60)
    resumed = cluster.wait_state(younger, "RUNNING", timeout=60)
    assert resumed.preemptions == 1 and resumed.restarts == 1
    assert cluster.job(older).preemptions == 0 and cluster.state(older) == "RUNNING"

    def starts() -> list[str]:
        text = Path(resumed.output_path).read_text()
        return [line for line in text.splitlines() if line.startswith("start at")]

    wait_until("the younger job to start again", lambda: len(starts()) == 2, timeout=30)
    assert starts()[0] == "start at 0" and int(starts()[1].split()[-1]) > 0  # its checkpoint
    cluster.gshare("cancel", str(older), str(younger))
