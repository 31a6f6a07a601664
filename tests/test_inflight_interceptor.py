"""The in-flight interceptor wraps each unary method once and remembers it: a method's first call pays for the
look at its handler, later calls find it in a dict. What it remembers is bounded by the server's own methods:
a call to a method the server does not have is not remembered (any client may send any method name)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from resnet_serve.server.inflight import InFlight, InFlightInterceptor


async def _echo(request: Any, context: Any) -> Any:
    return request


def _details(method: str) -> grpc.HandlerCallDetails:
    class Details(grpc.HandlerCallDetails):
        def __init__(self) -> None:
            self.method = method
            self.invocation_metadata = ()

    return Details()


def test_a_unary_method_is_wrapped_once_and_counted_in_flight_while_it_runs() -> None:
    tracker = InFlight()
    interceptor = InFlightInterceptor(tracker)
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    seen: list[int] = []

    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return handler

    async def main() -> None:
        first = await interceptor.intercept_service(continuation, _details("/s/M"))
        second = await interceptor.intercept_service(continuation, _details("/s/M"))
        assert first is second and first is not handler

        async def inner(request: Any, context: Any) -> Any:
            seen.append(tracker.count)
            return request

        handler_in = grpc.unary_unary_rpc_method_handler(inner)

        async def other(details: grpc.HandlerCallDetails) -> Any:
            return handler_in

        wrapped: Any = await interceptor.intercept_service(other, _details("/s/N"))
        assert await wrapped.unary_unary("x", None) == "x"

    asyncio.run(main())
    assert seen == [1] and tracker.count == 0


def test_a_stream_method_is_passed_through_and_an_unknown_method_is_not_remembered() -> None:
    interceptor = InFlightInterceptor(InFlight())
    stream = grpc.stream_stream_rpc_method_handler(_echo)

    async def main() -> None:
        async def streams(details: grpc.HandlerCallDetails) -> Any:
            return stream

        async def nothing(details: grpc.HandlerCallDetails) -> Any:
            return None

        assert await interceptor.intercept_service(streams, _details("/s/Stream")) is stream
        for n in range(100):
            assert await interceptor.intercept_service(nothing, _details(f"/no/such{n}")) is None

    asyncio.run(main())
    assert set(interceptor._wrapped) == {"/s/Stream"}
