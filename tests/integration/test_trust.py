"""Trust boundaries on the scheduler's side: leases whatever the connection, one agent per
node, one scheduler per state dir, submits made once, and paths that name their cluster."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from gshare.client import Client, ClientError
from tests.cluster import PY, Cluster, wait_until

LEASE = "[scheduler]\nnode_lease_s = 3\nheartbeat_s = 0.5\nkill_grace_s = 2\n"


def test_a_frozen_agent_is_declared_down_and_its_job_runs_elsewhere(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    """SIGSTOP keeps the agent's connection open while nothing flows: the lease must still
    expire, the job be requeued to the other node, and no new job be placed on it."""
    cluster = cluster_factory(config=LEASE)
    job_id = cluster.submit("--wrap", "sleep 300", "--gpus", "4", cwd=workdir)
    first = cluster.wait_state(job_id, "RUNNING")
    frozen = cluster.agent_procs[first.node]
    frozen.send_signal(signal.SIGSTOP)
    try:
        moved = wait_until(
            "the job to run on the other node",
            lambda: (j := cluster.job(job_id)).state == pb.RUNNING and j.node != first.node and j,
            timeout=30,
        )
        assert moved.restarts == 1
        with cluster.client() as c:
            nodes = {n.name: n for n in c.nodes()}
        assert nodes[first.node].state == pb.NODE_DOWN
        assert "silent" in nodes[first.node].reason
        other = cluster.submit("--wrap", "sleep 300", "--gpus", "1", cwd=workdir)
        waiting = cluster.wait_state(other, "PENDING")
        assert waiting.node == ""  # not placed on the frozen node
    finally:
        frozen.send_signal(signal.SIGCONT)
    cluster.wait_nodes_up(2)
    started = cluster.wait_state(other, "RUNNING")
    assert started.node == first.node
    assert cluster.job(job_id).node == moved.node  # the live copy is untouched


def test_a_second_agent_for_a_live_node_is_refused(cluster: Cluster, workdir: Path) -> None:
    """Registering as a node whose agent is alive and connected is refused and logged;
    the real node's running job carries on."""
    job_id = cluster.submit("--wrap", "sleep 300", "--gpus", "4", cwd=workdir)
    job = cluster.wait_state(job_id, "RUNNING")
    impostor = subprocess.run(
        [
            PY,
            "-c",
            "import sys, grpc\n"
            "from gshare.api import gshare_pb2 as pb, gshare_pb2_grpc as g\n"
            "ch = grpc.insecure_channel(sys.argv[1])\n"
            "reg = pb.AgentMessage(register=pb.Register(node=sys.argv[2], cpus=1))\n"
            "try:\n"
            "    for m in g.AgentServiceStub(ch).Connect(iter([reg]), timeout=10):\n"
            "        print('ANSWERED', m.WhichOneof('msg'))\n"
            "except grpc.RpcError as e:\n"
            "    print(e.code().name, e.details())\n",
            cluster.address,
            job.node,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ALREADY_EXISTS" in impostor.stdout and "already connected" in impostor.stdout
    assert "ANSWERED" not in impostor.stdout
    assert f"refused a second registration of node {job.node}" in cluster.logs("schedulerd")
    again = cluster.job(job_id)
    assert again.state == pb.RUNNING and again.node == job.node
    with cluster.client() as c:
        assert all(n.state == pb.NODE_UP for n in c.nodes())


def test_a_second_scheduler_on_the_same_state_dir_refuses_to_start(cluster: Cluster) -> None:
    res = subprocess.run(
        [
            PY,
            "-m",
            "schedulerd.main",
            "--state-dir",
            str(cluster.root / "sched"),
            "--socket",
            str(cluster.sock),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "another gshare-schedulerd" in res.stderr
    # the first one still owns its socket and serves
    cluster.wait_nodes_up(2)
    # and a second one on another state dir but the same socket is refused too
    res = subprocess.run(
        [
            PY,
            "-m",
            "schedulerd.main",
            "--state-dir",
            str(cluster.root / "other"),
            "--socket",
            str(cluster.sock),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "gshare.sock.lock is locked" in res.stderr
    cluster.wait_nodes_up(2)


def test_a_retried_submit_makes_one_job(cluster: Cluster, workdir: Path) -> None:
    spec = pb.JobSpec(gpus=1, script=b"#!/bin/bash\nsleep 300\n", workdir=str(workdir), name="once")
    with cluster.client() as c:
        first = c.submit(spec, idempotency_key="retry-me")
        assert c.submit(spec, idempotency_key="retry-me") == first
        cluster.kill_scheduler()
        cluster.start_scheduler()
        assert c.submit(spec, idempotency_key="retry-me") == first
        other = c.submit(spec, idempotency_key="another")
        assert other != first
        names = [j.spec.name for j in c.jobs(include_finished=True)]
    assert names.count("once") == 2
    with grpc.insecure_channel(cluster.address) as channel:
        stub = pb_grpc.ClientServiceStub(channel)
        try:
            stub.SubmitJob(pb.SubmitJobRequest(spec=spec, idempotency_key="x" * 129), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "idempotency_key" in str(exc.details())
        else:
            raise AssertionError("a 129-character key was accepted")


def test_submits_under_a_scheduler_kill_are_all_acknowledged_once(
    cluster: Cluster, workdir: Path
) -> None:
    """Clients submitting while the scheduler is SIGKILLed and restarted: each submit is
    acknowledged (the client library retries with its key) and made exactly once."""
    spec = pb.JobSpec(gpus=1, script=b"#!/bin/bash\nsleep 300\n", workdir=str(workdir))
    acknowledged: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def submitter() -> None:
        with Client(cluster.address, timeout=10) as c:
            go.wait()
            for _ in range(40):
                try:
                    job_id = c.submit(spec, retry_s=60)
                except ClientError as exc:
                    with lock:
                        errors.append(str(exc))
                    continue
                with lock:
                    acknowledged.append(job_id)

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    wait_until("some submits", lambda: len(acknowledged) >= 20, timeout=60)
    cluster.kill_scheduler()
    cluster.start_scheduler()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(acknowledged) == 160 and len(set(acknowledged)) == 160
    assert sorted(cluster.queue_ids()) == sorted(acknowledged)


def _default_paths(cluster: Cluster, workdir: Path) -> tuple[str, str]:
    job_id = cluster.submit("--wrap", 'echo "$GSHARE_CHECKPOINT_DIR"', "--gpus", "1", cwd=workdir)
    job = cluster.wait_state(job_id, "COMPLETED")
    wait_until("the output", lambda: Path(job.output_path).exists())
    return job.output_path, Path(job.output_path).read_text().strip()


def test_a_new_clusters_job_1_is_not_an_old_clusters_job_1(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    """Default output and checkpoint paths carry the id of the cluster's database, so a
    fresh cluster's job 1 neither appends to nor resumes from an old cluster's job 1."""
    old_out, old_ckpt = _default_paths(cluster_factory(agents=1), workdir)
    new_out, new_ckpt = _default_paths(cluster_factory(agents=1), workdir)
    assert old_out != new_out and old_ckpt != new_ckpt
    for out, ckpt in ((old_out, old_ckpt), (new_out, new_ckpt)):
        assert Path(out).name.startswith("gshare-1-") and "-job-1" in ckpt
    assert Path(old_out).read_text().strip() == old_ckpt  # not appended to by the new job
