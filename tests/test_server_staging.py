"""Batch assembly: rows stacked in a reused buffer give exactly what np.concatenate gives, and no answer
is corrupted when the next batch reuses the buffer."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from resnet_serve.runtime.base import Backend, BackendInfo, TensorSpec
from resnet_serve.server.batching.batcher import DynamicBatcher
from resnet_serve.server.batching.staging import Staging
from resnet_serve.server.config import BatchingConfig
from resnet_serve.server.observability.metrics import ServerMetrics

F32 = np.dtype(np.float32)


def parts(*sizes: int, start: float = 0.0) -> list[np.ndarray]:
    out, value = [], start
    for n in sizes:
        out.append(np.arange(value, value + n * 6, dtype=np.float32).reshape(n, 2, 3))
        value += n * 6
    return out


def test_assembled_batch_equals_concatenate() -> None:
    staging = Staging()
    given = parts(1, 3, 2)
    np.testing.assert_array_equal(staging.assemble("x", given), np.concatenate(given))


def test_buffer_is_reused_and_grows_to_the_largest_batch() -> None:
    staging = Staging()
    small = staging.assemble("x", parts(1, 1))
    larger = staging.assemble("x", parts(2, 2, start=100.0))
    again = staging.assemble("x", parts(1, 2, start=7.0))
    assert not np.shares_memory(small, larger)  # grew: a new buffer
    assert np.shares_memory(larger, again)  # then reused
    np.testing.assert_array_equal(again, np.concatenate(parts(1, 2, start=7.0)))


def test_read_only_views_of_received_bytes_are_stacked() -> None:
    # What the KServe path queues: np.frombuffer over the request's bytes, which is read-only.
    raw = [np.arange(6, dtype=np.float32).tobytes(), np.arange(6, 12, dtype=np.float32).tobytes()]
    views = [np.frombuffer(memoryview(b), dtype=np.float32).reshape(1, 2, 3) for b in raw]
    assert not views[0].flags.writeable
    np.testing.assert_array_equal(
        Staging().assemble("x", views), np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    )


def test_non_contiguous_or_mixed_parts_fall_back_to_concatenate() -> None:
    staging = Staging()
    strided = np.arange(24, dtype=np.float32).reshape(2, 2, 6)[:, :, ::2]
    np.testing.assert_array_equal(
        staging.assemble("x", [strided, strided]), np.concatenate([strided, strided])
    )
    with pytest.raises(ValueError):
        staging.assemble("x", [np.zeros((1, 2, 3), F32), np.zeros((1, 2, 4), F32)])


def test_owns_recognises_views_of_its_buffers_only() -> None:
    staging = Staging()
    batch = staging.assemble("x", parts(1, 1))
    assert staging.owns(batch[1:])
    assert not staging.owns(batch.copy())


class EchoBackend(Backend):
    """Returns its input as its output (a view of the staging buffer), one gated batch at a time."""

    def __init__(self) -> None:
        self.info = BackendInfo("fake", [TensorSpec("x", F32, (-1, 2))], [TensorSpec("y", F32, (-1, 2))], 64)
        self.gate = threading.Semaphore(0)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.gate.acquire(timeout=10)
        return {"y": inputs["x"]}


def test_answers_survive_the_next_batch_reusing_the_buffer() -> None:
    async def scenario() -> list[list[float]]:
        backend = EchoBackend()
        metrics = ServerMetrics(registry=CollectorRegistry()).model("m", "1")
        batcher = DynamicBatcher("m", "1", [backend], BatchingConfig(max_queue_delay_us=0), metrics)
        try:
            blocker = asyncio.create_task(batcher.submit({"x": np.full((1, 2), -1.0, F32)}))
            await asyncio.sleep(0.05)  # the worker now waits in infer: the next ones queue together
            first = [asyncio.create_task(batcher.submit({"x": np.full((1, 2), v, F32)})) for v in (1.0, 2.0)]
            await asyncio.sleep(0.05)
            backend.gate.release()  # the blocker
            await blocker
            backend.gate.release()  # batch [1, 2]
            answers = await asyncio.gather(*first)
            second = [asyncio.create_task(batcher.submit({"x": np.full((1, 2), v, F32)})) for v in (8.0, 9.0)]
            await asyncio.sleep(0.05)
            backend.gate.release()
            await asyncio.gather(*second)
            return [a.outputs["y"][:, 0].tolist() for a in answers]
        finally:
            for _ in range(4):
                backend.gate.release()
            batcher.close()

    assert asyncio.run(scenario()) == [[1.0], [2.0]]
