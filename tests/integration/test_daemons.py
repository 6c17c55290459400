"""The daemons as a whole: health, the watch stream, leases, remote agents, gshare up."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gshare.api import gshare_pb2 as pb
from gshare.api import gshare_pb2_grpc as pb_grpc
from gshare.client import Client
from tests.cluster import BIN, PY, Cluster, wait_until


def test_health_service_reports_serving(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_watch_streams_the_initial_state_then_changes(cluster: Cluster, workdir: Path) -> None:
    seen: list[pb.ClusterChange] = []
    synced = threading.Event()
    client = Client(cluster.address)

    def watch() -> None:
        try:
            for change in client.watch(initial=True):
                seen.append(change)
                if change.synced:
                    synced.set()
        except Exception:
            pass

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert synced.wait(10)
    assert {c.node.name for c in seen if c.HasField("node")} == set(cluster.node_names)
    job_id = cluster.submit("--wrap", "true", cwd=workdir)
    cluster.wait_state(job_id, "COMPLETED")

    def states() -> list[str]:
        return [
            pb.JobState.Name(c.job.state)
            for c in seen
            if c.HasField("job") and c.job.job_id == job_id
        ]

    wait_until("the job's changes on the stream", lambda: "COMPLETED" in states())
    assert states()[0] == "PENDING" and "RUNNING" in states()
    client.close()


WATCH_FLOOD = """import sys
import grpc
from gshare.api import gshare_pb2 as pb, gshare_pb2_grpc as pbg
stub = pbg.ClientServiceStub(grpc.insecure_channel("unix:" + sys.argv[1]))
calls, held = [], 0
for _ in range(int(sys.argv[2])):
    calls.append(stub.WatchCluster(pb.WatchClusterRequest()))
    try:
        next(calls[-1])
        held += 1
    except grpc.RpcError as exc:
        print("refused", exc.code().name, exc.details(), flush=True)
print("holding", held, flush=True)
sys.stdin.read()  # hold them until the test is done
"""


def test_one_user_cannot_take_every_watch_stream(cluster: Cluster, workdir: Path) -> None:
    """nobody opening watch after watch gets 16 and a clear refusal; root (and anyone
    else) can still watch."""
    flood_py = workdir / "flood.py"
    flood_py.write_text(WATCH_FLOOD)
    flood_py.chmod(0o644)
    flood = subprocess.Popen(
        [
            *("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"),
            *(PY, str(flood_py), str(cluster.sock), "40"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=cluster.env(),
        text=True,
    )
    try:
        assert flood.stdout is not None
        lines = [flood.stdout.readline().strip() for _ in range(25)]
        assert lines[-1] == "holding 16", lines
        assert lines[0] == (
            "refused RESOURCE_EXHAUSTED uid 65534 holds 16 watch streams already (the most "
            "one caller may); close one first"
        )
        with grpc.insecure_channel(cluster.address) as channel:
            first = next(
                pb_grpc.ClientServiceStub(channel).WatchCluster(
                    pb.WatchClusterRequest(), timeout=30
                )
            )
        assert first.synced
    finally:
        flood.kill()
        flood.wait(10)


def test_a_silent_node_loses_its_jobs_to_others_and_is_told_to_kill_them(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(
        config="[scheduler]\nnode_lease_s = 3\nheartbeat_s = 1\nkill_grace_s = 2\n"
    )
    marker = workdir / "runs"
    path = workdir / "long.sh"
    # it ignores the checkpoint signal, so the stale copy lives out its grace on the silent node
    path.write_text(f"#!/bin/bash\ntrap '' USR1\necho $GSHARE_NODE $$ >> {marker}\nsleep 300\n")
    job_id = cluster.submit(str(path), "--gpus", "4", cwd=workdir)
    first = cluster.wait_state(job_id, "RUNNING")
    wait_until("the first run", lambda: marker.exists() and marker.read_text().strip())
    old_node, old_pid = marker.read_text().split()
    assert old_node == first.node
    cluster.kill_agent(first.node, signal.SIGKILL)
    moved = wait_until(
        "the job to run on the other node",
        lambda: (j := cluster.job(job_id)).state == pb.RUNNING and j.node != first.node and j,
        timeout=30,
    )
    assert moved.restarts == 1
    kinds = [e.to_state for e in cluster.job(job_id).events]
    assert "LOST" in kinds and kinds.count("RUNNING") == 2
    nodes = {n.name: n for n in Client(cluster.address).nodes()}
    assert nodes[first.node].state == pb.NODE_DOWN and "silent" in nodes[first.node].reason
    assert psutil.pid_exists(int(old_pid))  # the old copy still runs (in its grace)...
    cluster.start_agent(first.node)
    cluster.wait_nodes_up(2)
    wait_until(
        "the stale copy to be killed", lambda: not psutil.pid_exists(int(old_pid)), timeout=20
    )
    assert cluster.state(job_id) == "RUNNING"  # ...and the live copy is untouched
    cluster.gshare("cancel", str(job_id))


def test_an_agent_token_is_never_taken_in_clear(
    cluster_factory: Callable[..., Cluster], open_tmp: Path
) -> None:
    """A token is a reusable secret: on a `[server] tcp` without TLS even the right one is
    refused, and an agent without `[agent] ca_file` will not send it over TCP at all."""
    cluster = cluster_factory(config='[server]\ntcp = "127.0.0.1:0"\n', agents=1)
    state = cluster.root / "sched"
    key = state / "agent.key"
    assert key.exists() and key.stat().st_mode & 0o777 == 0o600
    address = (state / "tcp.address").read_text().strip()
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    res = subprocess.run(
        [PY, "-m", "schedulerd.main", "--state-dir", str(state), "--node-token", "remote"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    token_file = open_tmp / "remote.token"
    token_file.write_text(token + "\n")

    agent = subprocess.run(
        [
            PY,
            "-m",
            "nodeagent.main",
            "--address",
            address,
            "--node",
            "remote",
            "--state-dir",
            str(open_tmp / "remote"),
            "--fake-gpus",
            "1",
            "--token-file",
            str(token_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert agent.returncode == 2
    assert agent.stderr.count("\n") == 1 and "only over TLS" in agent.stderr, agent.stderr

    # a client that sends it anyway (as a sniffer replaying it would) is refused
    reg = pb.AgentMessage(register=pb.Register(node="remote"))
    with grpc.insecure_channel(address) as channel:
        call = pb_grpc.AgentServiceStub(channel).Connect(
            iter([reg]),
            metadata=(("x-gshare-node", "remote"), ("x-gshare-agent-token", token)),
            timeout=30,
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert {n.name for n in Client(cluster.address).nodes()} == {"node0"}
    log = (cluster.root / "schedulerd.log").read_text(errors="replace")
    assert "agent tokens are taken only over TLS" in log
    assert "agent tokens are refused on it" in log  # the start-up warning says so


def test_bad_daemon_configuration_stops_with_a_message(open_tmp: Path) -> None:
    bad = open_tmp / "bad.toml"
    bad.write_text("[scheduler]\nnode_lease_s = 'soon'\n")
    bad_param = open_tmp / "bad-param.toml"
    bad_param.write_text(
        '[scheduler]\npolicy = "priority"\n[scheduler.policy_params]\nweight_age = -1\n'
    )
    bad_victims = open_tmp / "bad-victims.toml"
    bad_victims.write_text('[scheduler.policy_params]\nvictim_order = "oldest"\n')
    bad_aging = open_tmp / "bad-aging.toml"
    bad_aging.write_text("[scheduler.policy_params]\naging_s = nan\n")
    bad_runtime = open_tmp / "bad-runtime.toml"
    bad_runtime.write_text("[scheduler.policy_params]\nmin_runtime_s = inf\n")
    bad_types = open_tmp / "bad-types.toml"
    bad_types.write_text("[fairshare.accounts.t]\nguaranteed = { A100 = 4, a100 = 4 }\n")
    bad_half_life = open_tmp / "bad-half-life.toml"
    bad_half_life.write_text("[fairshare]\nhalf_life = 0\n")
    for argv, message in (
        (["--config", str(bad)], "node_lease_s must be a float"),
        (["--policy", "nope"], "unknown scheduling policy 'nope'"),
        (
            ["--config", str(bad_param)],
            "policy 'priority': bad parameters: priority weights must not",
        ),
        (["--config", str(bad_half_life)], "half_life must be positive"),
        (
            ["--config", str(bad_victims)],
            "policy 'fairshare': bad parameters: victim_order must be one of least_work_lost",
        ),
        (["--config", str(bad_aging)], "aging_s must be a positive number of seconds"),
        (["--config", str(bad_runtime)], "bad parameters: min_runtime_s must be a finite number"),
        (["--config", str(bad_types)], "GPU types 'A100' and 'a100' name the same GPUs"),
        (["--config", str(open_tmp / "missing.toml")], "cannot read config"),
        (["--mqtt", "tcp://broker:1883"], "--mqtt: expected mqtt://HOST:PORT"),
    ):
        res = subprocess.run(
            [str(BIN / "gshare-schedulerd"), "--state-dir", str(open_tmp / "s"), *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2 and message in res.stderr, (argv, res.stderr)
    res = subprocess.run(
        [str(BIN / "gshare-nodeagent"), "--fake-gpus", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "--fake-gpus must be at least 1" in res.stderr
    for tool in ("gsub", "gshare", "gshare-schedulerd", "gshare-nodeagent"):
        res = subprocess.run(
            [str(BIN / tool), "--help"], capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0 and "usage:" in res.stdout


def test_gshare_up_runs_a_cluster_until_interrupted(open_tmp: Path, workdir: Path) -> None:
    state = open_tmp / "up"
    up = subprocess.Popen(
        [str(BIN / "gshare"), "up", "--state-dir", str(state), "--agents", "2", "--fake-gpus", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stdout is not None
        first = up.stdout.readline()
        assert first.startswith("gshare is up:") and "2 node(s)" in first and "4 GPUs" in first, (
            first
        )
        telemetry_line = up.stdout.readline()
        assert telemetry_line.startswith("  telemetry: mqtt://127.0.0.1:"), telemetry_line
        env_line = up.stdout.readline()
        assert f"GSHARE_ADDRESS=unix:{state}/gshare.sock" in env_line
        env = {"GSHARE_ADDRESS": f"unix:{state}/gshare.sock", "PATH": "/usr/bin:/bin"}
        res = subprocess.run(
            [str(BIN / "gsub"), "--json", "--wrap", "echo hi", "--gpus", "2"],
            capture_output=True,
            text=True,
            env=env,
            cwd=workdir,
            timeout=60,
        )
        job_id = json.loads(res.stdout)["job_id"]
        with Client(f"unix:{state}/gshare.sock") as client:
            wait_until("the job to complete", lambda: client.job(job_id).state == pb.COMPLETED)
        daemons = [p for p in psutil.Process(up.pid).children()]
        assert len(daemons) == 4  # the embedded MQTT broker, the scheduler, two agents
        up.send_signal(signal.SIGINT)
        assert up.wait(20) == 0
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in daemons)
    finally:
        if up.poll() is None:
            up.kill()
        for p in psutil.process_iter(["cmdline"]):
            if str(state) in " ".join(p.info["cmdline"] or []):
                p.kill()


def test_gshare_up_refuses_a_second_instance(open_tmp: Path) -> None:
    state = open_tmp / "up2"
    up = subprocess.Popen(
        [str(BIN / "gshare"), "up", "--state-dir", str(state), "--fake-gpus", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert up.stdout is not None and up.stdout.readline().startswith("gshare is up")
        res = subprocess.run(
            [str(BIN / "gshare"), "up", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 1 and "already running" in res.stderr
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(20)
