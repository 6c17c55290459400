"""Multi-node jobs with real processes: a scheduler and two agents with fake GPUs, each
agent reachable at its own loopback address (127.0.0.2, 127.0.0.3). A job of 2 nodes x 2
GPUs starts both parts at once, with one rendezvous; its parts share one fate: one
failing, a cancel, a preemption (all parts yield, the job resumes), an agent killed and
restarted."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from gshare.api import gshare_pb2 as pb
from tests.cluster import PY, Cluster, wait_until
from tui.model import ClusterModel

# MASTER_PORTs below the kernel's ephemeral range (32768-60999 here): a port in it may be
# any connection's own port when a part comes to listen on it
CONFIG = """
[scheduler]
kill_grace_s = 2
master_ports = "28500-28599"
"""

# Each part writes what it was told to out/env.RANK, proves the rendezvous (rank 0 listens
# on MASTER_ADDR:MASTER_PORT, the others connect and say who they are), then acts as told
# by the file `mode` (run: wait for `done`; fail-1: rank 1 exits 3; yield: exit 75 on USR1).
JOB = """#!/bin/bash
#GSUB --nodes 2 --gpus-per-node 2
out={out}
echo "$$" > $out/pid.$NODE_RANK
trap 'echo usr1 >> $out/signals.$NODE_RANK; [ "$(cat $out/mode)" = yield ] && exit 75' USR1
trap 'echo term >> $out/signals.$NODE_RANK; exit 143' TERM
run=$NODE_RANK.$GSHARE_RESTART_COUNT
{{ env | grep -E '^(MASTER_|WORLD_SIZE|NNODES|NODE_RANK|LOCAL_WORLD_SIZE|GSHARE_|CUDA_VISIBLE)'
   echo "HOSTFILE_TEXT=$(tr '\\n' ';' < "$GSHARE_HOSTFILE")"; }} > $out/env.$run
{py} - <<'EOF' > $out/rendezvous.$run
import os, socket, time
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
rank = os.environ["NODE_RANK"]
if rank == "0":
    with socket.create_server((addr, port)) as server:
        conn, peer = server.accept()
        print("heard", conn.recv(64).decode())
else:
    for _ in range(600):
        try:
            with socket.create_connection((addr, port), timeout=5) as conn:
                conn.sendall(f"rank {{rank}} at {{os.environ['GSHARE_NODE']}}".encode())
                print("told", addr)
                break
        except OSError:
            time.sleep(0.1)
EOF
echo "part $NODE_RANK of $NNODES on $GSHARE_NODE"
mode=$(cat $out/mode)
if [ "$mode" = fail-1 ] && [ "$NODE_RANK" = 1 ]; then exit 3; fi
if [ "$mode" = yield ] && [ "$GSHARE_RESTART_COUNT" != 0 ]; then exit 0; fi
while [ ! -e $out/done ]; do sleep 0.1; done
"""


def make_job(workdir: Path, mode: str) -> tuple[str, Path]:
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    (out / "mode").write_text(mode)
    path = workdir / "ddp.sh"
    path.write_text(JOB.format(out=out, py=PY))
    path.chmod(0o755)
    return str(path), out


def two_nodes(factory: Callable[..., Cluster], agents: int = 2, gpus: int = 2) -> Cluster:
    names = [f"node{i}" for i in range(agents)]
    addresses = {n: f"127.0.0.{i + 2}" for i, n in enumerate(names)}
    return factory(agents=agents, gpus_per_node=gpus, config=CONFIG, node_addresses=addresses)


def env_of(out: Path, rank: int, restart: int = 0) -> dict[str, str]:
    text = (out / f"env.{rank}.{restart}").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def part_pids(out: Path) -> list[int]:
    return [int((out / f"pid.{r}").read_text()) for r in (0, 1) if (out / f"pid.{r}").exists()]


def running_parts(cluster: Cluster, job_id: int, out: Path) -> None:
    cluster.wait_state(job_id, "RUNNING")
    wait_until("both parts to start", lambda: len(part_pids(out)) == 2)


def test_a_two_node_job_starts_every_part_with_one_rendezvous(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = two_nodes(cluster_factory)
    path, out = make_job(workdir, "run")
    job_id = cluster.submit(path, cwd=workdir)
    running_parts(cluster, job_id, out)
    show = json.loads(cluster.gshare("show", str(job_id), "--json").out)
    assert (show["nodes"], show["gpus_per_node"], show["gpus_requested"]) == (2, 2, 4)
    parts = show["parts"]
    assert [(p["node"], p["rank"], p["gpus"], p["state"]) for p in parts] == [
        ("node0", 0, [0, 1], "RUNNING"),
        ("node1", 1, [0, 1], "RUNNING"),
    ]
    assert all(p["pid"] for p in parts)
    # gshare nodes: both nodes busy with it, at their addresses
    nodes = {n["name"]: n for n in json.loads(cluster.gshare("nodes", "--json").out)}
    assert all(sum(g["busy"] for g in nodes[n]["gpus"]) == 2 for n in ("node0", "node1"))
    # gshare top's model: the job holds its GPUs on both nodes
    model = ClusterModel()
    model.apply(pb.ClusterChange(job=cluster.job(job_id)))
    held = [model.holder(n, i) for n in ("node0", "node1") for i in (0, 1)]
    assert [j.job_id if j else None for j in held] == [job_id] * 4
    assert [(g["node"], g["index"]) for g in show["gpus"]] == [
        ("node0", 0),
        ("node0", 1),
        ("node1", 0),
        ("node1", 1),
    ]
    (out / "done").touch()
    job = cluster.wait_state(job_id, "COMPLETED")
    assert [(p.state, p.exit_code) for p in job.parts] == [("EXITED", 0), ("EXITED", 0)]
    envs = [env_of(out, 0), env_of(out, 1)]
    port = envs[0]["MASTER_PORT"]
    assert 28500 <= int(port) <= 28599
    for rank, env in enumerate(envs):
        assert env["MASTER_ADDR"] == "127.0.0.2" and env["MASTER_PORT"] == port
        assert (env["WORLD_SIZE"], env["NNODES"], env["LOCAL_WORLD_SIZE"]) == ("4", "2", "2")
        assert env["NODE_RANK"] == str(rank) and env["GSHARE_NODE"] == f"node{rank}"
        assert env["GSHARE_HOSTS"] == "127.0.0.2,127.0.0.3"
        assert env["HOSTFILE_TEXT"] == "127.0.0.2 slots=2;127.0.0.3 slots=2;"
        assert env["GSHARE_GPUS"] == "0,1"
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1"  # its own node's two GPUs
    assert envs[0]["GSHARE_GPU_UUIDS"] != envs[1]["GSHARE_GPU_UUIDS"]  # not the same GPUs
    assert (out / "rendezvous.0.0").read_text().strip() == "heard rank 1 at node1"
    assert (out / "rendezvous.1.0").read_text().strip() == "told 127.0.0.2"
    # a log per part: %n is the node rank
    logs = sorted(workdir.glob(f"gshare-{job_id}-*.out"))
    assert [p.name.rsplit(".", 2)[1] for p in logs] == ["0", "1"]
    assert [p.read_text().strip() for p in logs] == [
        "part 0 of 2 on node0",
        "part 1 of 2 on node1",
    ]


def test_one_part_failing_ends_every_part(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = two_nodes(cluster_factory)
    path, out = make_job(workdir, "fail-1")
    job_id = cluster.submit(path, cwd=workdir)
    job = cluster.wait_state(job_id, {"FAILED", "COMPLETED", "CANCELLED"})
    assert job.reason == "part 1 on node1 exited with code 3", job.reason
    assert pb_state(job) == "FAILED" and job.exit_code == 3
    assert [p.state for p in job.parts] == ["EXITED", "EXITED"]
    assert job.parts[0].exit_signal == 0 and job.parts[0].exit_code == 143  # its TERM trap
    assert set((out / "signals.0").read_text().split()) == {"term"}
    assert not any(alive(pid) for pid in part_pids(out))
    events = [(e.kind, e.reason) for e in cluster.job(job_id).events]
    stop = "part 1 on node1 exited with code 3; its other parts are being stopped"
    assert ("gang-stop", stop) in events


def test_cancel_ends_every_part(cluster_factory: Callable[..., Cluster], workdir: Path) -> None:
    cluster = two_nodes(cluster_factory)
    path, out = make_job(workdir, "run")
    job_id = cluster.submit(path, cwd=workdir)
    running_parts(cluster, job_id, out)
    pids = part_pids(out)
    assert cluster.gshare("cancel", str(job_id)).code == 0
    job = cluster.wait_state(job_id, "CANCELLED")
    assert [p.state for p in job.parts] == ["EXITED", "EXITED"]
    for rank in (0, 1):
        assert set((out / f"signals.{rank}").read_text().split()) == {"term"}
    assert not any(alive(pid) for pid in pids)


def test_preempted_parts_yield_together_and_the_job_resumes(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = two_nodes(cluster_factory)
    path, out = make_job(workdir, "yield")
    job_id = cluster.submit(path, "--grace", "30s", cwd=workdir)
    running_parts(cluster, job_id, out)
    first = [env_of(out, r)["MASTER_PORT"] for r in (0, 1)]
    assert cluster.gshare("preempt", str(job_id)).code == 0
    job = cluster.wait_state(job_id, "COMPLETED")
    assert job.restarts == 1 and job.preemptions == 1
    for rank in (0, 1):
        assert set((out / f"signals.{rank}").read_text().split()) == {"usr1"}
        assert env_of(out, rank, 1)["NODE_RANK"] == str(rank)
    assert (
        first[0] == first[1]
        and env_of(out, 0, 1)["MASTER_PORT"] == env_of(out, 1, 1)["MASTER_PORT"]
    )
    events = [(e.kind, e.to_state, e.reason) for e in cluster.job(job_id).events]
    requeues = [e for e in events if e[0] == "requeue"]
    assert requeues == [("requeue", "PENDING", "all 2 parts yielded after their checkpoint")]


def test_an_agent_killed_and_restarted_re_adopts_its_part(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = two_nodes(cluster_factory)
    path, out = make_job(workdir, "run")
    job_id = cluster.submit(path, cwd=workdir)
    running_parts(cluster, job_id, out)
    pids = part_pids(out)
    before = [p.pid for p in cluster.job(job_id).parts]
    cluster.kill_agent("node1", signal.SIGKILL)
    assert all(alive(pid) for pid in pids)  # the part outlives its agent
    cluster.start_agent("node1")
    cluster.wait_nodes_up(2)
    time.sleep(1.0)  # the re-registration has been handled: the job is untouched by it
    job = cluster.job(job_id)
    assert pb_state(job) == "RUNNING" and [p.pid for p in job.parts] == before
    (out / "done").touch()
    job = cluster.wait_state(job_id, "COMPLETED")
    assert [(p.state, p.exit_code) for p in job.parts] == [("EXITED", 0), ("EXITED", 0)]


def test_two_multi_node_jobs_never_share_a_master_port(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = two_nodes(cluster_factory, gpus=4)
    jobs = []
    for name in ("a", "b"):
        sub = workdir / name
        sub.mkdir()
        path, out = make_job(sub, "run")
        jobs.append((cluster.submit(path, cwd=sub), out))
    for job_id, out in jobs:
        running_parts(cluster, job_id, out)
    ports = [{env_of(out, r)["MASTER_PORT"] for r in (0, 1)} for _, out in jobs]
    assert all(len(p) == 1 for p in ports) and ports[0] != ports[1]
    for _, out in jobs:
        (out / "done").touch()
    for job_id, _ in jobs:
        cluster.wait_state(job_id, "COMPLETED")


def test_a_job_wider_than_the_cluster_is_refused_at_submit(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = two_nodes(cluster_factory)
    path, _ = make_job(workdir, "run")
    res = cluster.gsub(path, "--nodes", "3", "--gpus-per-node", "2", cwd=workdir)
    assert res.code != 0 and res.err.count("\n") == 1
    assert "the cluster has 2 nodes with 2 or more GPUs" in res.err
    res = cluster.gsub(path, "--nodes", "2", "--gpus-per-node", "3", cwd=workdir)
    assert res.code != 0 and "the cluster has 0 nodes with 3 or more GPUs" in res.err
    res = cluster.gsub(path, "--nodes", "2", "--gpus", "2", cwd=workdir, user="nobody")
    assert res.code != 0 and res.err.count("\n") == 1 and "--gpus-per-node" in res.err


def pb_state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state)


def test_logs_of_each_part(cluster_factory: Callable[..., Cluster], workdir: Path) -> None:
    cluster = two_nodes(cluster_factory)
    path, out = make_job(workdir, "run")
    job_id = cluster.submit(path, "--output", "ddp-%j.rank%n.log", cwd=workdir)
    running_parts(cluster, job_id, out)
    (out / "done").touch()
    cluster.wait_state(job_id, "COMPLETED")
    assert (workdir / f"ddp-{job_id}.rank1.log").exists()
    for rank in (0, 1):
        res = cluster.gshare("logs", str(job_id), "--rank", str(rank))
        assert res.code == 0 and res.out == f"part {rank} of 2 on node{rank}\n"
    assert cluster.gshare("logs", str(job_id)).out == "part 0 of 2 on node0\n"
    for bad in ("2", "-1", "x", "1e3"):
        res = cluster.gshare("logs", str(job_id), "--rank", bad)
        assert res.code != 0 and res.err.count("\n") == 1 and "--rank" in res.err, res.err


def test_a_scheduler_restart_keeps_a_multi_node_job_running(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = two_nodes(cluster_factory)
    path, out = make_job(workdir, "run")
    job_id = cluster.submit(path, cwd=workdir)
    running_parts(cluster, job_id, out)
    before = [(p.node, p.pid) for p in cluster.job(job_id).parts]
    cluster.kill_scheduler(signal.SIGKILL)
    cluster.start_scheduler()
    cluster.wait_nodes_up(2)
    job = cluster.job(job_id)
    assert pb_state(job) == "RUNNING" and [(p.node, p.pid) for p in job.parts] == before
    (out / "done").touch()
    job = cluster.wait_state(job_id, "COMPLETED")
    assert job.restarts == 0 and [p.exit_code for p in job.parts] == [0, 0]


LEASE_CONFIG = """
[scheduler]
kill_grace_s = 2
node_lease_s = 4
heartbeat_s = 0.5
"""


def test_a_lost_node_stops_the_other_parts_and_requeues_the_job(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    addresses = {"node0": "127.0.0.2", "node1": "127.0.0.3"}
    cluster = cluster_factory(
        agents=2, gpus_per_node=2, config=LEASE_CONFIG, node_addresses=addresses
    )
    path, out = make_job(workdir, "yield")  # the second run ends at once
    job_id = cluster.submit(path, "--grace", "2s", cwd=workdir)
    running_parts(cluster, job_id, out)
    pids = part_pids(out)
    agent = cluster.agent_procs["node1"]
    agent.send_signal(signal.SIGSTOP)  # node1 falls silent
    try:
        cluster.wait_state(job_id, "PENDING", timeout=60)
        lost = [e.reason for e in cluster.job(job_id).events if e.kind == "gang-stop"]
        assert len(lost) == 1 and lost[0].startswith("part 1 on node1 lost: agent silent"), lost
        assert not alive(pids[0])  # the part on node0 was stopped by the scheduler
        assert set((out / "signals.0").read_text().split()) == {"term"}
    finally:
        agent.send_signal(signal.SIGCONT)
    job = cluster.wait_state(job_id, "COMPLETED", timeout=60)
    assert job.restarts == 1
    events = [(e.kind, e.to_state) for e in cluster.job(job_id).events]
    assert ("lost", "LOST") in events and ("requeue", "PENDING") in events


def test_a_time_limit_ends_every_part(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = two_nodes(cluster_factory)
    path, out = make_job(workdir, "run")
    job_id = cluster.submit(path, "--time", "3s", cwd=workdir)
    running_parts(cluster, job_id, out)
    job = cluster.wait_state(job_id, {"TIMEOUT", "FAILED", "COMPLETED"}, timeout=60)
    assert pb_state(job) == "TIMEOUT" and "time limit" in job.reason, job.reason
    assert [p.state for p in job.parts] == ["EXITED", "EXITED"]
    assert not any(alive(pid) for pid in part_pids(out))
    text = cluster.gshare("show", str(job_id)).out
    assert "Parts: 0 node0 GPUs 0,1 exited exit 143; 1 node1 GPUs 0,1 exited exit 143" in text


REGISTER = (
    "import sys, grpc\n"
    "from gshare.api import gshare_pb2 as pb, gshare_pb2_grpc as g\n"
    "ch = grpc.insecure_channel(sys.argv[1])\n"
    "address = bytes.fromhex(sys.argv[2]).decode()\n"
    "reg = pb.AgentMessage(register=pb.Register(node='evil', cpus=1, address=address))\n"
    "try:\n"
    "    for m in g.AgentServiceStub(ch).Connect(iter([reg]), timeout=10):\n"
    "        print('ANSWERED', m.WhichOneof('msg'))\n"
    "except grpc.RpcError as e:\n"
    "    print(e.code().name, e.details())\n"
)


def test_a_bad_agent_address_is_refused(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = two_nodes(cluster_factory)
    for bad in ("a b", "x\0y", "-rf", "h" * 300, "1.2.3.4; rm -rf /"):
        res = subprocess.run(
            [PY, "-c", REGISTER, cluster.address, bad.encode().hex()],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.stdout.startswith("INVALID_ARGUMENT register: address"), res.stdout
        assert "ANSWERED" not in res.stdout
    with cluster.client() as c:
        assert sorted(n.name for n in c.nodes()) == ["node0", "node1"]
        assert {n.name: n.address for n in c.nodes()} == {
            "node0": "127.0.0.2",
            "node1": "127.0.0.3",
        }
    for bad in ("a b", "x" * 300, ""):
        res = subprocess.run(
            [
                PY, "-m", "nodeagent.main", "--address", cluster.address, "--node", "n9",
                "--state-dir", str(cluster.root / "agent-n9"), "--fake-gpus", "1",
                "--node-address", bad,
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert "--node-address must be a host name or an IP address" in res.stderr


def test_a_higher_priority_job_preempts_a_multi_node_job_which_resumes(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    addresses = {"node0": "127.0.0.2", "node1": "127.0.0.3"}
    config = CONFIG + "[scheduler.policy_params]\nmin_runtime_s = 0\n"
    cluster = cluster_factory(agents=2, gpus_per_node=2, config=config, node_addresses=addresses)
    path, out = make_job(workdir, "yield")
    low = cluster.submit(path, "--priority", "-1", "--grace", "30s", cwd=workdir)
    running_parts(cluster, low, out)
    high = cluster.submit("--wrap", "sleep 1", "--gpus", "2", "--priority", "10", cwd=workdir)
    done = cluster.wait_state(high, "COMPLETED", timeout=60)
    job = cluster.wait_state(low, "COMPLETED", timeout=60)
    assert job.restarts == 1 and job.preemptions == 1
    for rank in (0, 1):
        assert set((out / f"signals.{rank}").read_text().split()) == {"usr1"}
    events = [(e.kind, e.reason) for e in cluster.job(low).events]
    assert ("preempt", f"preempted for job {high}") in [(k, r.split(":")[0]) for k, r in events]
    assert ("requeue", "all 2 parts yielded after their checkpoint") in events
    assert job.start_time >= done.end_time  # placed again once the other job had ended


def test_a_part_that_cannot_launch_stops_the_others_and_requeues_the_job(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = two_nodes(cluster_factory)
    path, out = make_job(workdir, "run")
    (workdir / "logs-0").mkdir()  # part 1's log directory is missing: it cannot start
    job_id = cluster.submit(path, "--output", "logs-%n/part.log", cwd=workdir)

    def stopped() -> list[str]:
        events = cluster.job(job_id).events
        return [e.reason for e in events if e.kind == "gang-stop"] and [
            e.reason for e in events if e.kind == "requeue"
        ]

    [requeued, *_] = wait_until("the job to be requeued", stopped, timeout=60)
    assert requeued.startswith("part 1 on node1 could not be launched: No such file"), requeued
    (workdir / "logs-1").mkdir()  # the next start can launch it
    running_parts(cluster, job_id, out)
    (out / "done").touch()
    job = cluster.wait_state(job_id, "COMPLETED", timeout=60)
    assert job.restarts >= 1
    assert (workdir / "logs-1" / "part.log").read_text().endswith("part 1 of 2 on node1\n")
