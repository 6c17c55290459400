"""Who is calling, on each of the scheduler's listeners.

- The Unix socket: the kernel says (SO_PEERCRED, through schedulerd.peercred's door).
- `[server] tcp`: each client request carries a MUNGE credential made by the caller's
  `munged` (gshare.munge); `ClientGate` decodes it with the scheduler's own `munged`
  before the handler runs, checks that it was made for this very request (method and
  sha256 of its bytes), and the credential's uid is the caller. A caller with no
  credential but a client certificate of the cluster's CA (mutual TLS, when the scheduler
  has no MUNGE) may read. Anything else is UNAUTHENTICATED, before the handler runs.
- `[server] agent_tcp`: mutual TLS; an agent's certificate names its node
  (OU=gshare-node, CN=NODE), so it can register as that node and no other.
- Agents over `[server] tcp` may still show their node's token (an HMAC of its name).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from gshare.munge import (
    CRED_EXPIRED,
    CRED_REPLAYED,
    CRED_REWOUND,
    HEADER,
    SOCKET,
    Munge,
    MungeError,
    request_payload,
)
from schedulerd.peercred import ANONYMOUS, Caller, PeerCredFrontDoor, user_name

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]

AGENT_TOKEN_HEADER = "x-gshare-agent-token"
AGENT_NODE_HEADER = "x-gshare-node"  # the node an agent over TCP registers as, shown up front
NODE_UNIT = "gshare-node"  # the OU of a node's certificate (gshare ca node NAME)
READER_UNIT = "gshare-reader"  # the OU of a reader's certificate (gshare ca reader NAME)
CLIENT_SERVICE = "/gshare.v1.ClientService/"
MAX_CREDENTIAL = 4096  # a MUNGE credential of gshare's payload is about 200 characters

# the caller of the request being served on the TCP listener, set by ClientGate
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def node_token(key: bytes, node: str) -> str:
    """The credential of one node's agent: an HMAC of its name under the cluster's agent
    key. It proves that node's name and no other, so a leaked token lets its holder
    register as that node alone."""
    return hmac.new(key, b"gshare-node:" + node.encode(), hashlib.sha256).hexdigest()


def _token_proves(context: Ctx, agent_key: bytes, node: str) -> bool:
    if not agent_key:
        return False
    sent = dict(context.invocation_metadata() or ()).get(AGENT_TOKEN_HEADER, "")
    return isinstance(sent, str) and hmac.compare_digest(
        sent.encode(), node_token(agent_key, node).encode()
    )


def certificate_names(context: Ctx) -> tuple[str, str] | None:
    """(OU, CN) of the verified client certificate of a mutual-TLS peer, else None."""
    auth = context.auth_context()
    pem = next(iter(auth.get("x509_pem_cert") or ()), b"")
    if not pem:
        return None
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        subject = x509.load_pem_x509_certificate(pem).subject
    except ValueError:
        return None

    def one(oid: x509.ObjectIdentifier) -> str:
        values = subject.get_attributes_for_oid(oid)
        return str(values[0].value) if len(values) == 1 else ""

    return one(NameOID.ORGANIZATIONAL_UNIT_NAME), one(NameOID.COMMON_NAME)


class LocalCallers:
    """The Unix socket: peers by SO_PEERCRED. Root and the scheduler's own user may
    register any node's agent."""

    def __init__(self, door: PeerCredFrontDoor, agent_key: bytes = b"") -> None:
        self.door = door
        self.agent_key = agent_key

    def caller(self, context: Ctx) -> Caller:
        return self.door.caller_for(context.peer()) or ANONYMOUS

    def may_be_agent(self, context: Ctx, node: str) -> bool:
        caller = self.caller(context)
        if not caller.anonymous:
            return caller.uid in (0, os.geteuid())
        return _token_proves(context, self.agent_key, node)


class TcpCallers:
    """`[server] tcp`: clients as ClientGate found them; agents by their node's token, and
    only inside TLS: a token is a reusable secret, so one sent in clear is never taken."""

    def __init__(self, agent_key: bytes = b"", tls: bool = True) -> None:
        self.agent_key = agent_key
        self.tls = tls

    def caller(self, context: Ctx) -> Caller:
        return _CALLER.get() or ANONYMOUS

    def may_be_agent(self, context: Ctx, node: str) -> bool:
        if not self.tls:
            log.warning(
                "refused an agent for node %r from %s: agent tokens are taken only over TLS "
                "([server.tls])",
                node,
                context.peer(),
            )
            return False
        return _token_proves(context, self.agent_key, node)


class NodeCertCallers:
    """`[server] agent_tcp`: an agent is the node its certificate names."""

    def caller(self, context: Ctx) -> Caller:
        return ANONYMOUS

    def may_be_agent(self, context: Ctx, node: str) -> bool:
        names = certificate_names(context)
        return names is not None and names[0] == NODE_UNIT and names[1] == node


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor


class _Signed:
    """A request with the payload its credential must carry (from its bytes as received)."""

    __slots__ = ("expected", "message")

    def __init__(self, expected: bytes, message: object) -> None:
        self.expected = expected
        self.message = message


def _refusal(exc: MungeError) -> str:
    if exc.code == CRED_REPLAYED:
        return "the MUNGE credential was used before (a replay); each request needs its own"
    if exc.code == CRED_EXPIRED:
        return "the MUNGE credential has expired (are the hosts' clocks in step?)"
    if exc.code == CRED_REWOUND:
        return "the MUNGE credential was made in the future (are the hosts' clocks in step?)"
    return f"the MUNGE credential does not decode here: {exc}"


class ClientGate(_Interceptor):
    """Every ClientService request on the TCP listener: the caller is authenticated before
    the handler runs, or the request is refused UNAUTHENTICATED with the reason."""

    def __init__(self, munge: Munge | None, munge_root: bool = False) -> None:
        self.munge = munge
        self.munge_root = munge_root  # root on any host with the key is root here

    async def caller_of(self, context: Ctx, expected: bytes) -> Caller:
        sent = dict(context.invocation_metadata() or ()).get(HEADER)
        if not sent or self.munge is None:
            names = certificate_names(context)
            if names is not None and names[0] == READER_UNIT and names[1]:
                return Caller(f"cert:{names[1]}", -1, -1, via="tls")  # a reader
            if names is not None:  # the CA's, but not a reader's (a node's, say)
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"a client certificate reads here only with OU={READER_UNIT} "
                    f"(gshare ca reader NAME); this one has OU={names[0]!r}",
                )
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "requests over TCP need a MUNGE credential (is munged running on your host?)"
                if self.munge is not None
                else "this scheduler takes no MUNGE credentials ([server] munge_socket is "
                "not set): over TCP it serves only readers with a client certificate of its CA",
            )
        assert self.munge is not None
        if not isinstance(sent, str) or len(sent) > MAX_CREDENTIAL:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "the MUNGE credential is not one (too long)"
            )
        assert isinstance(sent, str)
        loop = asyncio.get_running_loop()
        try:
            cred = await loop.run_in_executor(None, self.munge.decode, sent)
        except MungeError as exc:
            if exc.code == SOCKET:
                log.error("cannot reach munged: %s", exc)
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "the scheduler cannot reach its munged"
                )
            log.warning("refused a MUNGE credential from %s: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _refusal(exc))
            raise AssertionError("unreachable") from None
        if not hmac.compare_digest(cred.payload, expected):
            log.warning(
                "refused a MUNGE credential of uid %d from %s: made for another request",
                cred.uid,
                context.peer(),
            )
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the MUNGE credential was made for another request",
            )
        if cred.uid == 0 and not self.munge_root:
            log.warning("refused a MUNGE credential of root from %s", context.peer())
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "root is not taken over MUNGE here ([server] munge_root = false): act as "
                "root on the scheduler's host, or as yourself",
            )
        return Caller(user_name(cred.uid), cred.uid, cred.gid, via="munge")

    def _refusal_up_front(self, details: grpc.HandlerCallDetails) -> str | None:
        """Why a request is refused from its metadata alone (no credential, or one too long
        to be one), so its body is neither parsed nor hashed; None: read on."""
        if self.munge is None:
            return None  # readers show a certificate: ClientGate looks at it per request
        sent = [v for k, v in details.invocation_metadata or () if k == HEADER]
        if not sent:
            return "requests over TCP need a MUNGE credential (is munged running on your host?)"
        if len(sent) > 1 or not isinstance(sent[0], str) or len(sent[0]) > MAX_CREDENTIAL:
            return "the MUNGE credential is not one (too long)"
        return None

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(details)
        method = details.method
        if handler is None or not method.startswith(CLIENT_SERVICE):
            return handler  # type: ignore[return-value]  # agents, health: not clients
        refusal = self._refusal_up_front(details)
        if refusal is not None:
            return _refusing(handler, refusal)
        decode = handler.request_deserializer

        def deserialize(data: bytes) -> _Signed:
            # raises on bytes that are not the message: ErrorBoundary answers that
            return _Signed(request_payload(method, data), decode(data) if decode else data)

        if handler.unary_unary is not None:
            unary: Callable[[object, Ctx], Awaitable[object]] = handler.unary_unary  # type: ignore[assignment]

            async def checked(request: _Signed, context: Ctx) -> object:
                token = _CALLER.set(await self.caller_of(context, request.expected))
                try:
                    return await unary(request.message, context)
                finally:
                    _CALLER.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                checked,
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream: Callable[[object, Ctx], AsyncIterator[object]] = handler.unary_stream  # type: ignore[assignment]

            async def checked_stream(request: _Signed, context: Ctx) -> AsyncIterator[object]:
                _CALLER.set(await self.caller_of(context, request.expected))
                async for item in stream(request.message, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                checked_stream,
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        return handler


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any], why: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that answers UNAUTHENTICATED without decoding the request's bytes."""

    async def refuse(request: bytes, context: Ctx) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    async def refuse_stream(request: bytes, context: Ctx) -> AsyncIterator[object]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        yield None  # pragma: no cover  (a generator: abort raises)

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)
