"""Users and agents on other hosts, over TCP: a real schedulerd with TLS and a real
`munged` of its own, and a second `munged` with the same key for the user's "other host"
(tests/munge.py). Users act as themselves with setpriv, as on a login node."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import pytest

from gshare.api import gshare_pb2 as pb
from gshare.munge import HEADER, Munge, request_payload
from tests.cluster import BIN, PY, Cluster, wait_until
from tests.conftest import needs_root
from tests.munge import Munged, make_key

pytestmark = needs_root

NOBODY = 65534


@dataclass
class Site:
    """What a department's admin sets up once: the munge key on every host, a CA."""

    root: Path
    sched_munge: Munged  # on the scheduler's host
    user_munge: Munged  # on a login node: same key
    stranger_munge: Munged  # a host with another key
    ca: Path

    def gshare_ca(self, *args: str, where: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "gshare"), "ca", *args, "--dir", str(where or self.ca)],
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def site(open_tmp: Path) -> Iterator[Site]:
    key = make_key(open_tmp / "munge.key")
    other_key = make_key(open_tmp / "other.key")
    daemons = [
        Munged(open_tmp / "munge-sched", key),
        Munged(open_tmp / "munge-login", key),
        Munged(open_tmp / "munge-stranger", other_key),
    ]
    try:
        for d in daemons:
            d.start()
        s = Site(open_tmp, *daemons, open_tmp / "ca")
        for args in (("init",), ("scheduler", "127.0.0.1", "localhost")):
            res = s.gshare_ca(*args)
            assert res.returncode == 0, res.stderr
        yield s
    finally:
        for d in daemons:
            d.stop()


def server_config(
    site: Site, munge: bool = True, tls: bool = True, agents: bool = False, root: bool = False
) -> str:
    lines = ["[scheduler]", "kill_grace_s = 3", "[server]", 'tcp = "127.0.0.1:0"']
    if munge:
        lines.append(f'munge_socket = "{site.sched_munge.socket}"')
    if root:
        lines.append("munge_root = true")
    if agents:
        lines.append('agent_tcp = "127.0.0.1:0"')
    if tls:
        ca = site.ca
        lines += [
            "[server.tls]",
            f'cert_file = "{ca / "scheduler.pem"}"',
            f'key_file = "{ca / "scheduler.key"}"',
            f'ca_file = "{ca / "ca.pem"}"',
        ]
    return "\n".join(lines) + "\n"


def tcp_address(cluster: Cluster, name: str = "tcp.address") -> str:
    return (cluster.root / "sched" / name).read_text().strip()


def client_toml(site: Site, cluster: Cluster, name: str = "client.toml", **keys: str) -> Path:
    values = {
        "scheduler": tcp_address(cluster),
        "ca_file": str(site.ca / "ca.pem"),
        "munge_socket": str(site.user_munge.socket),
        **keys,
    }
    path = site.root / name
    path.write_text("[client]\n" + "".join(f'{k} = "{v}"\n' for k, v in values.items() if v != ""))
    path.chmod(0o644)
    return path


def remote(
    argv: list[str], config: Path, user: str = "nobody", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A command as `user` on "another host": no Unix socket, only [client] in `config`."""
    env = {k: v for k, v in os.environ.items() if k != "GSHARE_ADDRESS"}
    env["GSHARE_CONFIG"] = str(config)
    group = "nogroup" if user == "nobody" else user
    return subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or config.parent,
        timeout=60,
    )


# ------------------------------------------------------------------ users over TCP


def test_a_user_on_another_host_submits_watches_and_cancels_over_tls_and_munge(
    site: Site, cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config=server_config(site), agents=1)
    config = client_toml(site, cluster)
    res = remote(
        [str(BIN / "gsub"), "--json", "--wrap", "id -u; sleep 300", "--gpus", "1"],
        config,
        cwd=workdir,
    )
    assert res.returncode == 0, res.stderr
    job_id = int(json.loads(res.stdout)["job_id"])
    job = cluster.wait_state(job_id, "RUNNING")
    assert (job.user, job.uid) == ("nobody", NOBODY)  # owned by the credential's uid
    out = Path(job.output_path)
    wait_until("the job's output", lambda: out.exists() and out.read_text().strip())
    assert out.read_text().split()[0] == str(NOBODY)  # and it runs as that uid
    assert out.stat().st_uid == NOBODY

    shown = remote([str(BIN / "gshare"), "show", str(job_id), "--json"], config)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["user"] == "nobody"
    watch = remote(
        [
            PY,
            "-c",
            "from gshare.client import Client\n"
            "jobs = set()\n"
            "for change in Client().watch():\n"
            "    if change.HasField('job'): jobs.add(change.job.job_id)\n"
            "    if change.synced: break\n"
            "print(sorted(jobs))",
        ],
        config,
    )
    assert watch.returncode == 0, watch.stderr
    assert str(job_id) in watch.stdout

    # another user, on the same other host, may read it but not cancel it
    other = remote([str(BIN / "gshare"), "cancel", str(job_id)], config, user="daemon")
    assert other.returncode != 0
    assert f"job {job_id} belongs to nobody" in other.stderr, other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert cluster.state(job_id) == "RUNNING"

    mine = remote([str(BIN / "gshare"), "cancel", str(job_id)], config)
    assert mine.returncode == 0, mine.stderr
    cluster.wait_state(job_id, "CANCELLED")
    log = (cluster.root / "schedulerd.log").read_text(errors="replace")
    assert "refused a MUNGE credential" not in log


def _raw_call(
    target: str, ca: Path, method: str, request: bytes, metadata: tuple[tuple[str, str], ...]
) -> bytes:
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(target, creds) as channel:
        call = channel.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        result: bytes = call(request, metadata=metadata, timeout=10)
        return result


def test_replayed_forged_foreign_and_misbound_credentials_are_refused(
    site: Site, cluster_factory: Callable[..., Cluster]
) -> None:
    cluster = cluster_factory(config=server_config(site, root=True), agents=1)  # root's creds
    target, ca = tcp_address(cluster), site.ca / "ca.pem"
    nodes = "/gshare.v1.ClientService/ListNodes"
    cancel = "/gshare.v1.ClientService/CancelJob"
    request = pb.ListNodesRequest().SerializeToString()
    login = Munge(str(site.user_munge.socket))

    def refused(method: str, data: bytes, credential: str | None) -> str:
        md = ((HEADER, credential),) if credential is not None else ()
        with pytest.raises(grpc.RpcError) as info:
            _raw_call(target, ca, method, data, md)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, info.value
        return str(info.value.details())

    good = login.encode(request_payload(nodes, request))
    reply = pb.ListNodesResponse.FromString(
        _raw_call(target, ca, nodes, request, ((HEADER, good),))
    )
    assert [n.name for n in reply.nodes] == ["node0"]
    # the same request with the same credential again, as one who saw it on the wire
    assert "replay" in refused(nodes, request, good)
    # a credential made for one request does not carry another
    cancel_req = pb.JobIdRequest(job_id=1).SerializeToString()
    fresh = login.encode(request_payload(nodes, request))
    assert "another request" in refused(cancel, cancel_req, fresh)
    fresh = login.encode(request_payload(nodes, request))
    assert "another request" in refused(
        nodes, pb.ListNodesRequest().SerializeToString() + b"\x08\x01", fresh
    )
    # forged: altered bytes, and plain text that is no credential at all
    fresh = login.encode(request_payload(nodes, request))
    forged = fresh[:20] + ("A" if fresh[20] != "A" else "B") + fresh[21:]
    assert "does not decode" in refused(nodes, request, forged)
    assert "does not decode" in refused(nodes, request, "MUNGE:root:0")
    # a host with another key
    foreign = Munge(str(site.stranger_munge.socket)).encode(request_payload(nodes, request))
    assert "does not decode" in refused(nodes, request, foreign)
    # none: reading needs a credential too
    assert "need a MUNGE credential" in refused(nodes, request, None)
    # and a long one is refused without reaching munged. (Longer than MAX_CREDENTIAL, but
    # all the metadata under 8 KiB: between 8 and 16 KiB gRPC refuses a call at random, as
    # RESOURCE_EXHAUSTED, and above 16 KiB always, before the scheduler sees it.)
    assert "too long" in refused(nodes, request, "M" * 5_000)
    # both before the body is even parsed: bytes that are no message get the same answer
    garbage = b"\xff" * 1_000_000
    assert "need a MUNGE credential" in refused(nodes, garbage, None)
    assert "too long" in refused(nodes, garbage, "M" * 5_000)
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes())) as channel:
        watch = channel.unary_stream(
            "/gshare.v1.ClientService/WatchCluster",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            next(watch(garbage, timeout=10))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, info.value
    assert "need a MUNGE credential" in str(info.value.details())
    log = (cluster.root / "schedulerd.log").read_text(errors="replace")
    assert "made for another request" in log and "Replayed credential" in log
    # the scheduler still serves after all of that
    with cluster.client() as c:
        assert [n.name for n in c.nodes()] == ["node0"]


def test_root_over_munge_is_refused_unless_munge_root(
    site: Site, cluster_factory: Callable[..., Cluster]
) -> None:
    """Root on a host with the key is not root here by default: it would run root jobs
    on every node. `[server] munge_root = true` takes it."""
    nodes = "/gshare.v1.ClientService/ListNodes"
    request = pb.ListNodesRequest().SerializeToString()
    login = Munge(str(site.user_munge.socket))  # this test runs as root
    cluster = cluster_factory(config=server_config(site), agents=1)
    target, ca = tcp_address(cluster), site.ca / "ca.pem"
    credential = login.encode(request_payload(nodes, request))
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(target, ca, nodes, request, ((HEADER, credential),))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "root is not taken over MUNGE here ([server] munge_root = false)" in str(
        info.value.details()
    )
    res = remote([str(BIN / "gsub"), "--wrap", "id"], client_toml(site, cluster), user="root")
    assert res.returncode != 0 and "munge_root" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # a user's credential still works there
    nobody = remote([str(BIN / "gshare"), "nodes"], client_toml(site, cluster))
    assert nobody.returncode == 0, nobody.stderr

    trusting = cluster_factory(config=server_config(site, root=True), agents=1)
    credential = login.encode(request_payload(nodes, request))
    reply = pb.ListNodesResponse.FromString(
        _raw_call(tcp_address(trusting), ca, nodes, request, ((HEADER, credential),))
    )
    assert [n.name for n in reply.nodes] == ["node0"]


def test_an_expired_credential_is_refused(
    site: Site, cluster_factory: Callable[..., Cluster]
) -> None:
    cluster = cluster_factory(config=server_config(site), agents=1)
    nodes = "/gshare.v1.ClientService/ListNodes"
    request = pb.ListNodesRequest().SerializeToString()
    old = Munge(str(site.user_munge.socket), ttl=1).encode(request_payload(nodes, request))
    time.sleep(2.5)  # past its time to live (MUNGE counts whole seconds)
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(tcp_address(cluster), site.ca / "ca.pem", nodes, request, ((HEADER, old),))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in str(info.value.details())


def test_tls_without_the_schedulers_ca_is_refused(
    site: Site, cluster_factory: Callable[..., Cluster]
) -> None:
    cluster = cluster_factory(config=server_config(site), agents=1)
    other_ca = site.root / "other-ca"
    assert site.gshare_ca("init", where=other_ca).returncode == 0
    for name, ca_file in (("plain.toml", ""), ("wrong-ca.toml", str(other_ca / "ca.pem"))):
        config = client_toml(site, cluster, name, ca_file=ca_file)
        res = remote([str(BIN / "gshare"), "nodes"], config)
        assert res.returncode == 1
        assert "cannot reach the scheduler" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    good = remote([str(BIN / "gshare"), "nodes"], client_toml(site, cluster))
    assert good.returncode == 0 and "node0" in good.stdout, good.stderr


def test_without_munge_tcp_is_read_only_and_reading_needs_a_certificate(
    site: Site, cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config=server_config(site, munge=False), agents=1)
    assert site.gshare_ca("reader", "monitor").returncode == 0
    for f in ("reader-monitor.pem", "reader-monitor.key"):
        (site.ca / f).chmod(0o644)  # readable by the test's `nobody`
    reader = client_toml(
        site,
        cluster,
        "reader.toml",
        cert_file=str(site.ca / "reader-monitor.pem"),
        key_file=str(site.ca / "reader-monitor.key"),
    )
    res = remote([str(BIN / "gshare"), "nodes"], reader)
    assert res.returncode == 0 and "node0" in res.stdout, res.stderr
    sub = remote([str(BIN / "gsub"), "--wrap", "true"], reader, cwd=workdir)
    assert sub.returncode == 1 and "submitting needs a known user" in sub.stderr, sub.stderr
    # a certificate of the same CA that is not a reader's (a node's) reads nothing
    assert site.gshare_ca("node", "gpu-r").returncode == 0
    for f in ("node-gpu-r.pem", "node-gpu-r.key"):
        (site.ca / f).chmod(0o644)
    as_node = client_toml(
        site,
        cluster,
        "as-node.toml",
        cert_file=str(site.ca / "node-gpu-r.pem"),
        key_file=str(site.ca / "node-gpu-r.key"),
    )
    res = remote([str(BIN / "gshare"), "nodes"], as_node)
    assert res.returncode == 1 and "only with OU=gshare-reader" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # no certificate: the TLS handshake itself is refused
    bare = remote([str(BIN / "gshare"), "nodes"], client_toml(site, cluster, "bare.toml"))
    assert bare.returncode == 1 and "cannot reach the scheduler" in bare.stderr
    assert cluster.client().jobs(include_finished=True) == []


def test_without_munge_or_tls_tcp_serves_no_client(
    site: Site, cluster_factory: Callable[..., Cluster]
) -> None:
    cluster = cluster_factory(config=server_config(site, munge=False, tls=False), agents=1)
    config = client_toml(site, cluster, ca_file="")
    res = remote([str(BIN / "gshare"), "queue"], config)
    assert res.returncode == 1
    assert "takes no MUNGE credentials" in res.stderr, res.stderr


# ------------------------------------------------------------------ agents over TLS


def _agent(
    site: Site, cluster: Cluster, node: str, cert: str, name: str
) -> subprocess.Popen[bytes]:
    conf = site.root / f"agent-{name}.toml"
    lines = ["[agent]", f'ca_file = "{site.ca / "ca.pem"}"']
    if cert:
        lines += [
            f'cert_file = "{site.ca / (cert + ".pem")}"',
            f'key_file = "{site.ca / (cert + ".key")}"',
        ]
    conf.write_text("\n".join(lines) + "\n")
    return subprocess.Popen(
        [
            PY,
            "-m",
            "nodeagent.main",
            "--address",
            tcp_address(cluster, "agent_tcp.address"),
            "--node",
            node,
            "--state-dir",
            str(site.root / f"agent-{name}"),
            "--fake-gpus",
            "1",
            "--config",
            str(conf),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(site.root / f"agent-{name}.err", "wb"),
    )


def test_an_agent_proves_its_node_with_its_certificate_and_no_other_node(
    site: Site, cluster_factory: Callable[..., Cluster]
) -> None:
    cluster = cluster_factory(config=server_config(site, agents=True), agents=1)
    for args in (("node", "gpu-a"), ("reader", "gpu-c")):
        assert site.gshare_ca(*args).returncode == 0
    agents = {
        "good": _agent(site, cluster, "gpu-a", "node-gpu-a", "good"),
        "borrowed": _agent(site, cluster, "gpu-b", "node-gpu-a", "borrowed"),
        "reader": _agent(site, cluster, "gpu-c", "reader-gpu-c", "reader"),
        "no-cert": _agent(site, cluster, "gpu-d", "", "no-cert"),
    }
    try:
        cluster.wait_nodes_up(2)
        log = cluster.root / "schedulerd.log"
        wait_until(
            "the borrowed and the reader's certificates to be refused",
            lambda: (
                "claiming node 'gpu-b'" in log.read_text(errors="replace")
                and "claiming node 'gpu-c'" in log.read_text(errors="replace")
            ),
        )
        with cluster.client() as c:
            names = {n.name for n in c.nodes()}
        assert names == {"node0", "gpu-a"}
        # each refused agent tells its operator so. (It retries: gRPC's asyncio client can
        # report a stream the scheduler refused before reading it as INTERNAL, when its
        # own first write loses the race; the next attempt says why.)
        for name in ("borrowed", "reader"):
            err = site.root / f"agent-{name}.err"
            wait_until(
                f"agent {name} to say it was refused",
                lambda e=err: (  # type: ignore[misc]
                    b"refused this agent" in e.read_bytes()
                ),
            )
    finally:
        for proc in agents.values():
            proc.terminate()
            proc.wait(10)
    assert b"refused this agent" not in (site.root / "agent-no-cert.err").read_bytes()


def test_client_settings_with_bad_values_stop_with_one_line(open_tmp: Path) -> None:
    junk = open_tmp / "junk.pem"
    junk.write_bytes(b"not PEM\x00")
    cases = {
        "[client]\nca_file = 3\n": "ca_file must be a str",
        '[client]\nca_file = "/nonexistent/ca.pem"\n': "ca_file '/nonexistent/ca.pem'",
        '[client]\nscheduler = "no-port"\n': "expected HOST:PORT",
        '[client]\ncolour = "red"\n': "unknown key 'colour'",
        '[client]\nmunge_socket = "a\\u0000b"\n': "NUL",
        f'[client]\nscheduler = "127.0.0.1:1"\nca_file = "{junk}"\n': "not a PEM file",
    }
    for text, message in cases.items():
        path = open_tmp / "client.toml"
        path.write_text(text)
        env = {k: v for k, v in os.environ.items() if k != "GSHARE_ADDRESS"}
        env["GSHARE_CONFIG"] = str(path)
        res = subprocess.run(
            [str(BIN / "gshare"), "queue"], capture_output=True, text=True, env=env, timeout=60
        )
        assert res.returncode == 1, text
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


async def test_gshare_top_from_another_host_watches_and_cancels(
    site: Site,
    cluster_factory: Callable[..., Cluster],
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The TUI's client reads [client] like gsub: here root's own credential (an admin,
    with [server] munge_root = true), from the login host's munged, over TCP+TLS."""
    from tests.integration.test_top import settle
    from tui.app import GshareTop
    from tui.jobs import JobsView

    cluster = cluster_factory(config=server_config(site, root=True), agents=1)
    config = client_toml(site, cluster)
    res = remote([str(BIN / "gsub"), "--json", "--wrap", "sleep 300"], config, cwd=workdir)
    assert res.returncode == 0, res.stderr
    job_id = int(json.loads(res.stdout)["job_id"])
    cluster.wait_state(job_id, "RUNNING")
    monkeypatch.delenv("GSHARE_ADDRESS", raising=False)
    monkeypatch.setenv("GSHARE_CONFIG", str(config))
    app = GshareTop(None)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.model.synced and job_id in app.model.jobs)
        assert app.model.jobs[job_id].user == "nobody"
        await pilot.press("2")
        view = app.query_one(JobsView)
        await settle(pilot, lambda: view.selected_job() == job_id)
        await pilot.press("c")
        await pilot.pause(0.3)
        await pilot.press("y")
        await settle(pilot, lambda: app.model.jobs[job_id].state == pb.CANCELLED, timeout=30)
    assert cluster.state(job_id) == "CANCELLED"


def logged(log: Path, node: str) -> bool:
    return f"refused an agent claiming node '{node}'" in log.read_text(errors="replace")


def test_an_agent_with_its_token_speaks_tls_on_the_client_port(
    site: Site, cluster_factory: Callable[..., Cluster]
) -> None:
    """The per-node token works on [server] tcp inside TLS ([agent] ca_file), and proves
    one node's name: the holder of node A's token cannot register as node B."""
    cluster = cluster_factory(config=server_config(site), agents=1)

    def token_of(node: str) -> Path:
        res = subprocess.run(
            [
                PY,
                "-m",
                "schedulerd.main",
                "--state-dir",
                str(cluster.root / "sched"),
                *("--node-token", node),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        path = site.root / f"{node}.token"
        path.write_text(res.stdout)
        return path

    bad = site.root / "bad.token"
    bad.write_text("not-the-token\n")

    def agent(name: str, token_file: Path) -> subprocess.Popen[bytes]:
        conf = site.root / f"agent-{name}.toml"
        conf.write_text(f'[agent]\nca_file = "{site.ca / "ca.pem"}"\ntoken_file = "{token_file}"\n')
        return subprocess.Popen(
            [
                *(PY, "-m", "nodeagent.main", "--address", tcp_address(cluster)),
                *("--node", name, "--state-dir", str(site.root / f"agent-{name}")),
                *("--fake-gpus", "1", "--config", str(conf)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    good = agent("gpu-t", token_of("gpu-t"))
    intruder = agent("intruder", bad)
    impostor = agent("impostor", token_of("gpu-t"))  # gpu-t's token, another name
    try:
        cluster.wait_nodes_up(2)
        log = cluster.root / "schedulerd.log"
        for name in ("intruder", "impostor"):  # refused before reading its stream
            wait_until(f"{name} refused", partial(logged, log, name))
        with cluster.client() as c:
            assert {n.name for n in c.nodes()} == {"node0", "gpu-t"}
    finally:
        for proc in (good, intruder, impostor):
            proc.terminate()
            proc.wait(10)


def test_bad_tls_files_stop_the_scheduler_with_the_key_named(site: Site) -> None:
    assert site.gshare_ca("node", "gpu-k").returncode == 0
    junk = site.root / "junk.pem"
    junk.write_bytes(b"\x00not a certificate\n")
    ca = site.ca
    cases = {
        (junk, junk): "[server.tls] cert_file is not a PEM certificate",
        (ca / "scheduler.pem", junk): "[server.tls] key_file is not an unencrypted PEM",
        (ca / "scheduler.pem", ca / "node-gpu-k.key"): "key_file is not the key of cert_file",
    }
    for i, ((cert, key), message) in enumerate(cases.items()):
        conf = site.root / f"bad-tls-{i}.toml"
        conf.write_text(
            f'[server]\ntcp = "127.0.0.1:0"\n[server.tls]\ncert_file = "{cert}"\n'
            f'key_file = "{key}"\n'
        )
        res = subprocess.run(
            [
                PY,
                "-m",
                "schedulerd.main",
                "--config",
                str(conf),
                "--state-dir",
                str(site.root / f"st{i}"),
                "--socket",
                str(site.root / f"s{i}.sock"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 1
        last = res.stderr.strip().splitlines()[-1]  # after the start-up log lines
        assert last.startswith("gshare-schedulerd: ") and message in last, res.stderr
