"""What the server's request path needs of a model version's queue: the dynamic batcher in this process
(batcher.py's `DynamicBatcher`), or, in a worker process, the engine's batcher behind the worker's link
(server/remote/)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from resnet_serve.server.batching.batcher import BatchResult, Ticket
from resnet_serve.server.config import BatchingConfig


class BatchQueue(Protocol):
    max_batch_size: int  # rows per request at most (1 for a model without a batch dimension)
    config: BatchingConfig

    @property
    def queue_depth(self) -> int:
        """Requests waiting (in a worker: this worker's requests at the engine)."""

    @property
    def idle(self) -> bool:
        """Nothing queued or running."""

    def reserve(self, places: int = 1) -> Ticket:
        """Claim places before decoding (ServeError UNAVAILABLE when the queue is full)."""

    async def submit(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None = None, ticket: Ticket | None = None
    ) -> BatchResult:
        """Queue one request and wait for its rows of the outputs."""

    def check_rows(self, rows: int) -> None:
        """Refuse a request of more rows than a batch may hold (INVALID_ARGUMENT)."""

    def close(self) -> None:
        """Refuse new requests; what is queued still runs."""

    def abandon(self, message: str) -> int:
        """Refuse new requests and answer the queued ones UNAVAILABLE with `message`; returns how many."""

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait (blocking) for the queue's work to end after `close`."""
