"""An HTTP request seen as the gRPC call context the services expect, so an HTTP request runs the very
servicer methods a gRPC one does (server/kserve/service.py, server/image/service.py), their error boundary
and request-id handling included.

The services use four things of `grpc.aio.ServicerContext`: the invocation metadata (here the
`x-request-id` header), the trailing metadata (the id echoed, which server/http/app.py sends back as the
`x-request-id` header), the time remaining (HTTP has no deadline: Triton's `timeout` parameter is the
bound) and `abort`, which here raises the `ServeError` that server/http/app.py answers with its HTTP status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import grpc

from resnet_serve.server.errors import ServeError
from resnet_serve.server.observability.logging import REQUEST_ID_METADATA


class HttpContext:
    __slots__ = ("_metadata", "request_id")

    def __init__(self, request_id_header: str | None) -> None:
        self._metadata: tuple[tuple[str, str], ...] = (
            ((REQUEST_ID_METADATA, request_id_header),) if request_id_header is not None else ()
        )
        self.request_id: str | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, Any]]) -> None:
        for key, value in metadata:
            if key == REQUEST_ID_METADATA:
                self.request_id = str(value)

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise ServeError(code, details)
