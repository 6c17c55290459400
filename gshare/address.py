"""Where the scheduler is: --address, GSHARE_ADDRESS, or the local socket."""

from __future__ import annotations

import os
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
