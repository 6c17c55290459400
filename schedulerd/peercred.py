"""Who is calling: SO_PEERCRED on the Unix socket, carried to the gRPC handlers.

gRPC's Python server does not expose a Unix peer's credentials. So the public Unix socket
is served by this small asyncio front door: it reads each connection's SO_PEERCRED,
opens a loopback connection to the gRPC server's private port, remembers that
connection's local address -> credentials, and then copies bytes both ways. A handler
maps `context.peer()` back to the caller. A loopback connection that did not come
through the front door has no entry and is treated as anonymous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_CRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    uid: int
    gid: int
    pid: int = 0
    via: str = "unix"

    @property
    def anonymous(self) -> bool:
        return self.uid < 0


ANONYMOUS = Caller("anonymous", -1, -1, via="tcp")


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


class _Pipe(asyncio.Protocol):
    """One direction's sink; `peer` is the transport on the other side."""

    def __init__(self, on_lost: asyncio.Future[None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.buffer: list[bytes] = []
        self.on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.buffer.append(data)
        else:
            self.peer.write(data)

    def eof_received(self) -> bool | None:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()
        if self.on_lost is not None and not self.on_lost.done():
            self.on_lost.set_result(None)

    # flow control: when our transport's buffer is full, stop reading from the other side
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


class PeerCredFrontDoor:
    def __init__(self, path: Path, backend_port: int, mode: int = 0o666) -> None:
        self.path = path
        self.backend_port = backend_port
        self.mode = mode
        self.callers: dict[tuple[str, int], Caller] = {}
        self._server: asyncio.Server | None = None
        self._made: tuple[int, int] = (-1, -1)  # the socket file we created (device, inode)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.stat().st_mode):
                self.path.unlink()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._front, path=str(self.path))
        os.chmod(self.path, self.mode)
        st = self.path.stat()
        self._made = (st.st_dev, st.st_ino)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        # only the socket this door made: never one that another process has put there since
        with contextlib.suppress(FileNotFoundError):
            st = self.path.stat()
            if (st.st_dev, st.st_ino) == self._made:
                self.path.unlink()

    def caller_for(self, peer: str) -> Caller | None:
        """`peer` as gRPC gives it, e.g. 'ipv4:127.0.0.1:53124'."""
        if not peer.startswith("ipv4:"):
            return None
        host, _, port = peer[5:].rpartition(":")
        try:
            return self.callers.get((host, int(port)))
        except ValueError:
            return None

    def _front(self) -> asyncio.Protocol:
        return _Front(self)


class _Front(_Pipe):
    def __init__(self, door: PeerCredFrontDoor) -> None:
        super().__init__()
        self.door = door
        self.key: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        pid, uid, gid = _CRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
        )
        self.caller = Caller(user_name(uid), uid, gid, pid)
        asyncio.get_running_loop().create_task(self._connect_backend())

    async def _connect_backend(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        try:
            back_transport, back = await loop.create_connection(
                _Pipe, "127.0.0.1", self.door.backend_port
            )
        except OSError as exc:
            log.warning("front door: cannot reach the gRPC server: %s", exc)
            self.transport.close()
            return
        assert isinstance(back, _Pipe)
        host, port = back_transport.get_extra_info("sockname")[:2]
        self.key = (host, port)
        self.door.callers[self.key] = self.caller
        back.peer = self.transport
        self.peer = back_transport
        for chunk in self.buffer:
            back_transport.write(chunk)
        self.buffer.clear()
        if self.transport.is_closing():
            back_transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.key is not None:
            self.door.callers.pop(self.key, None)
