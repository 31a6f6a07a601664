"""How a request ended: the one list of outcome labels the metrics, the access log and the errors share.

An outcome is a label value of `resnet_serve_requests_total` and a field of the access log
(docs/architecture.md, metrics API), so its spelling is part of the interface: every module names it through
`Outcome`, a `StrEnum` whose members are the strings themselves (`Outcome.SUCCESS == "success"`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import grpc


class Outcome(StrEnum):
    SUCCESS = "success"
    INVALID_INPUT = "invalid_input"
    QUEUE_FULL = "queue_full"
    # Refused unqueued: no ready version (loading, unloaded, failed), the version is unloading, or the
    # server is shutting down. A full queue is UNAVAILABLE too but says so itself (QUEUE_FULL), so overload
    # and outage stay apart.
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    BACKEND_ERROR = "backend_error"
    # A model or version that is not served: counted once per server (`ServerMetrics.unknown_model`), never
    # per model version, and written to the access log.
    NOT_FOUND = "not_found"


FAILURES: Final = (
    Outcome.INVALID_INPUT,
    Outcome.QUEUE_FULL,
    Outcome.UNAVAILABLE,
    Outcome.DEADLINE_EXCEEDED,
    Outcome.CANCELLED,
    Outcome.BACKEND_ERROR,
)
# What a request to a served model version can end with (each a series of every version from the start).
REQUEST_OUTCOMES: Final = (Outcome.SUCCESS, *FAILURES)

# The outcome of each status a request can end with, unless the error names its own (a full queue).
OF_STATUS: Final[dict[grpc.StatusCode, Outcome]] = {
    grpc.StatusCode.OK: Outcome.SUCCESS,
    grpc.StatusCode.INVALID_ARGUMENT: Outcome.INVALID_INPUT,
    grpc.StatusCode.NOT_FOUND: Outcome.INVALID_INPUT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Outcome.QUEUE_FULL,
    grpc.StatusCode.UNAVAILABLE: Outcome.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Outcome.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED: Outcome.CANCELLED,
    grpc.StatusCode.INTERNAL: Outcome.BACKEND_ERROR,
}
