"""Hand-off to a real Slurm (munged, slurmctld, slurmd with fake GPUs, slurmrestd from
Debian): a real gshare scheduler and agent hand jobs over, follow them, cancel them,
charge them to the ledger, and ride out slurmrestd going away."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from gshare.api import gshare_pb2 as pb
from slurm_bridge import SlurmClient, SlurmJobSpec
from tests.cluster import Cluster, wait_until
from tests.slurm import SlurmCluster


def gshare_config(slurm: SlurmCluster, token_file: Path, cluster_name: str, extra: str = "") -> str:
    return f"""
[scheduler]
kill_grace_s = 3

[slurm]
url = "{slurm.url}"
user = "root"
token_file = "{token_file}"
partition = "debug"
cluster_name = "{cluster_name}"
poll = "1s"

[queues.default]
slurm = "never"

[queues.overflow]
slurm = "when_idle_capacity_lacks"
slurm_after = "2s"
{extra}"""


def make(
    factory: Callable[..., Cluster],
    slurm: SlurmCluster,
    open_tmp: Path,
    token: str | None = None,
) -> tuple[Cluster, str]:
    token_file = open_tmp / f"slurm-{uuid.uuid4().hex[:6]}.token"
    token_file.write_text((token if token is not None else slurm.token("root")) + "\n")
    name = f"t{uuid.uuid4().hex[:8]}"
    cluster = factory(config=gshare_config(slurm, token_file, name), agents=1, gpus_per_node=2)
    return cluster, name


def script(dir: Path, name: str, body: str) -> str:
    path = dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


def usage_of(cluster: Cluster, user: str) -> float:
    report = json.loads(cluster.gshare("usage", "--json").out)
    rows = [a for a in report["accounts"] if a["kind"] == "user" and a["path"][-1] == user]
    return float(rows[0]["usage_gpu_s"]) if rows else 0.0


def slurm_jobs_with(slurm: SlurmCluster, comment: str) -> list[int]:
    res = slurm.run_cmd(["squeue", "-h", "-t", "all", "-o", "%i %k"], check=True)
    return [
        int(line.split()[0]) for line in res.stdout.splitlines() if line.split()[1:] == [comment]
    ]


def test_a_handed_off_job_runs_in_slurm_with_its_gpus_and_exit_code(
    cluster_factory: Callable[..., Cluster], slurm_cluster: SlurmCluster, open_tmp: Path
) -> None:
    cluster, name = make(cluster_factory, slurm_cluster, open_tmp)
    work = slurm_cluster.workdir(name)
    before = usage_of(cluster, "root")
    ok = cluster.submit(
        "--slurm",
        "always",
        "--gpus",
        "2",
        "--time",
        "5",
        script(
            work,
            "ok.sh",
            'echo "gpus=$CUDA_VISIBLE_DEVICES id=$GSHARE_JOB_ID"\n'
            'echo "node=$GSHARE_NODE on=$GSHARE_GPUS signal=$GSHARE_PREEMPT_SIGNAL"\n'
            'echo "args=$*"\nsleep 3\n',
        ),
        "one",
        "two words",
        cwd=work,
    )
    bad = cluster.submit(
        "--slurm", "always", "--gpus", "1", script(work, "bad.sh", "exit 3\n"), cwd=work
    )
    done = cluster.wait_state(ok, "COMPLETED", timeout=60)
    failed = cluster.wait_state(bad, "FAILED", timeout=60)
    assert failed.exit_code == 3 and failed.has_exit
    assert done.exit_code == 0 and done.slurm_job_id > 0 and done.slurm_state == "COMPLETED"
    assert done.node.startswith("slurm:")
    kinds = [e.kind for e in done.events]
    assert kinds[:3] == ["submit", "handoff", "slurm-submit"] and kinds[-1] == "end"
    # the output is where gshare said it would be, written by the job in Slurm
    out = Path(done.output_path).read_text()
    assert f"gpus=0,1 id={ok}" in out
    # the environment a node agent gives, GSHARE_NODE and GSHARE_GPUS from where it ran
    assert "node=" in out and "on=0,1 signal=10" in out and "node= " not in out
    assert "args=one two words" in out
    # one ledger: the Slurm job's GPU-seconds are charged to its owner
    ran = done.end_time - done.start_time
    assert ran >= 3
    grown = usage_of(cluster, "root") - before
    expected = 2 * ran + 1 * (failed.end_time - failed.start_time)
    assert abs(grown - expected) <= 2.5, (grown, expected)
    # queue and show say where it went
    listed = json.loads(cluster.gshare("queue", "-a", "--json").out)
    [row] = [j for j in listed if j["job_id"] == ok]
    assert row["slurm_job_id"] == done.slurm_job_id
    shown = cluster.gshare("show", str(ok)).out
    assert f"job {done.slurm_job_id}, COMPLETED" in shown


def test_a_queue_overflows_to_slurm_only_after_waiting_and_with_free_gpus_there(
    cluster_factory: Callable[..., Cluster], slurm_cluster: SlurmCluster, open_tmp: Path
) -> None:
    cluster, name = make(cluster_factory, slurm_cluster, open_tmp)
    work = slurm_cluster.workdir(name)
    local = cluster.submit("--gpus", "2", "--wrap", "sleep 60", cwd=work)
    cluster.wait_state(local, "RUNNING")
    stays = cluster.submit("--gpus", "2", "--wrap", "true", cwd=work)  # queue default: never
    goes = cluster.submit("-q", "overflow", "--gpus", "2", "--wrap", "sleep 1", cwd=work)
    job = cluster.wait_state(goes, {"HANDED_OFF", "RUNNING_REMOTE", "COMPLETED"}, timeout=30)
    handoff = next(e for e in job.events if e.kind == "handoff")
    assert "waited" in handoff.reason and "free GPUs" in handoff.reason
    assert handoff.time - job.submit_time >= 2  # not before slurm_after
    cluster.wait_state(goes, "COMPLETED", timeout=60)
    assert cluster.state(stays) == "PENDING" and cluster.job(stays).slurm_job_id == 0
    cluster.gshare("cancel", str(local))


def test_cancel_reaches_slurm(
    cluster_factory: Callable[..., Cluster], slurm_cluster: SlurmCluster, open_tmp: Path
) -> None:
    cluster, name = make(cluster_factory, slurm_cluster, open_tmp)
    work = slurm_cluster.workdir(name)
    job_id = cluster.submit("--slurm", "always", "--gpus", "1", "--wrap", "sleep 120", cwd=work)
    running = cluster.wait_state(job_id, "RUNNING_REMOTE", timeout=60)
    res = cluster.gshare("cancel", str(job_id))
    assert res.code == 0, res.err
    ended = cluster.wait_state(job_id, "CANCELLED", timeout=60)
    assert ended.slurm_state == "CANCELLED"
    state = slurm_cluster.run_cmd(
        ["scontrol", "show", "job", str(running.slurm_job_id)], check=True
    ).stdout
    assert "JobState=CANCELLED" in state


def test_slurmrestd_going_away_mid_job_is_survived_and_nothing_runs_twice(
    cluster_factory: Callable[..., Cluster], slurm_cluster: SlurmCluster, open_tmp: Path
) -> None:
    cluster, name = make(cluster_factory, slurm_cluster, open_tmp)
    work = slurm_cluster.workdir(name)
    job_id = cluster.submit("--slurm", "always", "--gpus", "1", "--wrap", "sleep 8", cwd=work)
    running = cluster.wait_state(job_id, "RUNNING_REMOTE", timeout=60)
    slurm_cluster.stop_rest()
    try:
        wait_until(
            "the reason to say slurmrestd is unreachable",
            lambda: "unreachable" in cluster.job(job_id).reason,
            timeout=60,
        )
        assert cluster.state(job_id) == "RUNNING_REMOTE"  # still accounted for
    finally:
        slurm_cluster.start_rest()
    done = cluster.wait_state(job_id, "COMPLETED", timeout=60)
    assert done.slurm_job_id == running.slurm_job_id
    assert slurm_jobs_with(slurm_cluster, f"gshare:{name}:{cluster.cluster_id()}:{job_id}") == [
        running.slurm_job_id
    ]


def test_a_job_already_in_slurm_is_found_by_its_comment_not_submitted_again(
    cluster_factory: Callable[..., Cluster], slurm_cluster: SlurmCluster, open_tmp: Path
) -> None:
    """A scheduler that died between Slurm's answer and writing the id down: the job is
    in Slurm already, under the comment gshare gives it."""
    cluster, name = make(cluster_factory, slurm_cluster, open_tmp)
    work = slurm_cluster.workdir(name)
    next_id = 1  # a fresh scheduler numbers its first job 1
    comment = f"gshare:{name}:{cluster.cluster_id()}:{next_id}"

    async def submit_by_hand() -> int:
        async with SlurmClient(slurm_cluster.url, "root", token=slurm_cluster.token()) as c:
            spec = SlurmJobSpec(
                name="by-hand",
                script="#!/bin/bash\nsleep 2\n",
                working_dir=str(work),
                comment=comment,
                gpus=1,
                environment={"PATH": os.environ["PATH"]},
            )
            return await c.submit(spec)

    earlier = asyncio.run(submit_by_hand())
    job_id = cluster.submit("--slurm", "always", "--gpus", "1", "--wrap", "sleep 2", cwd=work)
    assert job_id == next_id
    done = cluster.wait_state(job_id, "COMPLETED", timeout=60)
    assert done.slurm_job_id == earlier
    assert any("found in Slurm by its comment" in e.reason for e in done.events)
    assert slurm_jobs_with(slurm_cluster, comment) == [earlier]


def test_a_bad_token_leaves_the_job_waiting_with_a_clear_reason(
    cluster_factory: Callable[..., Cluster], slurm_cluster: SlurmCluster, open_tmp: Path
) -> None:
    cluster, name = make(cluster_factory, slurm_cluster, open_tmp, token="not-a-jwt")
    work = slurm_cluster.workdir(name)
    job_id = cluster.submit("--slurm", "always", "--gpus", "1", "--wrap", "true", cwd=work)
    wait_until(
        "a reason about the token",
        lambda: "refused the token" in cluster.job(job_id).reason,
        timeout=60,
    )
    job = cluster.job(job_id)
    # not handed to a Slurm that refuses us: it waits here, and says why
    assert pb.JobState.Name(job.state) == "PENDING" and job.slurm_job_id == 0
    assert "slurmrestd refused the token" in job.reason and "scontrol token" in job.reason
    assert slurm_jobs_with(slurm_cluster, f"gshare:{name}:{cluster.cluster_id()}:{job_id}") == []
    # a good token in the same file: it is read again, and the job goes through
    token_files = list(open_tmp.glob("slurm-*.token"))
    for f in token_files:
        f.write_text(slurm_cluster.token("root") + "\n")
    cluster.wait_state(job_id, "COMPLETED", timeout=60)


def test_a_job_runs_in_slurm_as_its_owner(
    cluster_factory: Callable[..., Cluster], slurm_cluster: SlurmCluster, open_tmp: Path
) -> None:
    cluster, name = make(cluster_factory, slurm_cluster, open_tmp)
    work = slurm_cluster.workdir(name)
    job_id = cluster.submit(
        "--slurm", "always", "--gpus", "1", "--wrap", "id -un", cwd=work, user="nobody"
    )
    done = cluster.wait_state(job_id, "COMPLETED", timeout=60)
    assert Path(done.output_path).read_text().strip() == "nobody"
    assert Path(done.output_path).stat().st_uid == 65534


def test_a_handed_off_job_can_still_be_cancelled_once_slurm_is_unconfigured(
    cluster_factory: Callable[..., Cluster], slurm_cluster: SlurmCluster, open_tmp: Path
) -> None:
    cluster, name = make(cluster_factory, slurm_cluster, open_tmp)
    work = slurm_cluster.workdir(name)
    job_id = cluster.submit("--slurm", "always", "--gpus", "1", "--wrap", "sleep 120", cwd=work)
    running = cluster.wait_state(job_id, "RUNNING_REMOTE", timeout=60)
    try:
        cluster.kill_scheduler()
        (cluster.root / "gshare.toml").write_text("[scheduler]\nkill_grace_s = 3\n")
        cluster.start_scheduler()
        res = cluster.gshare("cancel", str(job_id))
        assert res.code == 0, res.err
        ended = cluster.wait_state(job_id, "CANCELLED", timeout=30)
        assert "no Slurm is configured any more" in ended.reason
    finally:
        slurm_cluster.run_cmd(["scancel", str(running.slurm_job_id)])


def test_a_multi_node_job_goes_to_slurm_with_its_node_count(
    cluster_factory: Callable[..., Cluster], slurm_cluster: SlurmCluster, open_tmp: Path
) -> None:
    """--nodes with --slurm always: Slurm is asked for 2 nodes of one GPU each, which this
    one-node Slurm cluster refuses as a node configuration it does not have (a one-node
    job of the same GPUs it runs: the first test); the job stays here, saying why."""
    cluster, name = make(cluster_factory, slurm_cluster, open_tmp)
    work = slurm_cluster.workdir(name)
    job_id = cluster.submit(
        "--slurm", "always", "--nodes", "2", "--gpus-per-node", "1",
        script(work, "wide.sh", "sleep 1\n"),
        cwd=work,
    )  # fmt: skip

    def refused() -> list[str]:
        return [e.reason for e in cluster.job(job_id).events if e.kind == "handoff-refused"]

    [why] = wait_until("Slurm's answer", refused, timeout=60)
    assert "Requested node configuration is not available" in why, why
    # the refusal is its reason until the next cycle words why it waits here
    job = wait_until(
        "the job to say why it waits here",
        lambda: (
            (j := cluster.job(job_id)) and "needs 1 free GPUs on each of 2 nodes" in j.reason and j
        ),
        timeout=60,
    )
    assert job.state == pb.PENDING and job.slurm_job_id == 0
    assert cluster.gshare("cancel", str(job_id)).code == 0
    cluster.wait_state(job_id, "CANCELLED", timeout=60)
