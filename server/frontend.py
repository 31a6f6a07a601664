"""The call a service method answers, whichever front end it came in on.

The services (server/kserve/service.py, server/image/service.py) are written once, against `CallContext`:
which front end the call came in on, the request id the client sent and the one it gets back, the time it
has left, and `abort`. The gRPC front end is grpc.aio itself (its servicer context, wrapped in
`GrpcContext` by server/errors.py's `boundary`), the HTTP front end is server/http/ (its `HttpContext`),
as MLServer runs one DataPlane behind its REST and gRPC handlers. So no service asks which class its context
is, and nothing in server/ below the front ends imports them.
"""

from __future__ import annotations

import abc
from enum import StrEnum
from typing import Any, ClassVar, NoReturn

import grpc

from resnet_serve.server.observability.logging import (
    request_id_from_metadata,
    request_id_metadata,
    resolve_request_id,
)


class Frontend(StrEnum):
    """A front end, as the `protocol` label of the access-refusal metric spells it."""

    GRPC = "grpc"
    HTTP = "http"


class CallContext(abc.ABC):
    __slots__ = ()
    frontend: ClassVar[Frontend]

    @abc.abstractmethod
    def client_request_id(self) -> str | None:
        """The x-request-id the client sent (gRPC metadata, HTTP header), if any."""

    @abc.abstractmethod
    def answer_request_id(self, request_id: str) -> None:
        """Send `request_id` back with the answer, which a failed call also gets."""

    @abc.abstractmethod
    def time_remaining(self) -> float | None:
        """Seconds left before the client's deadline; None without one (HTTP has none)."""

    @abc.abstractmethod
    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        """End the call with this status (the front end turns it into its own answer)."""

    def echo_request_id(self, request_field: str | None = None) -> str:
        """The call's request id (the client's x-request-id, else `request_field`, else a new one), sent
        back with the answer."""
        request_id = resolve_request_id(self.client_request_id(), request_field)
        self.answer_request_id(request_id)
        return request_id


class GrpcContext(CallContext):
    """grpc.aio's servicer context as a CallContext."""

    __slots__ = ("_context",)
    frontend = Frontend.GRPC

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    def client_request_id(self) -> str | None:
        return request_id_from_metadata(self._context.invocation_metadata())

    def answer_request_id(self, request_id: str) -> None:
        self._context.set_trailing_metadata(request_id_metadata(request_id))

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        await self._context.abort(code, details)
        raise AssertionError("grpc's abort returned")  # it raises; this satisfies NoReturn


def call_context(context: grpc.aio.ServicerContext[Any, Any] | CallContext) -> CallContext:
    """The CallContext of a call: HTTP's is one already, grpc.aio's is wrapped."""
    return context if isinstance(context, CallContext) else GrpcContext(context)
