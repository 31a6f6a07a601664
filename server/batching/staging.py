"""Assembling a batch: the rows of several requests copied into one contiguous array per model input.

`np.concatenate` was the slowest step between two batches under load: a median of 2.8 ms for eight ResNet-50
rows at concurrency 16, against 0.17 ms when nothing else runs. numpy releases the GIL for a large copy, and
taking it back while the event loop thread is busy answering the previous batch waits up to the interpreter's
switch interval (5 ms); and each batch's fresh 5-10 MB array is page-faulted in anew. So each worker keeps one
buffer per input that grows to the largest batch it has seen, and copies rows into it with memoryview slice
assignment, a plain memcpy that keeps the GIL: 0.4 ms for the same rows under the same load
(docs/benchmarking.md). The buffer is reused only after the backend has returned, and `owns` lets the batcher
copy an output that a backend returned as a view of its input.
"""

from __future__ import annotations

import numpy as np


class Staging:
    """One worker's batch buffers, by input name. Not thread-safe: each worker thread has its own."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def assemble(self, name: str, parts: list[np.ndarray]) -> np.ndarray:
        """`parts` stacked along the batch dimension, in a buffer the next `assemble(name, ...)` reuses."""
        first = parts[0]
        row_shape = first.shape[1:]
        dtype = first.dtype
        if dtype.hasobject or any(
            p.dtype != dtype or p.shape[1:] != row_shape or not p.flags.c_contiguous for p in parts
        ):
            return np.concatenate(parts)  # the general case, including its error for rows that do not fit
        rows = sum(p.shape[0] for p in parts)
        nbytes = rows * first[:1].nbytes
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = np.empty(nbytes, dtype=np.uint8)
            self._buffers[name] = buffer
        target = buffer.data
        offset = 0
        for part in parts:
            source = part.data.cast("B")
            target[offset : offset + source.nbytes] = source
            offset += source.nbytes
        return buffer[:nbytes].view(dtype).reshape(rows, *row_shape)

    def owns(self, array: np.ndarray) -> bool:
        """Whether `array` may share memory with one of the buffers (and so must be copied to outlive it)."""
        return any(np.may_share_memory(array, buffer) for buffer in self._buffers.values())
