"""What MUNGE costs a remote request: encode + decode time, and a request over TCP+TLS
with a credential against a plain one on the same channel, in the same run.

Starts two real munged (the user's host and the scheduler's, one key; tests/munge.py), a
CA (gshare ca), and a schedulerd with [server] tcp, [server.tls] and munge_socket, then
measures, each N times in a row (one request in flight, so the figure is latency):

  1. munge_encode alone (the client's local munged), and munge_decode alone (the
     scheduler's munged; each credential once);
  2. Health/Check over TCP+TLS: a plain request, no credential (the baseline);
  3. ListNodes over TCP+TLS with a MUNGE credential (gshare.client.Client, as gsub);
  4. ListNodes over the Unix socket (peer credentials; no MUNGE).

Usage: .venv/bin/python bench/auth.py [--requests 500]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from gshare.client import Client  # noqa: E402
from gshare.clientconfig import ClientConfig  # noqa: E402
from gshare.munge import Munge, request_payload  # noqa: E402
from tests.cluster import BIN, Cluster  # noqa: E402
from tests.munge import Munged, make_key  # noqa: E402


def timed(n: int, fn: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def line(name: str, values: list[float]) -> float:
    p50 = statistics.median(values)
    p99 = sorted(values)[min(len(values) - 1, int(0.99 * len(values)))]
    print(f"{name:<44} p50 {1000 * p50:7.3f} ms   p99 {1000 * p99:7.3f} ms   ({len(values)})")
    return p50


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=500)
    n = p.parse_args().requests
    with tempfile.TemporaryDirectory(prefix="gshare-bench-auth-") as tmp:
        root = Path(tmp)
        key = make_key(root / "munge.key")
        login, sched = Munged(root / "m-login", key), Munged(root / "m-sched", key)
        cluster: Cluster | None = None
        try:
            login.start()
            sched.start()
            ca = root / "ca"
            for args in (["init"], ["scheduler", "127.0.0.1"]):
                subprocess.run(
                    [str(BIN / "gshare"), "ca", *args, "--dir", str(ca)], check=True, timeout=60
                )
            (root / "c").mkdir()
            cluster = Cluster(
                root / "c",
                agents=0,
                config=(
                    f'[server]\ntcp = "127.0.0.1:0"\nmunge_socket = "{sched.socket}"\n'
                    "munge_root = true\n"  # the bench's credentials are root's
                    f'[server.tls]\ncert_file = "{ca}/scheduler.pem"\n'
                    f'key_file = "{ca}/scheduler.key"\n'
                ),
            ).start()
            target = (cluster.root / "sched" / "tcp.address").read_text().strip()

            user, server = Munge(str(login.socket)), Munge(str(sched.socket))
            payload = request_payload("/gshare.v1.ClientService/ListNodes", b"")
            creds: list[str] = []
            enc = line(
                "munge encode (client's munged)",
                timed(n, lambda: creds.append(user.encode(payload))),
            )
            it = iter(creds)
            dec = line(
                "munge decode (scheduler's munged)", timed(n, lambda: server.decode(next(it)))
            )

            tls = grpc.ssl_channel_credentials((ca / "ca.pem").read_bytes())
            with grpc.secure_channel(target, tls) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                health.Check(health_pb2.HealthCheckRequest())
                plain = line(
                    "Health/Check over TCP+TLS, no credential",
                    timed(n, lambda: health.Check(health_pb2.HealthCheckRequest())),
                )
            settings = ClientConfig(
                scheduler=target, ca_file=str(ca / "ca.pem"), munge_socket=str(login.socket)
            )
            with Client(target, settings=settings) as c:
                c.nodes()
                munged = line("ListNodes over TCP+TLS with MUNGE", timed(n, c.nodes))
            with Client(cluster.address) as c:
                c.nodes()
                unix = line("ListNodes over the Unix socket", timed(n, c.nodes))
            print(
                f"\nencode+decode {1000 * (enc + dec):.3f} ms a request; a MUNGE request over "
                f"TCP+TLS takes {munged / plain:.1f}x a plain one on the same channel "
                f"(+{1000 * (munged - plain):.3f} ms), {munged / unix:.1f}x one over the "
                "Unix socket"
            )
        finally:
            if cluster is not None:
                cluster.stop()
            login.stop()
            sched.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
