"""The net under the gRPC edge: who calls (`Identities`), what a request's errors become
(status codes with a one-line reason, `_guard` and `ErrorBoundary`), and how large a
message the scheduler takes in and sends (`SERVER_OPTIONS`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from gshare.client import MAX_MESSAGE_BYTES
from gshare.limits import MAX_SPEC_BYTES, SCRIPT_CEILING
from schedulerd.errors import Refused
from schedulerd.jobstate import IllegalTransition
from schedulerd.peercred import Caller
from schedulerd.store import DatabaseFull

log = logging.getLogger(__name__)

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext[Any, Any]


class Identities(Protocol):
    """Who calls on one listener (schedulerd.callers: Unix socket, TCP, agents' TLS)."""

    def caller(self, context: Ctx) -> Caller: ...

    def may_be_agent(self, context: Ctx, node: str) -> bool: ...


async def _guard(context: Ctx, call: Awaitable[T]) -> T:
    """Map what a request's work raised to a status with a one-line reason."""
    try:
        return await call
    except Refused as exc:
        await context.abort(grpc.StatusCode[exc.code], str(exc))
    except IllegalTransition as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except DatabaseFull as exc:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("a request failed")
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
    raise AssertionError("unreachable")


INTERNAL_ERROR = "the scheduler failed to serve this request (its log has the details)"

# One limit for every gRPC message, on the scheduler, its clients and its agents
# (gshare.client.MAX_MESSAGE_BYTES); schedulerd.requests sizes jobs to fit it.
# What the scheduler takes in is smaller: the largest request is a submit (a script of at
# most SCRIPT_CEILING and a spec of at most MAX_SPEC_BYTES), so no caller, anonymous ones
# over TCP included, makes it decode more than this.
RECEIVE_BYTES = SCRIPT_CEILING + 4 * MAX_SPEC_BYTES
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", RECEIVE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class _Undecodable:
    """A request whose bytes are not the message the method takes."""


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor


class ErrorBoundary(_Interceptor):
    """The net under every unary handler: bytes that do not decode are INVALID_ARGUMENT,
    and an exception that escapes a handler is a one-line INTERNAL (with its traceback in
    the log), never gRPC's UNKNOWN with the exception's name."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # type: ignore[return-value]  # None: an unknown method
        behaviour: Callable[[object, Ctx], Awaitable[object]] = handler.unary_unary  # type: ignore[assignment]
        decode = handler.request_deserializer
        method = details.method

        def deserialize(data: bytes) -> object:
            try:
                return decode(data) if decode is not None else data
            except Exception:
                return _Undecodable()

        async def guarded(request: object, context: Ctx) -> object:
            if isinstance(request, _Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{method}: the request is not a valid message for this method",
                )
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except DatabaseFull as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except Exception:
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
            raise AssertionError("unreachable")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
