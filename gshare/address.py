"""Where the scheduler is: --address, GSHARE_ADDRESS, or the local socket."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path

from gshare.paths import SYSTEM_SOCKET, default_state_dir


class AddressError(ValueError):
    pass


def default_socket() -> Path:
    """The system scheduler's socket if there is one, else the one `gshare up` makes."""
    if SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return default_state_dir() / "gshare.sock"


def resolve(address: str | None) -> str:
    """A gRPC target: 'unix:PATH' or 'HOST:PORT'."""
    addr = address or os.environ.get("GSHARE_ADDRESS") or f"unix:{default_socket()}"
    if addr.startswith("unix:"):
        path = addr[5:]
        if not path:
            raise AddressError("empty Unix socket path in address 'unix:'")
        return f"unix:{Path(path).absolute()}"
    if addr.startswith("/"):
        return f"unix:{addr}"
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise AddressError(f"bad scheduler address {addr!r} (use unix:PATH or HOST:PORT)")
    return addr


def route_address(target: str) -> str:
    """This host's address on its route to the scheduler at `target` (a resolved gRPC
    target): the source address the kernel picks for it (connecting a UDP socket sends
    nothing). The scheduler on a Unix socket is on this host: 127.0.0.1. Without a route,
    the host's name."""
    if target.startswith("unix:"):
        return "127.0.0.1"
    host, _, port = target.rpartition(":")
    try:
        family, _, _, _, where = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_DGRAM
        )[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(where)
            return str(probe.getsockname()[0])
    except (OSError, ValueError):
        return socket.gethostname()


def host_name_ok(value: str) -> bool:
    """An IP address (v4 or v6) or a DNS name: what MASTER_ADDR and a hostfile can carry."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    return 0 < len(value) <= 253 and all(
        re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label)
        for label in value.split(".")
    )
