"""The one error type the server raises across its layers, and how it maps to gRPC statuses and metrics.

Every layer (preprocessing, batcher, model manager, backends) raises `ServeError`; the services turn it into
a gRPC status at one boundary (`abort_with`), so a status code is decided where the failure is understood and
no request is ever left without an answer.
"""

from __future__ import annotations

import asyncio
from typing import NoReturn

import grpc

# Metric outcome labels (docs/architecture.md, metrics API) for each status a request can end with.
OUTCOMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "success",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_input",
    grpc.StatusCode.NOT_FOUND: "invalid_input",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "queue_full",
    # Refused without being queued: shutting down, no ready version, the version is unloading. A full
    # queue is UNAVAILABLE too but says so itself (`queue_full`), so overload and outage stay apart.
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded",
    grpc.StatusCode.CANCELLED: "cancelled",
    grpc.StatusCode.INTERNAL: "backend_error",
}


class ServeError(Exception):
    """A request failed with a known gRPC status; `message` is one line meant for the client."""

    def __init__(self, code: grpc.StatusCode, message: str, outcome: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self._outcome = outcome

    @property
    def outcome(self) -> str:
        """The metrics outcome label for this error: the one it was raised with, else its status's."""
        return self._outcome or OUTCOMES.get(self.code, "backend_error")

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
    return ServeError(grpc.StatusCode.UNAVAILABLE, message, outcome="queue_full")


def deadline_exceeded(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def cancelled(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.CANCELLED, message)


def internal(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.INTERNAL, message)


def refusal_outcome(error: ServeError) -> str:
    """The access-log outcome of a request refused before it reached a model version: NOT_FOUND is what the
    metrics count as `not_found` (ServerMetrics.unknown_model), the rest as their metrics outcome."""
    return "not_found" if error.code == grpc.StatusCode.NOT_FOUND else error.outcome


def outcome_of(exc: BaseException) -> str:
    """The metrics outcome for an exception a request ended with (unexpected ones are backend errors)."""
    if isinstance(exc, ServeError):
        return exc.outcome
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "backend_error"


async def abort_with(context: grpc.aio.ServicerContext[object, object], error: ServeError) -> NoReturn:
    """End an RPC with the error's status and message."""
    await context.abort(error.code, error.message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
