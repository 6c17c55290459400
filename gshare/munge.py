"""MUNGE credentials through libmunge (Debian's libmunge2), called with ctypes.

A credential is made by the local `munged` and says which uid and gid made it; the
scheduler's `munged` (same key) decodes it, once: a second decode of the same credential
is refused as replayed, and one older than its time to live (5 minutes by default) as
expired. gshare binds each credential to one request by its payload (`request_payload`).

libmunge rather than running `munge`/`unmunge`: no process per request, and the error
comes back as MUNGE's own code (replayed, expired, ...), not as text to parse. ctypes
rather than a PyPI binding: the library is the one Slurm sites already run, Debian keeps
it, and the four calls used here need no compiled extension of ours.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from dataclasses import dataclass

__all__ = [
    "DEFAULT_SOCKET",
    "HEADER",
    "Credential",
    "Munge",
    "MungeError",
    "request_payload",
]

HEADER = "x-gshare-munge"  # the gRPC metadata key a client's credential travels in
DEFAULT_SOCKET = "/run/munge/munge.socket.2"  # Debian's munged

_OPT_TTL = 4  # MUNGE_OPT_TTL in munge.h
_OPT_SOCKET = 8  # MUNGE_OPT_SOCKET

# munge_err_t values (munge.h) that say something about the credential itself
CRED_EXPIRED = 15
CRED_REWOUND = 16
CRED_REPLAYED = 17
SOCKET = 6  # munged is not there


class MungeError(Exception):
    """libmunge refused: `code` is MUNGE's error number, str() its message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Credential:
    uid: int
    gid: int
    payload: bytes


def request_payload(method: str, request: bytes) -> bytes:
    """What a client's credential carries: the method and the sha256 of the serialized
    request, so a credential seen on the wire cannot be used for any other request."""
    return f"gshare-v1 {method} {hashlib.sha256(request).hexdigest()}".encode()


_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None)
_libc.free.argtypes = [ctypes.c_void_p]


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("munge") or "libmunge.so.2"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise MungeError(-1, f"libmunge is not installed ({exc}); install libmunge2") from None
        lib.munge_ctx_create.restype = ctypes.c_void_p
        lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
        lib.munge_ctx_strerror.restype = ctypes.c_char_p
        lib.munge_ctx_strerror.argtypes = [ctypes.c_void_p]
        lib.munge_strerror.restype = ctypes.c_char_p
        lib.munge_strerror.argtypes = [ctypes.c_int]
        lib.munge_encode.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        lib.munge_decode.argtypes = [
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.POINTER(ctypes.c_uint32),
        ]
        _lib = lib
    return _lib


class Munge:
    """One `munged`, by its socket. Each call makes its own context: calls are blocking
    (a round trip to munged), so async code runs them in a thread."""

    def __init__(self, socket: str = "", ttl: int = 0) -> None:
        self.socket = socket or DEFAULT_SOCKET
        self.ttl = ttl  # seconds a credential made here stays good; 0: munged's default
        self._lib = _load()

    def _context(self) -> int:
        ctx = self._lib.munge_ctx_create()
        if not ctx:
            raise MungeError(5, "libmunge: out of memory")
        err = self._lib.munge_ctx_set(
            ctypes.c_void_p(ctx), ctypes.c_int(_OPT_SOCKET), ctypes.c_char_p(self.socket.encode())
        )
        if not err and self.ttl:
            err = self._lib.munge_ctx_set(
                ctypes.c_void_p(ctx), ctypes.c_int(_OPT_TTL), ctypes.c_int(self.ttl)
            )
        if err:
            self._lib.munge_ctx_destroy(ctx)
            raise MungeError(err, self._message(err, None))
        return int(ctx)

    def _message(self, err: int, ctx: int | None) -> str:
        text = self._lib.munge_ctx_strerror(ctx) if ctx else None
        text = text or self._lib.munge_strerror(err)
        message = (text or b"unknown MUNGE error").decode(errors="replace")
        return message if self.socket in message else f"{message} ({self.socket})"

    def encode(self, payload: bytes) -> str:
        ctx = self._context()
        cred = ctypes.c_void_p()
        try:
            err = self._lib.munge_encode(ctypes.byref(cred), ctx, payload, len(payload))
            if err:
                raise MungeError(err, self._message(err, ctx))
            return ctypes.string_at(cred).decode("ascii")
        finally:
            if cred.value:
                _libc.free(cred)
            self._lib.munge_ctx_destroy(ctx)

    def decode(self, credential: str) -> Credential:
        """The credential's uid, gid and payload; MungeError if it is not valid now
        (forged, for another key, expired, or decoded before)."""
        raw = credential.encode("ascii", errors="replace")
        if b"\0" in raw:
            raise MungeError(8, "invalid credential (a NUL byte)")
        ctx = self._context()
        buf = ctypes.c_void_p()
        length = ctypes.c_int()
        uid = ctypes.c_uint32()
        gid = ctypes.c_uint32()
        try:
            err = self._lib.munge_decode(
                raw,
                ctx,
                ctypes.byref(buf),
                ctypes.byref(length),
                ctypes.byref(uid),
                ctypes.byref(gid),
            )
            if err:
                raise MungeError(err, self._message(err, ctx))
            payload = ctypes.string_at(buf, length.value) if buf.value else b""
            return Credential(uid.value, gid.value, payload)
        finally:
            if buf.value:
                _libc.free(buf)
            self._lib.munge_ctx_destroy(ctx)
