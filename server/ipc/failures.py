"""A failure as it crosses between processes: the status, the message and the outcome label of a
ServeError, rebuilt on the other side as the same ServeError."""

from __future__ import annotations

import grpc

from resnet_serve.server.errors import ServeError, internal
from resnet_serve.server.outcomes import Outcome

Failure = tuple[str, str, str | None]


def failure_of(exc: BaseException) -> Failure:
    """A ServeError's fields; anything else is an internal error (the engine logs it where it happened)."""
    if not isinstance(exc, ServeError):
        exc = internal(f"the engine failed: {type(exc).__name__}: {exc}")
    outcome = exc._outcome
    return exc.code.name, exc.message, None if outcome is None else str(outcome)


def error_of(code: str, message: str, outcome: str | None) -> ServeError:
    return ServeError(grpc.StatusCode[code], message, None if outcome is None else Outcome(outcome))
