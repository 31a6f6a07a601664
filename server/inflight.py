"""Counting the requests a server has accepted, so shutdown can wait for exactly those.

`grpc.aio.Server.stop(grace)` waits for every open RPC, including health watches and idle streams that never
end on their own, so it would always use the whole grace period. Instead the server counts unary RPCs in
flight with an interceptor (which also covers the KServe API), streams count the items they work on, and
shutdown waits until that count is zero before stopping gRPC.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from resnet_serve.server.errors import malformed


class InFlight(AbstractContextManager[None]):
    """A count of requests being worked on; `with tracker:` around each one. Used on the event loop only."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.count -= 1


if TYPE_CHECKING:  # the stubs are generic, the runtime classes are not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor


class _Malformed:
    """A request that did not deserialize: gRPC would answer the deserializer's exception UNKNOWN and log a
    traceback, so the deserializer returns this instead and the handler answers INVALID_ARGUMENT."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return parse


class InFlightInterceptor(_Interceptor):
    """Counts every unary-unary RPC while its handler runs (streams count their own items), and answers a
    unary request that does not deserialize with INVALID_ARGUMENT."""

    def __init__(self, tracker: InFlight) -> None:
        self._tracker = tracker
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:  # every call after a method's first
            return cached[1]
        if (
            handler is None
            or handler.unary_unary is None
            or not inspect.iscoroutinefunction(handler.unary_unary)
        ):
            wrapped = handler
        else:
            wrapped = self._wrap(handler)
        if handler is not None:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Handler) -> Handler:
        inner: Any = handler.unary_unary  # an async servicer method (checked by the caller)
        tracker = self._tracker

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Malformed):
                error = malformed(request.reason)
                await context.abort(error.code, error.message)
            with tracker:
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
