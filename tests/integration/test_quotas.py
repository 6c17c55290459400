"""Quotas and GPU types with real processes: a team's guarantee reclaimed from a borrower
whose job checkpoints, yields and resumes; GPU types from the agents' fake GPUs; the
per-user cap on waiting jobs refused at submit."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from gshare.api import gshare_pb2 as pb
from gshare.client import Client, ClientError
from tests.cluster import Cluster, wait_until
from tests.conftest import needs_root
from tests.integration.test_top import settle, text_of
from tui.app import GshareTop
from tui.cluster import ClusterView

# root's jobs (team nlp) borrow; nobody's (team vision) are guaranteed the node's 4 GPUs
RECLAIM = """
[scheduler]
kill_grace_s = 3

[scheduler.policy_params]
min_runtime_s = 0
fairshare_preemption = false   # only the guarantee may preempt here

[queues.default]
grace = "20s"

[fairshare]
reclaim_after = "30s"  # time enough to read why and usage before the reclaim

[fairshare.accounts.vision]
users = ["nobody"]
guaranteed = 4

[fairshare.accounts.nlp]
users = ["root"]
"""

# a job that counts steps, saves each 5 and on the signal, and resumes from its save
COUNTER = f"""#!/bin/bash
exec {sys.executable} -c '
import time
from gshare.checkpoint import Checkpointer
c = Checkpointer()
saved = c.load()
step = saved[0] if saved else 0
print("start at", step, flush=True)
while step < 1200:  # about 60 s: still running when the reclaim comes
    time.sleep(0.05)
    step += 1
    if step % 5 == 0 or c.should_stop():
        c.save(step, {{"step": step}})
    if c.should_stop():
        c.exit_yielded()
print("done at", step, flush=True)
'
"""


@needs_root
def test_a_guarantee_is_reclaimed_from_a_borrower_that_checkpoints_and_resumes(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config=RECLAIM, agents=1, gpus_per_node=4)
    script = workdir / "counter.sh"
    script.write_text(COUNTER)
    script.chmod(0o755)
    borrower = cluster.submit(str(script), "--gpus", "4", cwd=workdir)
    wait_until(
        "the borrower's checkpoint",
        lambda: cluster.job(borrower).last_checkpoint > 0,
        timeout=60,
    )
    owner = cluster.submit("--wrap", "sleep 1", "--gpus", "4", user="nobody", cwd=workdir)

    def waiting_says_when() -> str:
        return cluster.job(owner).reason

    wait_until("the owner's reason", lambda: "guarantee" in waiting_says_when(), timeout=10)
    why = cluster.gshare("why", str(owner))
    assert why.code == 0, why.err
    assert "team vision is under its guarantee (0 of 4 GPUs)" in why.out
    assert "borrowing teams nlp (4)" in why.out
    usage = cluster.gshare("usage")
    assert usage.code == 0, usage.err
    assert "borrows from unguaranteed GPUs" in usage.out or "borrows from vision" in usage.out
    assert "reclaims from nlp" in usage.out
    usage_json = json.loads(cluster.gshare("usage", "--json").out)
    vision = next(a for a in usage_json["accounts"] if a["path"] == ["vision"])
    assert vision["guaranteed"] == "4" and vision["reclaim_from"] == ["nlp"]

    done = cluster.wait_state(owner, "COMPLETED", timeout=90)
    kinds = [(e.kind, e.to_state) for e in cluster.job(borrower).events]
    assert ("preempt", "PREEMPTING") in kinds
    preempted = next(e for e in cluster.job(borrower).events if e.kind == "preempt")
    assert "team vision reclaims its guarantee (0 of 4 GPUs held) from team nlp" in (
        preempted.reason
    )
    assert preempted.time >= done.submit_time + 30 - 1  # not before reclaim_after
    resumed = cluster.wait_state(borrower, "COMPLETED", timeout=120)
    assert resumed.restarts == 1 and resumed.preemptions == 1
    starts = [
        line
        for line in Path(resumed.output_path).read_text().splitlines()
        if line.startswith(("start at", "done at"))
    ]
    assert starts[0] == "start at 0" and int(starts[1].split()[-1]) > 0
    assert starts[-1] == "done at 1200"


def test_why_and_usage_promise_no_reclaim_from_a_borrower_that_cannot_be_preempted(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config=RECLAIM, agents=1, gpus_per_node=4)
    borrower = cluster.submit("--no-preempt", "--wrap", "sleep 300", "--gpus", "4", cwd=workdir)
    cluster.wait_state(borrower, "RUNNING")
    owner = cluster.submit("--wrap", "sleep 1", "--gpus", "4", user="nobody", cwd=workdir)
    wait_until("the owner's reason", lambda: "guarantee" in cluster.job(owner).reason)
    why = cluster.gshare("why", str(owner), user="nobody")
    assert why.code == 0, why.err
    assert "team nlp borrows, but no borrowing job can be preempted" in why.out
    assert "reclaims from" not in why.out and "reclaiming from" not in why.out
    usage_json = json.loads(cluster.gshare("usage", "--json").out)
    vision = next(a for a in usage_json["accounts"] if a["path"] == ["vision"])
    assert vision["reclaim_from"] == []
    assert cluster.state(borrower) == "RUNNING"
    cluster.gshare("cancel", str(borrower), str(owner))


TYPES = """
[scheduler]
kill_grace_s = 3

[fairshare.users.nobody]
max_pending_jobs = 1

[fairshare.accounts.nlp]
users = ["nobody"]
limit = { H100 = 1 }
"""


@needs_root
def test_gpu_types_place_jobs_and_bad_types_and_caps_are_refused(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(
        config=TYPES,
        agents=2,
        gpus_per_node=2,
        gpu_models=("NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"),
    )
    nodes = cluster.gshare("nodes")
    assert "NVIDIA A100-SXM4-80GB" in nodes.out and "NVIDIA H100 80GB HBM3" in nodes.out
    h100 = cluster.submit("--gpu-type", "h100", "--wrap", "sleep 60", "--gpus", "2", cwd=workdir)
    assert cluster.wait_state(h100, "RUNNING").node == "node1"
    a100 = cluster.submit("--gpu-type", "A100,v100", "--wrap", "sleep 60", cwd=workdir)
    assert cluster.wait_state(a100, "RUNNING").node == "node0"
    assert json.loads(cluster.gshare("show", str(a100), "--json").out)["gpu_types"] == [
        "A100",
        "v100",
    ]
    assert "A100, v100" in cluster.gshare("show", str(a100)).out

    # nobody's first job waits for node1's H100s, held by root's job
    first = cluster.submit("--gpu-type", "h100", "--wrap", "sleep 60", user="nobody", cwd=workdir)
    wait_until("the first job's reason", lambda: bool(cluster.job(first).reason))
    # max_pending_jobs = 1: a second waiting job is refused, with the reason, one line
    res = cluster.gsub("--wrap", "true", "--gpu-type", "h100", user="nobody", cwd=workdir)
    assert res.code != 0 and res.err.count("\n") == 1
    assert "user nobody has 1 jobs waiting, the most max_pending_jobs allows is 1" in res.err
    cluster.gshare("cancel", str(h100))
    assert cluster.wait_state(first, "RUNNING").node == "node1"
    # its team's H100 limit is 1: the next waits, though node1 has an H100 free
    second = cluster.submit("--gpu-type", "h100", "--wrap", "true", user="nobody", cwd=workdir)
    wait_until("the second job's reason", lambda: bool(cluster.job(second).reason))
    assert cluster.job(second).reason.startswith("team nlp is at its H100 limit of 1")
    assert cluster.state(second) == "PENDING"
    cluster.gshare("cancel", str(first), str(second), str(a100))

    for bad, message in [
        ("v100", "no registered node has such GPUs"),
        ("a" * 65, "is not a GPU type name"),
        (",".join(["a100"] * 17), "expected 1 to 16 GPU type names"),
        ("a100,,h100", "expected 1 to 16 GPU type names"),
    ]:
        res = cluster.gsub("--gpu-type", bad, "--wrap", "true", cwd=workdir)
        assert res.code != 0 and message in res.err, (bad, res.err)
        assert res.err.count("\n") == 1, res.err
    # what gsub would refuse, straight over the wire
    for kinds, message in [
        (["a\0b"], "is not a GPU type name"),
        (["x" * 1000], "is not a GPU type name"),
        ([" "], "is not a GPU type name"),
        (["a100"] * 17, "17 types, over the limit of 16"),
    ]:
        spec = pb.JobSpec(
            gpus=1, workdir=str(workdir), script=b"#!/bin/bash\ntrue\n", gpu_types=kinds
        )
        with Client(cluster.address) as client, pytest.raises(ClientError) as err:
            client.submit(spec)
        assert message in str(err.value), (kinds, err.value)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[fairshare.accounts.vision]\nguaranteed = nan\n", "guaranteed must be a whole number"),
        ("[fairshare.accounts.vision]\nguaranteed = 8\nlimit = 4\n", "limit (4) must not be"),
        ("[fairshare.accounts.vision]\nlend = 1\n", "lend must be a bool"),
        ("[fairshare]\nmax_pending_jobs = -1\n", "max_pending_jobs must be between 0"),
        ("[fairshare.users.a]\nmax_running = 1\n", "unknown key 'max_running'"),
        (
            "[fairshare.accounts.vision]\nguaranteed = { A100 = 2, 'NVIDIA  a100' = 2 }\n",
            "GPU types 'A100' and 'NVIDIA  a100' name the same GPUs",
        ),
        (
            "[fairshare.accounts.vision]\nguaranteed = { A100 = 8 }\nlimit = 4\n",
            "limit (4) must not be under guaranteed (8)",
        ),
        ("[fairshare]\nreclaim_after = 99999999999\n", "reclaim_after must be at most 30 days"),
        ("[scheduler.policy_params]\nmin_runtime_s = nan\n", "min_runtime_s must be a finite"),
        ("[scheduler.policy_params]\nfairshare_margin = inf\n", "fairshare_margin must be a"),
    ],
)
def test_a_bad_quota_stops_the_scheduler_at_start_up(open_tmp: Path, text: str, key: str) -> None:
    config = open_tmp / "gshare.toml"
    config.write_text(text)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "schedulerd.main",
            "--state-dir",
            str(open_tmp / "state"),
            "--socket",
            str(open_tmp / "gshare.sock"),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and key in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (open_tmp / "gshare.sock").exists()


async def test_top_shows_each_nodes_gpu_model_and_busy_gpus_per_type(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(
        agents=2, gpus_per_node=2, gpu_models=("NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3")
    )
    job_id = cluster.submit("--gpu-type", "h100", "--wrap", "sleep 300", cwd=workdir)
    cluster.wait_state(job_id, "RUNNING")
    app = GshareTop(cluster.address)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot, lambda: app.model.synced and job_id in app.model.jobs)
        shown = text_of(app.query_one(ClusterView).render_cluster())
    assert "1/4 GPUs busy · NVIDIA A100-SXM4-80GB 0/2 · NVIDIA H100 80GB HBM3 1/2" in shown
    assert "node1 · up · 1/2 GPUs busy  NVIDIA H100 80GB HBM3" in shown
    cluster.gshare("cancel", str(job_id))


def test_max_pending_jobs_refuses_a_new_submit_but_answers_a_retried_one(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    config = "[scheduler]\nkill_grace_s = 3\n\n[fairshare]\nmax_pending_jobs = 1\n"
    cluster = cluster_factory(config=config, agents=1, gpus_per_node=1)

    def spec() -> pb.JobSpec:
        return pb.JobSpec(gpus=1, workdir=str(workdir), script=b"#!/bin/bash\nsleep 60\n")

    with Client(cluster.address) as client:
        running = client.submit(spec(), idempotency_key="k1")
        cluster.wait_state(running, "RUNNING")
        waiting = client.submit(spec(), idempotency_key="k2")  # the one waiting job allowed
        with pytest.raises(ClientError) as err:
            client.submit(spec(), idempotency_key="k3")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(err.value) == (
            "user root has 1 jobs waiting, the most max_pending_jobs allows is 1"
        )
        assert client.submit(spec(), idempotency_key="k2") == waiting  # a retry: answered
    assert cluster.queue_ids() == [running, waiting]
    cluster.gshare("cancel", str(running), str(waiting))


def test_an_arrays_tasks_count_against_max_pending_jobs(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    config = "[scheduler]\nkill_grace_s = 3\n\n[fairshare]\nmax_pending_jobs = 3\n"
    cluster = cluster_factory(config=config, agents=1, gpus_per_node=1)
    job = workdir / "j.sh"
    job.write_text("#!/bin/bash\nsleep 60\n")
    too_many = cluster.gsub(str(job), "--array", "0-3", cwd=workdir)
    assert too_many.code == 1 and "an array of 4 tasks would pass max_pending_jobs (3)" in (
        too_many.err
    )
    assert cluster.queue_ids() == []
    array_id = cluster.submit(str(job), "--array", "0-2", cwd=workdir)
    assert len(cluster.queue_ids()) == 3
    cluster.gshare("cancel", str(array_id))
