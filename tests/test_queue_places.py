"""Queue places granted across worker processes (server/ipc/places.py, server/remote/manager.py's
`RemoteBatcher`): a worker counts what every other worker holds and what is still on its way to the engine,
so a request that would find the queue full is refused before it is decoded, whichever worker it reached."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support.tiny_model import write_tiny_onnx

from resnet_serve.runtime.base import BackendInfo, TensorSpec
from resnet_serve.server.batching.batcher import BatchResult, DynamicBatcher, Ticket
from resnet_serve.server.config import BatchingConfig, ModelSettings, ServerConfig
from resnet_serve.server.engine.host import EngineHost
from resnet_serve.server.errors import ServeError, unavailable
from resnet_serve.server.ipc.places import QueuePlaces, new_places_fd
from resnet_serve.server.models.catalog import VersionView
from resnet_serve.server.models.manager import ModelManager
from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.remote.manager import RemoteBatcher
from resnet_serve.server.shm.registry import SharedMemoryRegistry

SLOT = 7
F32 = np.dtype(np.float32)


class StandInLink:
    """A worker's link whose requests stay 'in the socket' until the test lets the engine take them."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[int, asyncio.Future[BatchResult]]] = []
        self.fail = fail

    def send_infer(
        self, name: str, version: str, inputs: Any, timeout_s: Any, out_bytes: int, slot: int = -1
    ) -> tuple[int, asyncio.Future[BatchResult]]:
        assert slot == SLOT  # the engine counts it received in that row
        if self.fail:
            raise unavailable("the engine process stopped")  # before the message left
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self.sent.append((len(self.sent), future))
        return self.sent[-1]

    async def answer(self, rid: int, future: asyncio.Future[BatchResult]) -> BatchResult:
        return await future


def view(max_queue_size: int) -> VersionView:
    info = BackendInfo("fake", [TensorSpec("x", F32, (-1, 2))], [TensorSpec("y", F32, (-1, 2))], 8)
    batching = BatchingConfig(max_batch_size=1, max_queue_size=max_queue_size)
    return VersionView(
        name="m",
        version="1",
        path=Path("m.onnx"),
        settings=ModelSettings(name="m", path="m.onnx", batching=batching),
        info=info,
        labels=(),
        preprocess=None,
        max_batch_size=1,
        instances=1,
        state="READY",
        load_s=0.0,
        triton=None,
        serial=1,
        slot=SLOT,
    )


def refused(batcher: RemoteBatcher) -> bool:
    try:
        ticket = batcher.reserve()
    except ServeError as exc:
        assert exc.code.name == "UNAVAILABLE" and "queue is full" in exc.message
        return True
    ticket.release()
    return False


def x() -> dict[str, np.ndarray]:
    return {"x": np.ones((1, 2), dtype=np.float32)}


def test_the_table_counts_the_depth_and_what_each_worker_holds_that_the_engine_has_not_taken() -> None:
    fd = new_places_fd(2)
    try:
        engine, w0, w1 = QueuePlaces(fd, 2), QueuePlaces(fd, 2, 0), QueuePlaces(fd, 2, 1)
    finally:
        os.close(fd)
    w0.claim(SLOT, 2)  # two requests decoding in worker 0
    w1.claim(SLOT, 1)
    assert engine.taken(SLOT) == w0.taken(SLOT) == w1.taken(SLOT) == 3
    assert w1.taken(SLOT + 1) == 0  # another version's row
    engine.received(0, SLOT)  # one of worker 0's is off its socket: queued
    engine.set_depth(SLOT, 1)
    assert w1.taken(SLOT) == 3
    engine.set_depth(SLOT, 0)  # a batch took it
    assert w1.taken(SLOT) == 2
    w0.claim(SLOT, -1)  # its other one failed to decode: the place is given back
    assert w1.taken(SLOT) == 1
    engine.reset(1)  # worker 1 died and is started again: what it held is gone with it
    assert w0.taken(SLOT) == 0
    with pytest.raises(ValueError):
        QueuePlaces(fd, 2, 2)


def test_a_worker_refuses_while_another_worker_holds_the_last_places_until_the_engine_has_run_them() -> None:
    """The case one queue depth alone missed: a request decoding in one worker, or sent and not yet read by
    the engine, is in no queue the engine publishes, so another worker decoded a request the engine then
    refused."""
    fd = new_places_fd(2)
    try:
        engine = QueuePlaces(fd, 2)
        links = [StandInLink(), StandInLink()]
        workers = [RemoteBatcher(links[i], view(2), QueuePlaces(fd, 2, i)) for i in (0, 1)]  # type: ignore[arg-type]
    finally:
        os.close(fd)
    a, b = workers

    async def run() -> None:
        first = a.reserve()  # decoding in worker 0
        second = b.reserve()  # and one in worker 1: the queue of 2 is spoken for
        assert refused(a) and refused(b)
        sending = asyncio.ensure_future(a.submit(x(), None, first))
        await asyncio.sleep(0)
        assert links[0].sent and first.places == 0  # in the socket: still taking its place
        assert refused(b)
        engine.received(0, SLOT)  # the engine reads it and queues it
        engine.set_depth(SLOT, 1)
        assert refused(b)
        engine.set_depth(SLOT, 0)  # a batch takes it: running requests hold no place, as in one process
        assert not refused(b)
        links[0].sent[0][1].set_result(BatchResult({"y": np.ones((1, 2), F32)}, 0.0, 0.0, 1))
        await sending
        second.release()  # worker 1's request failed to decode: its place is free again
        assert engine.taken(SLOT) == 0

    asyncio.run(run())


def test_a_request_that_could_not_be_sent_gives_its_place_back() -> None:
    fd = new_places_fd(2)
    try:
        engine = QueuePlaces(fd, 2)
        worker = RemoteBatcher(StandInLink(fail=True), view(2), QueuePlaces(fd, 2, 1))  # type: ignore[arg-type]
    finally:
        os.close(fd)

    async def run() -> None:
        for ticket in (worker.reserve(), None):  # with the place it claimed, or claiming it as it is sent
            with pytest.raises(ServeError):
                await worker.submit(x(), None, ticket)
            assert engine.taken(SLOT) == 0

    asyncio.run(run())


def test_a_ticket_given_back_unused_frees_its_places_for_every_worker() -> None:
    fd = new_places_fd(3)
    try:
        a = RemoteBatcher(StandInLink(), view(4), QueuePlaces(fd, 3, 0))  # type: ignore[arg-type]
        c = RemoteBatcher(StandInLink(), view(4), QueuePlaces(fd, 3, 2))  # type: ignore[arg-type]
    finally:
        os.close(fd)
    ticket: Ticket = a.reserve(3)  # a ClassifyBatch of three images
    assert not refused(c)
    held = c.reserve()
    assert refused(c) and refused(a)
    ticket.release()
    assert not refused(a)
    held.release()


def test_a_version_replaced_by_a_reload_stops_writing_its_depth_into_the_row_it_gave_up(
    tmp_path: Path,
) -> None:
    """The engine gives each version a row and hooks its batcher to it; a retired version (still draining)
    must not write into a row that a later version may be given."""
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    config = ServerConfig(metrics_port=-1, models=(ModelSettings(name="tiny", path=str(model)),))
    fd = new_places_fd(1)
    try:
        places = QueuePlaces(fd, 1)
    finally:
        os.close(fd)

    async def run() -> None:
        metrics = ServerMetrics(registry=CollectorRegistry())
        manager = ModelManager(config, metrics)
        host = EngineHost(manager, SharedMemoryRegistry(), metrics, places)
        try:
            await manager.start()
            first = manager.get("tiny")
            (old_slot,) = [v.slot for e in host.catalog().entries for v in e.versions]
            assert isinstance(first.batcher, DynamicBatcher) and first.batcher.depth_hook is not None
            await manager.load("tiny")  # a reload: a new build replaces the first
            second = manager.get("tiny")
            assert second is not first
            (new_slot,) = [v.slot for e in host.catalog().entries for v in e.versions]
            assert first.batcher.depth_hook is None
            assert isinstance(second.batcher, DynamicBatcher) and second.batcher.depth_hook is not None
            second.batcher.depth_hook(3)
            assert places.taken(new_slot) == 3
            await manager.load("tiny")  # the first one's row is free again, and the next build may take it
            third = manager.get("tiny")
            (third_slot,) = [v.slot for e in host.catalog().entries for v in e.versions]
            assert new_slot != old_slot and third_slot == old_slot  # the first one's row, now the third's
            assert second.batcher.depth_hook is None
            assert isinstance(third.batcher, DynamicBatcher) and third.batcher.depth_hook is not None
        finally:
            await manager.close(1)

    asyncio.run(run())
