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

from resnet_serve.runtime.base import BackendInfo, TensorSpec
from resnet_serve.server.batching.batcher import BatchResult, Ticket
from resnet_serve.server.config import BatchingConfig, ModelSettings
from resnet_serve.server.errors import ServeError, unavailable
from resnet_serve.server.ipc.places import QueuePlaces, new_places_fd
from resnet_serve.server.models.catalog import VersionView
from resnet_serve.server.remote.manager import RemoteBatcher

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
