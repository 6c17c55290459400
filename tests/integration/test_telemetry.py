"""Telemetry through a real Mosquitto: agents publish what their fake GPUs' jobs really do,
the scheduler takes it in, drains sick GPUs, reclaims idle ones, and survives the broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import Cluster, wait_until
from tests.mosquitto import Mosquitto

BUSY = "#!/bin/bash\nexec python3 -c 'while True: pass'\n"
# A fake GPU's utilization is the CPU use of its job: one busy loop, about 100% on an idle
# machine, and far less when other suites share the two cores; an idle job stays under 5.
BUSY_PCT = 15
IDLE = "#!/bin/bash\nexec sleep 600\n"
# idle, but yields like a checkpointing job when asked (the preemption signal, SIGUSR1)
IDLE_YIELDING = "#!/bin/bash\ntrap 'exit 75' USR1\nwhile :; do sleep 0.2; done\n"


@pytest.fixture
def broker(open_tmp: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(open_tmp / "mosquitto").start()
    yield m
    m.stop()


def config(
    broker: Mosquitto, extra: str = "", metrics: bool = False, agent_metrics: bool = False
) -> str:
    text = f"""
[scheduler]
kill_grace_s = 3

[mqtt]
url = "{broker.url}"

[telemetry]
interval = "1s"
"""
    if metrics:  # port 0: the scheduler writes the one it got to STATE/metrics.address
        text += '\n[server]\nmetrics = "127.0.0.1:0"\n'
    if agent_metrics:  # the same for the agent, in its state dir
        text += '\n[agent]\nmetrics = "127.0.0.1:0"\n'
    return text + extra


def nodes_json(cluster: Cluster) -> list[dict[str, Any]]:
    res = cluster.gshare("nodes", "--json")
    assert res.code == 0, res.err
    return list(json.loads(res.out))


def gpu(cluster: Cluster, node: str, index: int) -> dict[str, Any]:
    [n] = [n for n in nodes_json(cluster) if n["name"] == node]
    return dict(n["gpus"][index])


def sampled_after(cluster: Cluster, node: str, index: int, t: float) -> dict[str, Any] | None:
    g = gpu(cluster, node, index)
    m = g["metrics"]
    return g if m is not None and m["time"] > t else None


def bound_port(state_dir: Path) -> int:
    """The port a daemon's /metrics got, from the address it wrote (it listens on port 0)."""
    path = state_dir / "metrics.address"
    wait_until("the metrics address", path.exists)
    return int(path.read_text().strip().rpartition(":")[2])


def script(root: Path, name: str, text: str) -> str:
    path = root / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_telemetry_follows_busy_and_idle_jobs(
    cluster_factory: Callable[..., Cluster], broker: Mosquitto, open_tmp: Path
) -> None:
    cluster = cluster_factory(config=config(broker, metrics=True, agent_metrics=True), agents=1)
    port = bound_port(cluster.root / "sched")
    agent_port = bound_port(cluster.root / "agent-node0")
    busy = cluster.submit("--gpus", "2", script(open_tmp, "busy.sh", BUSY))
    idle = cluster.submit("--gpus", "1", script(open_tmp, "idle.sh", IDLE))
    busy_job = cluster.wait_state(busy, "RUNNING")
    idle_job = cluster.wait_state(idle, "RUNNING")
    busy_gpus = [g.index for g in busy_job.gpus]
    [idle_gpu] = [g.index for g in idle_job.gpus]
    [free_gpu] = sorted({0, 1, 2, 3} - {*busy_gpus, idle_gpu})

    def settled() -> bool:
        samples = [gpu(cluster, "node0", i)["metrics"] for i in range(4)]
        return all(s is not None for s in samples) and all(
            samples[i]["util_pct"] > BUSY_PCT for i in busy_gpus
        )

    wait_until("busy GPUs to show load", settled, timeout=30)
    for i in busy_gpus:
        m = gpu(cluster, "node0", i)["metrics"]
        assert m["util_pct"] > BUSY_PCT and m["power_w"] > 60 and m["mem_used_mb"] >= 1
        assert {p["job_id"] for p in m["processes"]} == {busy}
    idle_m = gpu(cluster, "node0", idle_gpu)["metrics"]
    assert idle_m["util_pct"] < 5
    assert {p["job_id"] for p in idle_m["processes"]} == {idle}
    free_m = gpu(cluster, "node0", free_gpu)["metrics"]
    assert free_m["util_pct"] == 0 and free_m["processes"] == []

    # the per-job figures in gshare show
    shown = json.loads(cluster.gshare("show", str(busy), "--json").out)["gpu_stats"]
    assert shown is not None and shown["util_now_pct"] > BUSY_PCT
    shown = json.loads(cluster.gshare("show", str(idle), "--json").out)["gpu_stats"]
    assert shown is not None and shown["util_now_pct"] < 5 and shown["idle_s"] > 0

    # what is on the wire: retained status, schema-versioned GPU samples
    async def read_wire() -> dict[str, dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-reader") as c:
            await c.subscribe("gshare/v1/nodes/node0/#")
            async with asyncio.timeout(10):
                async for msg in c.messages:
                    seen[str(msg.topic)] = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                    if {"gshare/v1/nodes/node0/status", "gshare/v1/nodes/node0/host"} <= set(
                        seen
                    ) and f"gshare/v1/nodes/node0/gpus/{busy_gpus[0]}" in seen:
                        return seen
        return seen

    wire = asyncio.run(read_wire())
    assert wire["gshare/v1/nodes/node0/status"]["online"] is True
    assert wire["gshare/v1/nodes/node0/status"]["schema"] == 1
    sample = wire[f"gshare/v1/nodes/node0/gpus/{busy_gpus[0]}"]
    assert sample["schema"] == 1 and sample["node"] == "node0" and sample["util_pct"] > BUSY_PCT

    # /metrics parses with prometheus-client's own parser and carries the same figures
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    util = {s.labels["gpu"]: s.value for s in families["gshare_gpu_utilization_percent"].samples}
    assert util[str(busy_gpus[0])] > BUSY_PCT and util[str(free_gpu)] == 0
    running = {
        (s.labels["state"], s.labels["queue"]): s.value for s in families["gshare_jobs"].samples
    }
    assert running[("RUNNING", "default")] == 2
    assert "gshare_scheduling_cycle_seconds" in families
    assert "gshare_queue_wait_seconds" in families
    assert "gshare_fairshare_usage_gpu_seconds" in families
    # and each agent's own /metrics
    url = f"http://127.0.0.1:{agent_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["gshare_agent_jobs"].samples[0].value == 2
    assert families["gshare_agent_mqtt_connected"].samples[0].value == 1
    util = {s.labels["gpu"]: s.value for s in families["gshare_gpu_utilization_percent"].samples}
    assert util[str(busy_gpus[0])] > BUSY_PCT and util[str(free_gpu)] == 0


def test_broker_down_degrades_views_not_scheduling(
    cluster_factory: Callable[..., Cluster], broker: Mosquitto, open_tmp: Path
) -> None:
    cluster = cluster_factory(config=config(broker), agents=1)
    wait_until("telemetry", lambda: gpu(cluster, "node0", 0)["metrics"], timeout=30)
    broker.kill()
    # with no broker, jobs are still scheduled, run and end
    job = cluster.submit("--gpus", "2", "--wrap", "sleep 1")
    assert cluster.wait_state(job, "COMPLETED", timeout=30)
    nodes = nodes_json(cluster)
    assert nodes[0]["state"] == "UP"
    # the broker comes back (same port): agents and scheduler reconnect by themselves
    broker.start()
    back = time.time()
    wait_until(
        "fresh telemetry after the broker restarts",
        lambda: sampled_after(cluster, "node0", 0, back),
        timeout=40,
    )
    assert nodes_json(cluster)[0]["telemetry"] == "online"


def test_malformed_and_oversized_payloads_are_dropped(
    cluster_factory: Callable[..., Cluster], broker: Mosquitto
) -> None:
    cluster = cluster_factory(config=config(broker, metrics=True), agents=1)
    port = bound_port(cluster.root / "sched")
    wait_until("telemetry", lambda: gpu(cluster, "node0", 0)["metrics"], timeout=30)

    async def publish_junk() -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-junk") as c:
            topic = "gshare/v1/nodes/node0/gpus/0"
            await c.publish(topic, b"not json", qos=1)
            await c.publish(topic, b"x" * 200_000, qos=1)
            await c.publish(topic, json.dumps({"schema": 99}).encode(), qos=1)
            good = {"schema": 1, "node": "node1", "index": 0, "uuid": "GPU-x", "time": 1e12}
            good |= {"util_pct": 50, "mem_used_mb": 1, "mem_total_mb": 2}
            await c.publish(topic, json.dumps(good).encode(), qos=1)  # another node's name
            good["node"] = "node0"
            good["util_pct"] = 150  # out of range
            await c.publish(topic, json.dumps(good).encode(), qos=1)
            await c.publish("gshare/v1/nodes/node0/bogus", b"{}", qos=1)
            await c.publish("gshare/v1/nodes/node0/events", b"[]", qos=1)

    asyncio.run(publish_junk())

    def dropped() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        for family in text_string_to_metric_families(text.decode()):
            if family.name == "gshare_telemetry_dropped_messages":
                return float(family.samples[0].value)
        return 0.0

    wait_until("seven dropped messages", lambda: dropped() >= 7, timeout=20)
    assert "dropped a message on gshare/v1/nodes/node0/gpus/0" in cluster.logs("schedulerd")
    # none of it took: GPU 0 still shows the agent's own samples, and scheduling goes on
    m = gpu(cluster, "node0", 0)["metrics"]
    assert m["util_pct"] <= 100 and m["time"] < 1e11
    job = cluster.submit("--gpus", "1", "--wrap", "true")
    cluster.wait_state(job, "COMPLETED", timeout=30)


def test_ecc_error_drains_its_gpu_until_resumed(
    cluster_factory: Callable[..., Cluster], broker: Mosquitto, open_tmp: Path
) -> None:
    cluster = cluster_factory(config=config(broker), agents=1, gpus_per_node=2)
    wait_until("telemetry", lambda: gpu(cluster, "node0", 1)["metrics"], timeout=30)
    faults = cluster.root / "agent-node0" / "fake-gpus" / "faults"
    with faults.open("a") as f:
        f.write(json.dumps({"gpu": 1, "ecc_dbe": 2}) + "\n")
    drained = wait_until("GPU 1 drained", lambda: gpu(cluster, "node0", 1)["drained"], timeout=20)
    assert "double-bit ECC" in drained and "telemetry" in drained
    assert gpu(cluster, "node0", 0)["drained"] is None
    res = cluster.gshare("nodes")
    assert res.code == 0 and "node0 GPU 1: drained: double-bit ECC" in res.out
    # a 2-GPU job cannot start on a node with one good GPU; a 1-GPU job goes on GPU 0
    two = cluster.submit("--gpus", "2", "--wrap", "true")
    one = cluster.submit("--gpus", "1", "--wrap", "sleep 0.5")
    done = cluster.wait_state(one, "COMPLETED", timeout=30)
    assert [g.index for g in done.gpus] == [0]
    assert cluster.state(two) == "PENDING"
    # only admins put it back; then the waiting job runs
    res = cluster.gshare("resume", "node0:1", user="nobody")
    assert res.code == 1 and "only root and admins" in res.err
    res = cluster.gshare("resume", "node0:1")
    assert res.code == 0, res.err
    cluster.wait_state(two, "COMPLETED", timeout=30)


def test_a_process_on_a_gpu_not_given_to_its_job_is_flagged(
    cluster_factory: Callable[..., Cluster], broker: Mosquitto, open_tmp: Path
) -> None:
    cluster = cluster_factory(config=config(broker), agents=1, gpus_per_node=2)
    dev = cluster.root / "agent-node0" / "fake-gpus" / "nvidia1"
    # a job given GPU 0 that also opens GPU 1's device, as a job ignoring
    # CUDA_VISIBLE_DEVICES would
    text = f"#!/bin/bash\nexec 3<{dev}\nsleep 600\n"
    job = cluster.submit("--gpus", "1", script(open_tmp, "sneaky.sh", text))
    running = cluster.wait_state(job, "RUNNING")
    assert [g.index for g in running.gpus] == [0]
    warned = wait_until(
        "a warning on GPU 1", lambda: gpu(cluster, "node0", 1)["warnings"], timeout=30
    )
    assert f"of job {job} is on GPU 1, which was not given to it" in warned[0]
    kinds = wait_until(
        "a gpu-misuse event",
        lambda: [e.reason for e in cluster.job(job).events if e.kind == "gpu-misuse"],
        timeout=10,
    )
    assert "GPU 1" in kinds[0]
    shown = json.loads(cluster.gshare("show", str(job), "--json").out)["gpu_stats"]
    assert any("is on GPU 1, which was not given to it" in w for w in shown["warnings"])


IDLE_CONFIG = """
[queues.default]
idle_reclaim = true
idle_util_pct = 5
idle_time = "3s"
grace = "10s"
"""


def test_idle_reclaim_preempts_an_idle_job_only_while_others_wait(
    cluster_factory: Callable[..., Cluster], broker: Mosquitto, open_tmp: Path
) -> None:
    cluster = cluster_factory(config=config(broker, IDLE_CONFIG), agents=1, gpus_per_node=2)
    idle = cluster.submit("--gpus", "2", script(open_tmp, "idle.sh", IDLE_YIELDING))
    cluster.wait_state(idle, "RUNNING")
    # idle well past idle_time, but nobody waits: it keeps its GPUs
    wait_until(
        "the job to be seen idle for 5s",
        lambda: (
            json.loads(cluster.gshare("show", str(idle), "--json").out)["gpu_stats"]
            and json.loads(cluster.gshare("show", str(idle), "--json").out)["gpu_stats"]["idle_s"]
            >= 5
        ),
        timeout=30,
    )
    assert cluster.state(idle) == "RUNNING"
    # now a job waits: the idle one is checkpoint-preempted and the waiting one starts
    waiting = cluster.submit("--gpus", "2", "--wrap", "sleep 2")
    cluster.wait_state(waiting, {"RUNNING", "COMPLETED"}, timeout=30)
    job = cluster.job(idle)
    preempts = [e.reason for e in job.events if e.kind == "preempt"]
    assert preempts and f"idle GPUs reclaimed for job {waiting}" in preempts[0]
    assert job.preemptions == 1
    # idle GPU time shows per user in gshare usage
    usage = json.loads(cluster.gshare("usage", "--json").out)
    [root_row] = [a for a in usage["accounts"] if a["kind"] == "user" and a["path"][-1] == "root"]
    assert root_row["idle_gpu_s"] > 5


def test_shipped_acls_let_an_agent_write_only_its_own_topics(open_tmp: Path) -> None:
    from gshare.config import MqttConfig
    from gshare.mqtt import make_client

    repo = Path(__file__).resolve().parents[2]
    passwd = open_tmp / "passwd"
    for i, (user, password) in enumerate((("gshare-scheduler", "s3cret"), ("node0", "n0pass"))):
        subprocess.run(
            ["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    (open_tmp / "pw").write_text("s3cret\n")
    broker = Mosquitto(
        open_tmp / "acl-broker",
        extra_config=f"allow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {repo / 'docs' / 'mosquitto' / 'gshare.acl'}\n",
    ).start()
    try:
        scheduler = MqttConfig(
            url=broker.url, username="gshare-scheduler", password_file=str(open_tmp / "pw")
        )
        agent = MqttConfig(url=broker.url, username="node0", password="n0pass")
        stranger = MqttConfig(url=broker.url)

        async def run() -> list[str]:
            got: list[str] = []
            async with make_client(scheduler, "test-sched") as sub:
                await sub.subscribe("gshare/v1/#", qos=1)
                async with make_client(agent, "test-agent0") as pub:
                    await pub.publish("gshare/v1/nodes/node1/status", b"forged", qos=1)
                    await pub.publish("gshare/v1/nodes/node0/status", b"mine", qos=1)
                async with asyncio.timeout(5):
                    async for msg in sub.messages:
                        got.append(str(msg.topic))
                        if str(msg.topic).endswith("node0/status"):
                            break
                with pytest.raises(aiomqtt.MqttError):
                    async with make_client(stranger, "test-anon"):
                        pass
            return got

        assert asyncio.run(run()) == ["gshare/v1/nodes/node0/status"]
    finally:
        broker.stop()


async def test_top_shows_live_utilization_from_telemetry(
    cluster_factory: Callable[..., Cluster], broker: Mosquitto, open_tmp: Path
) -> None:
    import io

    from rich.console import Console

    from tui.app import GshareTop
    from tui.cluster import ClusterView

    cluster = cluster_factory(config=config(broker), agents=1, gpus_per_node=2)
    busy = cluster.submit("--gpus", "1", script(open_tmp, "busy.sh", BUSY))
    cluster.wait_state(busy, "RUNNING")
    app = GshareTop(cluster.address)
    async with app.run_test(size=(100, 30)) as pilot:
        deadline = time.monotonic() + 40
        text = ""
        while time.monotonic() < deadline:
            await pilot.pause(0.5)
            console = Console(width=100, record=True, file=io.StringIO())
            console.print(app.query_one(ClusterView).render_cluster())
            text = console.export_text()
            history = app.model.history.get(("node0", 0), ())
            if "U █████" in text and len(history) >= 3:
                break
        else:
            raise AssertionError(f"no utilization bar over 50% and history in:\n{text}")
        assert f"0 {busy} root" in text
        assert "U ··········   0%" in text  # GPU 1 is free and idle
        assert max(history) > BUSY_PCT  # the sparkline's data: samples as they came


def test_tls_with_a_password_reaches_mosquitto(open_tmp: Path) -> None:
    """mqtts:// with the broker's CA and a password: what [mqtt] ca_file is for."""
    from gshare.config import MqttConfig
    from gshare.mqtt import make_client

    pki = open_tmp / "pki"
    pki.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
    )
    (pki / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "broker.crt",
    )
    passwd = open_tmp / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gpu01", "pw1"], check=True)
    broker = Mosquitto(
        open_tmp / "tls-broker",
        extra_config=f"allow_anonymous false\npassword_file {passwd}\n"
        f"certfile {pki / 'broker.crt'}\nkeyfile {pki / 'broker.key'}\n",
    ).start()
    try:
        url = f"mqtts://127.0.0.1:{broker.port}"
        good = MqttConfig(url=url, username="gpu01", password="pw1", ca_file=str(pki / "ca.crt"))

        async def roundtrip(config: MqttConfig) -> bytes:
            async with make_client(config, "test-tls") as c:
                await c.subscribe("gshare/v1/nodes/gpu01/status", qos=1)
                await c.publish("gshare/v1/nodes/gpu01/status", b"over tls", qos=1)
                async with asyncio.timeout(5):
                    async for msg in c.messages:
                        return bytes(msg.payload)  # type: ignore[arg-type]
            return b""

        assert asyncio.run(roundtrip(good)) == b"over tls"
        # without the broker's CA, the certificate is not trusted: no connection
        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(roundtrip(MqttConfig(url=url, username="gpu01", password="pw1")))
    finally:
        broker.stop()
