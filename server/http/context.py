"""An HTTP request as the `CallContext` (server/frontend.py) the services answer, so an HTTP request runs the
very servicer methods a gRPC one does (server/kserve/service.py, server/image/service.py), their error
boundary and request-id handling included.

The client's request id is the `x-request-id` header; the id the service answers with is kept here and sent
back by server/http/app.py as the `x-request-id` header. HTTP has no deadline (Triton's `timeout` parameter
is the bound). `abort` raises the `ServeError`, which server/http/app.py answers with its HTTP status.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from resnet_serve.server.errors import ServeError
from resnet_serve.server.frontend import CallContext, Frontend


class HttpContext(CallContext):
    __slots__ = ("_header", "request_id")
    frontend = Frontend.HTTP

    def __init__(self, request_id_header: str | None) -> None:
        self._header = request_id_header
        self.request_id: str | None = None  # the id answered with, once a service set it

    def client_request_id(self) -> str | None:
        return self._header

    def answer_request_id(self, request_id: str) -> None:
        self.request_id = request_id

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise ServeError(code, details)
