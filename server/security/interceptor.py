"""The gRPC server interceptor that enforces `AccessRules` before a request is deserialized or counted.

A refused call gets a handler of the same streaming kind that answers the refusal's status at once, without
reading (or parsing) the request. Refusals are logged at debug level with the method only: never a header;
`AccessRules` counts them in the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from resnet_serve.server.security.access import AccessRules, Refusal

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the stubs are generic, the runtime classes are not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor
    Context = grpc.aio.ServicerContext


def _refusing(handler: Handler, refusal: Refusal) -> Handler:
    async def refuse(request: Any, context: Context) -> Any:
        await context.abort(refusal.code, refusal.message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class AccessInterceptor(_Interceptor):
    """Answers calls that `rules` refuse; passes every other call through untouched."""

    def __init__(self, rules: AccessRules) -> None:
        self._rules = rules

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        refusal = self._rules.grpc_refusal(method, handler_call_details.invocation_metadata)
        if refusal is None:
            return handler
        log.debug("refused %s: %s", method, refusal.code.name)
        return _refusing(handler, refusal)
