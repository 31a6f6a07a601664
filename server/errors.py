"""The one error type the server raises across its layers, and the one boundary where errors become statuses.

Every layer (batcher, model manager, KServe codec) raises `ServeError`, so a status code is decided where the
failure is understood; the contract layer raises `formats.errors.InvalidInput` for bad data. `status_of` is
the one mapping from an exception to the status a client gets, and the servicer methods are wrapped in
`boundary` (unary) or `stream_boundary` (streams), so no request is ever left without an answer and no
traceback ever reaches a client. Streams that answer per item (ClassifyStream, ModelStreamInfer) map each
item's failure with `status_of` too.

Messages are bounded: `echo` shows a client's value (a model or input name, a datatype, a shape) in at most
`MAX_ECHO` characters, and a `ServeError` keeps at most `MAX_MESSAGE_BYTES` of its message, whatever it
echoes. A status message travels as percent-encoded UTF-8 in the grpc-message trailer, and a client refuses
trailers over 8 KiB: a 100 KiB model name echoed whole made a NOT_FOUND reach the client as
RESOURCE_EXHAUSTED ("metadata size exceeds hard limit", issue #15).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from resnet_serve.formats.errors import InvalidInput
from resnet_serve.server.frontend import CallContext, call_context
from resnet_serve.server.outcomes import OF_STATUS, Outcome

log = logging.getLogger(__name__)

MAX_ECHO = 256  # characters of a client's value shown in a message
MAX_MESSAGE_BYTES = 2048  # UTF-8 bytes of a message: at most 6 KiB once percent-encoded


def echo(value: object) -> str:
    """A client's value for a message: its repr, cut to MAX_ECHO characters with "…(N chars)" added (N: the
    length of a string, else of the repr)."""
    shown = repr(value)
    if len(shown) <= MAX_ECHO:
        return shown
    size = len(value) if isinstance(value, str) else len(shown)
    return f"{shown[:MAX_ECHO]}…({size} chars)"


def _bounded(message: str) -> str:
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    return encoded[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore") + f"…({len(message)} chars)"


class ServeError(Exception):
    """A request failed with a known gRPC status; `message` is one line meant for the client."""

    def __init__(self, code: grpc.StatusCode, message: str, outcome: Outcome | None = None) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self._outcome = outcome

    @property
    def outcome(self) -> Outcome:
        """The metrics outcome label for this error: the one it was raised with, else its status's."""
        return self._outcome or OF_STATUS.get(self.code, Outcome.BACKEND_ERROR)

    def __repr__(self) -> str:
        return f"ServeError({self.code.name}, {self.message!r})"


def not_found(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.NOT_FOUND, message)


def invalid_argument(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.INVALID_ARGUMENT, message)


def unavailable(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.UNAVAILABLE, message)


def queue_full(message: str) -> ServeError:
    """UNAVAILABLE because the model's queue is full (overload), counted apart from other refusals."""
    return ServeError(grpc.StatusCode.UNAVAILABLE, message, outcome=Outcome.QUEUE_FULL)


def too_large(message: str) -> ServeError:
    """RESOURCE_EXHAUSTED for an answer the server will not send: over the gRPC message limit. Counted as
    the request's fault (outcome invalid_input: the same request fails again, unlike a full queue)."""
    return ServeError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, outcome=Outcome.INVALID_INPUT)


def malformed(reason: str, what: str = "request") -> ServeError:
    """A request that did not deserialize (protobuf's DecodeError): INVALID_ARGUMENT, never gRPC's UNKNOWN.
    The one answer for it, wherever it is caught: a unary request (server/inflight.py), an inference
    request or stream item (server/kserve/wire.py, then the service), another stream's item (`status_of`)."""
    return invalid_argument(f"malformed {what}: {reason}")


def deadline_exceeded(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def cancelled(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.CANCELLED, message)


def internal(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.INTERNAL, message)


def refusal_outcome(error: ServeError) -> Outcome:
    """The access-log outcome of a request refused before it reached a model version: NOT_FOUND is what the
    metrics count as `not_found` (ServerMetrics.unknown_model), the rest as their metrics outcome."""
    return Outcome.NOT_FOUND if error.code == grpc.StatusCode.NOT_FOUND else error.outcome


def outcome_of(exc: BaseException) -> Outcome:
    """The metrics outcome for an exception a request ended with (unexpected ones are backend errors)."""
    if isinstance(exc, ServeError):
        return exc.outcome
    if isinstance(exc, InvalidInput):
        return Outcome.INVALID_INPUT
    if isinstance(exc, asyncio.CancelledError):
        return Outcome.CANCELLED
    return Outcome.BACKEND_ERROR


def status_of(exc: Exception, rpc: str) -> ServeError:
    """The status an exception answers `rpc` with. An unexpected one is a bug or an unforeseen failure: it is
    logged once, with its traceback, and answered INTERNAL without one."""
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, InvalidInput):
        return invalid_argument(str(exc))
    if isinstance(exc, DecodeError):  # a stream item that did not deserialize; else gRPC answers UNKNOWN
        return malformed(str(exc))
    log.error("%s failed unexpectedly", rpc, exc_info=exc)
    return internal(f"{rpc} failed inside the server; the server log has the details")


Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")
# What grpc.aio passes a servicer method, or a CallContext already (HTTP's, server/http/context.py).
AnyContext = grpc.aio.ServicerContext[Any, Any] | CallContext


def boundary(
    rpc: Callable[[Servicer, Request, CallContext], Awaitable[Response]],
) -> Callable[[Servicer, Request, AnyContext], Awaitable[Response]]:
    """Wrap a unary servicer method: it gets its call as a CallContext (server/frontend.py), and whatever
    it raises ends the call with `status_of`'s status."""
    name = rpc.__name__

    @functools.wraps(rpc)
    async def method(self: Servicer, request: Request, context: AnyContext) -> Response:
        call = call_context(context)
        try:
            return await rpc(self, request, call)
        except Exception as exc:
            error = status_of(exc, name)
        await call.abort(error.code, error.message)

    return method


def stream_boundary(
    rpc: Callable[[Servicer, Request, CallContext], AsyncIterator[Response]],
) -> Callable[[Servicer, Request, AnyContext], AsyncIterator[Response]]:
    """Wrap a streaming servicer method: a failure of the stream itself (not of one item, which the method
    answers in-stream) ends the call with `status_of`'s status."""
    name = rpc.__name__

    @functools.wraps(rpc)
    async def method(self: Servicer, requests: Request, context: AnyContext) -> AsyncIterator[Response]:
        call = call_context(context)
        answers = rpc(self, requests, call)
        try:
            async for answer in answers:
                yield answer
            return
        except Exception as exc:
            error = status_of(exc, name)
        finally:
            await answers.aclose()  # type: ignore[attr-defined]
        await call.abort(error.code, error.message)

    return method
