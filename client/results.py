"""The client's typed results: what a classification returns and how a failure is raised."""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Prediction:
    """One label with its softmax probability."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Timing:
    """Where the request's time went on the server, in microseconds (as the server reports it)."""

    queue_us: int = 0
    preprocess_us: int = 0
    compute_us: int = 0
    total_us: int = 0
    batch_size: int = 0  # size of the batch the request was computed in


@dataclass(frozen=True)
class Classification:
    """The server's answer for one image.

    `latency_s` is measured by the client (send to receive); for a batch or a stream it is the time from
    the call's start to this result's arrival.
    """

    model: str
    version: str
    predictions: tuple[Prediction, ...]
    timing: Timing
    request_id: str
    latency_s: float = 0.0

    @property
    def top(self) -> Prediction:
        """The most probable prediction."""
        return self.predictions[0]


@dataclass(frozen=True)
class ModelVersion:
    version: str
    state: str  # LOADING, READY, UNLOADING, UNAVAILABLE
    reason: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """A model the server can answer with (from ListModels)."""

    name: str
    versions: tuple[ModelVersion, ...]
    labels: tuple[str, ...]
    platform: str
    max_batch_size: int
    input_shape: tuple[int, ...]
    is_default: bool


class ClassifyError(Exception):
    """A request failed: `code` is the gRPC status code, `message` the server's (or the client's) reason.

    Raised by single calls; returned in place of a `Classification` by batch and stream calls, so that one
    bad image does not hide the others' results.
    """

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    def __reduce__(self) -> tuple[type[ClassifyError], tuple[grpc.StatusCode, str, str]]:
        return (ClassifyError, (self.code, self.message, self.request_id))
