"""gshare-schedulerd: the central scheduler daemon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import signal
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from gshare import __version__, sdnotify
from gshare.api import gshare_pb2_grpc as pb_grpc
from gshare.config import Config, ConfigError, default_state_dir, load_config, with_mqtt_url
from gshare.logs import setup_logging
from gshare.metrics import MetricsServer
from gshare.munge import Munge, MungeError
from policies import PolicyError, make_policy
from schedulerd.agentservice import AgentService
from schedulerd.boundary import SERVER_OPTIONS, ErrorBoundary
from schedulerd.callers import ClientGate, LocalCallers, NodeCertCallers, TcpCallers, node_token
from schedulerd.daemon import Scheduler
from schedulerd.peercred import PeerCredFrontDoor
from schedulerd.server import ClientService
from schedulerd.store import Store, default_url
from schedulerd.watchers import Watchers

log = logging.getLogger("schedulerd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gshare-schedulerd",
        description="The gshare scheduler: keeps the queue, decides who gets which GPUs, "
        "and drives the node agents.",
    )
    p.add_argument(
        "--config", type=Path, help="config file (default: /etc/gshare/gshare.toml if present)"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where the database and socket live "
        "(default: $XDG_STATE_HOME/gshare, or /var/lib/gshare for root)",
    )
    p.add_argument(
        "--socket",
        type=Path,
        help="Unix socket for clients and local agents "
        "(default: [server] socket, else STATE_DIR/gshare.sock)",
    )
    p.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        help="also listen on TCP (overrides [server] tcp): for clients on other hosts (each "
        "request with a MUNGE credential, see [server] munge_socket) and for agents that "
        "show their node's token (--node-token)",
    )
    p.add_argument("--store-url", help="SQLAlchemy database URL (default: SQLite in STATE_DIR)")
    p.add_argument("--policy", help="scheduling policy (overrides [scheduler] policy)")
    p.add_argument(
        "--mqtt",
        metavar="URL",
        help="telemetry broker, mqtt://HOST:PORT or mqtts://HOST:PORT (overrides [mqtt] url)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics (overrides [server] metrics)",
    )
    p.add_argument(
        "--node-token",
        metavar="NODE",
        help="print the agent token of node NODE (for its [agent] token_file) and exit; "
        "made from STATE_DIR/agent.key, created if missing",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


async def serve(config: Config, args: argparse.Namespace, state_dir: Path) -> int:
    policy_name = args.policy or config.policy
    try:
        policy = make_policy(policy_name, config.policy_params)
    except PolicyError as exc:
        print(f"gshare-schedulerd: {exc}", file=sys.stderr)
        return 2
    url = args.store_url or config.store_url or default_url(state_dir)
    try:
        store = Store(url, config.sqlite_synchronous)
    except Exception as exc:
        print(f"gshare-schedulerd: cannot open the store {url}: {exc}", file=sys.stderr)
        return 1
    scheduler = Scheduler(config, store, policy)
    await scheduler.start()

    try:
        listeners = await open_listeners(config, args, state_dir, scheduler)
    except ListenError as exc:
        print(f"gshare-schedulerd: {exc}", file=sys.stderr)
        await scheduler.stop()
        store.close()
        return 1
    servers, door, watchers, health = listeners.servers, listeners.door, listeners.watchers, []
    for server in servers:
        await server.start()
    await door.start()
    for servicer in listeners.health:
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await servicer.set("gshare.v1.ClientService", health_pb2.HealthCheckResponse.SERVING)
        health.append(servicer)
    socket_path = door.path
    tcp = listeners.tcp
    log.info(
        "gshare-schedulerd %s: policy %s, store %s",
        __version__,
        policy.name,
        store.engine.url.render_as_string(hide_password=True),
    )
    log.info("listening on unix:%s%s", socket_path, f" and tcp {tcp}" if tcp else "")
    if listeners.agent_tcp:
        log.info("agents with a node certificate: tls %s", listeners.agent_tcp)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = None
    listen = args.metrics if args.metrics is not None else config.metrics_listen
    if listen:
        from schedulerd.metrics import registry_for

        try:
            metrics = MetricsServer(
                registry_for(scheduler, loop), listen, state_dir / "metrics.address"
            )
        except (OSError, ValueError) as exc:
            print(f"gshare-schedulerd: cannot serve metrics on {listen}: {exc}", file=sys.stderr)
            await door.stop()
            for server in servers:
                await server.stop(grace=None)
            await scheduler.stop()
            store.close()
            return 1
    sdnotify.notify(f"READY=1\nSTATUS=serving on unix:{socket_path}")
    # fed from the event loop while cycles keep completing: a wedged scheduler is restarted
    dog = sdnotify.start_watchdog(lambda: scheduler.alive())
    await stop.wait()
    log.info("shutting down")
    sdnotify.notify("STOPPING=1")
    await sdnotify.stop_task(dog)
    if metrics is not None:
        metrics.close()
    for servicer in health:
        await servicer.enter_graceful_shutdown()
    await door.stop()
    watchers.close()
    for server in servers:
        await server.stop(grace=1.0)
    await scheduler.stop()
    store.close()
    return 0


class ListenError(Exception):
    """A listener cannot be opened as configured (the message names the key)."""


@dataclass
class Listeners:
    door: PeerCredFrontDoor
    watchers: Watchers
    servers: list[grpc.aio.Server] = field(default_factory=list)
    health: list[Any] = field(default_factory=list)
    tcp: str = ""
    agent_tcp: str = ""


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ListenError(f"{key} {path}: {exc.strerror}") from None


def _pem_checked(cert: bytes, key: bytes | None, where: str) -> None:
    """A certificate (and its key) that TLS can use, or a ListenError naming the key:
    gRPC itself would only say that it failed to bind."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(cert)
    except ValueError:
        raise ListenError(f"{where} cert_file is not a PEM certificate") from None
    if key is None:
        return
    try:
        private = serialization.load_pem_private_key(key, None)
    except (ValueError, TypeError):
        raise ListenError(f"{where} key_file is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.DER, public) != certs[
        0
    ].public_key().public_bytes(serialization.Encoding.DER, public):
        raise ListenError(f"{where} key_file is not the key of cert_file")


def tls_credentials(config: Config, require_client_cert: bool) -> grpc.ServerCredentials:
    """The TCP listeners' TLS: the scheduler's certificate, and when client certificates
    are asked for, the cluster CA ([server.tls] ca_file) that must have signed them."""
    tls = config.tls
    key = _read(tls.key_file, "[server.tls] key_file")
    cert = _read(tls.cert_file, "[server.tls] cert_file")
    _pem_checked(cert, key, "[server.tls]")
    ca = _read(tls.ca_file, "[server.tls] ca_file") if tls.ca_file else None
    if ca is not None:
        try:
            _pem_checked(ca, None, "[server.tls]")
        except ListenError:
            raise ListenError("[server.tls] ca_file is not a PEM certificate") from None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca if require_client_cert else None,
        require_client_auth=require_client_cert,
    )


def _listen(server: grpc.aio.Server, where: str, key: str, creds: Any) -> int:
    try:
        if creds is None:
            return server.add_insecure_port(where)
        return server.add_secure_port(where, creds)
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {where} ({key}): {exc}") from None


def _health(server: grpc.aio.Server) -> Any:
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


async def open_listeners(
    config: Config, args: argparse.Namespace, state_dir: Path, scheduler: Scheduler
) -> Listeners:
    """One gRPC server per way in, each with its own way of knowing the caller: the Unix
    socket (through the peer-credential door), `[server] tcp` (MUNGE, TLS) and
    `[server] agent_tcp` (agents with a node certificate)."""
    watchers = Watchers(scheduler)
    local = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[ErrorBoundary()])
    backend_port = local.add_insecure_port("127.0.0.1:0")
    socket_path = args.socket or (
        Path(config.socket) if config.socket else state_dir / "gshare.sock"
    )
    door = PeerCredFrontDoor(socket_path, backend_port)
    out = Listeners(door, watchers, [local], [_health(local)])
    tcp = args.tcp or config.tcp
    agent_key = load_agent_key(state_dir) if tcp else b""
    local_ids = LocalCallers(door, agent_key)
    pb_grpc.add_ClientServiceServicer_to_server(
        ClientService(scheduler, local_ids, watchers), local
    )
    pb_grpc.add_AgentServiceServicer_to_server(AgentService(scheduler, local_ids), local)
    if tcp:
        munge = None
        if config.munge_socket:
            try:
                munge = Munge(config.munge_socket)
            except MungeError as exc:
                raise ListenError(f"[server] munge_socket: {exc}") from None
            if not Path(config.munge_socket).exists():
                log.warning("[server] munge_socket %s is not there (yet)", config.munge_socket)
        if not config.tls.enabled:
            log.warning(
                "[server] tcp %s has no TLS ([server.tls]): requests and answers (job "
                "scripts and environments too) can be read on the network; MUNGE credentials "
                "cannot be reused, and agent tokens are refused on it",
                tcp,
            )
        # without MUNGE, readers over TCP show a client certificate of the cluster's CA
        creds = (
            tls_credentials(config, munge is None and bool(config.tls.ca_file))
            if config.tls.enabled
            else None
        )
        remote = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[ErrorBoundary(), ClientGate(munge, config.munge_root)],
        )
        port = _listen(remote, tcp, "[server] tcp", creds)
        tcp_ids = TcpCallers(agent_key, tls=config.tls.enabled)
        pb_grpc.add_ClientServiceServicer_to_server(
            ClientService(scheduler, tcp_ids, watchers), remote
        )
        pb_grpc.add_AgentServiceServicer_to_server(AgentService(scheduler, tcp_ids), remote)
        out.health.append(_health(remote))
        out.servers.append(remote)
        # port 0 asks for any free port: say which one it got (tests and `gshare up` read it)
        out.tcp = f"{tcp.rpartition(':')[0]}:{port}"
        write_private(state_dir / "tcp.address", out.tcp + "\n")
    if config.agent_tcp:
        agents = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[ErrorBoundary()])
        port = _listen(
            agents, config.agent_tcp, "[server] agent_tcp", tls_credentials(config, True)
        )
        pb_grpc.add_AgentServiceServicer_to_server(
            AgentService(scheduler, NodeCertCallers()), agents
        )
        out.servers.append(agents)
        out.agent_tcp = f"{config.agent_tcp.rpartition(':')[0]}:{port}"
        write_private(state_dir / "agent_tcp.address", out.agent_tcp + "\n")
    return out


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, replacing what was there at once."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_agent_key(state_dir: Path) -> bytes:
    """The cluster's agent key (STATE_DIR/agent.key, made on first use), from which each
    node's token is derived. An old cluster-wide agent.token is no longer accepted."""
    key_file = state_dir / "agent.key"
    if not key_file.exists():
        # made beside it, then linked into place: if two make one at once, both read the
        # one that won (os.link does not replace), so every token comes from the same key
        tmp = state_dir / f"agent.key.{os.getpid()}"
        write_private(tmp, secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, key_file)
        tmp.unlink()
        if (state_dir / "agent.token").exists():
            log.warning(
                "%s is no longer accepted: each node now has its own token; print one with "
                "gshare-schedulerd --node-token NODE",
                state_dir / "agent.token",
            )
    return key_file.read_text().strip().encode()


class AlreadyRunning(Exception):
    pass


def lock_state(paths: list[Path]) -> list[int]:
    """Take an exclusive lock beside each of `paths` (the state dir, the socket, the SQLite
    file), or raise AlreadyRunning naming the scheduler that holds it. The locks are held
    until the process ends, by the kernel: a crash never leaves a stale one behind."""
    fds: list[int] = []
    for path in dict.fromkeys(paths):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_nlink != 1 or not stat.S_ISREG(st.st_mode):
            os.close(fd)  # another user's file, or a link to one: neither ours to write
            for held in fds:
                os.close(held)
            raise AlreadyRunning(
                f"{path} is not the scheduler's own lock file (uid {st.st_uid}, "
                f"{st.st_nlink} links); remove it"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            for held in fds:
                os.close(held)
            raise AlreadyRunning(
                f"another gshare-schedulerd (pid {holder}) already runs here: {path} is locked"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        fds.append(fd)
    return fds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level)
    except ValueError as exc:
        print(f"gshare-schedulerd: {exc}", file=sys.stderr)
        return 2
    try:
        config = with_mqtt_url(load_config(args.config), args.mqtt)
    except ConfigError as exc:
        print(f"gshare-schedulerd: {exc}", file=sys.stderr)
        return 2
    state_dir = args.state_dir or default_state_dir()
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        print(
            f"gshare-schedulerd: cannot create state dir {state_dir}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    if args.node_token is not None:
        if not args.node_token:
            print("gshare-schedulerd: --node-token needs a node name", file=sys.stderr)
            return 2
        print(node_token(load_agent_key(state_dir), args.node_token))
        return 0
    socket_path = args.socket or (
        Path(config.socket) if config.socket else state_dir / "gshare.sock"
    )
    locks = [state_dir / "schedulerd.lock", socket_path.with_name(socket_path.name + ".lock")]
    url = args.store_url or config.store_url or default_url(state_dir)
    if url.startswith("sqlite:///") and ":memory:" not in url and len(url) > len("sqlite:///"):
        db = Path(url[len("sqlite:///") :])
        locks.append(db.with_name(db.name + ".lock"))
    try:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        held = lock_state(locks)
    except AlreadyRunning as exc:
        print(f"gshare-schedulerd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gshare-schedulerd: cannot lock {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(serve(config, args, state_dir))
        return 0
    finally:
        for fd in held:
            os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
