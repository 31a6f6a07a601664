"""What crosses between a worker and the engine (server/ipc/, server/remote/link.py): the arena's blocks, the
framing, and a worker's link against a stand-in engine on the other end of a socketpair."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import threading
from typing import Any

import numpy as np
import pytest

from resnet_serve.server.batching.batcher import BatchResult
from resnet_serve.server.errors import ServeError
from resnet_serve.server.ipc import messages as m
from resnet_serve.server.ipc.arena import MIN_BLOCK, Arena, MappedArena, new_memfd
from resnet_serve.server.ipc.channel import Frames, frame
from resnet_serve.server.remote import link as link_module
from resnet_serve.server.remote.link import EngineLink

SIZE = 1 << 24


async def infer(link: EngineLink, *args: Any, **kwargs: Any) -> BatchResult:
    """One request through the link: sent, then its answer awaited (as a RemoteBatcher does)."""
    return await link.answer(*link.send_infer(*args, **kwargs))


def test_a_freed_block_is_reused_and_a_full_arena_says_so_instead_of_failing() -> None:
    arena = Arena(new_memfd(SIZE), SIZE)
    first = arena.alloc(600_000)
    assert first is not None
    arena.free(first)
    assert arena.alloc(700_000) == first  # the same size class (1 MiB), the block just freed
    taken = [arena.alloc(1 << 20) for _ in range(SIZE // (1 << 20) - 2)]  # 1 MiB left at the top
    assert None not in taken and len(set(taken)) == len(taken)
    assert arena.alloc(1) is not None  # a 4 KiB block fits there, after which no 1 MiB one does
    assert arena.alloc(1 << 20) is None
    assert arena.blocks_in_use == len(taken) + 2


def _resident(fd: int) -> int:
    """Bytes of the memfd's pages in memory."""
    return os.fstat(fd).st_blocks * 512


def test_trim_gives_back_the_pages_of_free_blocks_and_keeps_those_in_use() -> None:
    fd = new_memfd(SIZE)
    arena = Arena(fd, SIZE)
    ones = np.ones(1 << 18, np.float32)  # 1 MiB
    blocks = [arena.alloc(ones.nbytes) for _ in range(6)]
    assert None not in blocks
    for block in blocks:
        assert block is not None
        arena.write(block, ones)
    assert _resident(fd) >= 6 << 20
    kept = blocks.pop()
    assert kept is not None
    for block in blocks:
        assert block is not None
        arena.free(block)
    assert arena.held_free_bytes == 5 << 20
    assert arena.trim() == 5 << 20
    assert arena.held_free_bytes == 0 and arena.trim() == 0  # nothing is given back twice
    assert _resident(fd) <= 1 << 20  # only the block in use
    np.testing.assert_array_equal(arena.array(kept, "<f4", ones.shape), ones)
    again = arena.alloc(ones.nbytes)  # a trimmed block is reused: it reads as zeros, and writes as any other
    assert again in blocks and arena.held_free_bytes == 0
    assert again is not None and not arena.array(again, "<f4", ones.shape).any()
    arena.write(again, ones)
    arena.free(again)
    assert arena.held_free_bytes == 1 << 20


def test_an_idle_link_gives_back_the_arena_memory_a_burst_left(monkeypatch: pytest.MonkeyPatch) -> None:
    # long enough that no stall of a loaded machine trims before the burst's memory is looked at
    monkeypatch.setattr(link_module, "TRIM_IDLE_S", 0.5)
    monkeypatch.setattr(link_module, "TRIM_MIN_BYTES", 4 << 20)
    fd = new_memfd(SIZE)
    ours, theirs = socket.socketpair()
    threading.Thread(target=_engine, args=(theirs, MappedArena(fd, SIZE), []), daemon=True).start()

    async def run() -> None:
        link = EngineLink(Arena(fd, SIZE))
        await link.open(ours)
        x = np.ones((1, 3, 224, 224), np.float32)  # 600 KB: a 1 MiB block in and one out
        await asyncio.gather(*(infer(link, "m", "1", {"x": x}, None, x.nbytes + 64) for _ in range(8)))
        assert link.idle and _resident(fd) >= 8 * x.nbytes
        deadline = asyncio.get_running_loop().time() + 5
        while _resident(fd) > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert _resident(fd) == 0 and link.arena.held_free_bytes == 0
        y = await infer(link, "m", "1", {"x": x}, None, x.nbytes + 64)  # and serves as before
        np.testing.assert_array_equal(y.outputs["y"], x * 2)
        ours.close()

    asyncio.run(run())


def test_the_engine_reads_what_the_worker_wrote_and_the_worker_reads_what_the_engine_wrote() -> None:
    fd = new_memfd(SIZE)
    worker, engine = Arena(fd, SIZE), MappedArena(fd, SIZE)
    x = np.random.default_rng(0).random((2, 3, 4), dtype=np.float32)
    offset = worker.alloc(x.nbytes)
    assert offset is not None
    worker.write(offset, x)
    np.testing.assert_array_equal(engine.array(offset, x.dtype.str, x.shape), x)
    y = np.arange(10, dtype=np.int64)
    assert engine.write(offset + MIN_BLOCK, MIN_BLOCK, y)
    np.testing.assert_array_equal(worker.array(offset + MIN_BLOCK, y.dtype.str, y.shape), y)
    assert not engine.write(offset, 8, y)  # does not fit: the caller sends it inline


@pytest.mark.parametrize("cut", [1, 3, 7, 64, 4096])
def test_frames_come_out_whole_and_in_order_however_the_reads_cut_them(cut: int) -> None:
    messages = [
        (m.INFER, i, "model", "1", [("x", "<f4", (1, 4), b"\0" * 16 * i)], None, 0.5) for i in range(20)
    ]
    stream = b"".join(frame(message) for message in messages)
    frames = Frames()
    out = []
    for start in range(0, len(stream), cut):
        out += frames.feed(stream[start : start + cut])
    assert out == messages


@pytest.mark.parametrize("cut", [1, 5, 100, 4096])
def test_frames_keep_no_reference_to_a_read_buffer_that_is_reused(cut: int) -> None:
    """The engine reads into one buffer and feeds views of it: what a message did not finish must be kept
    as a copy, since the next read overwrites the buffer."""
    messages = [(m.RESULT, i, [("y", "<f4", (1, 4), b"\1" * (i % 7) * 16)], 0.0, 0.0, 1) for i in range(30)]
    stream = b"".join(frame(message) for message in messages)
    frames = Frames()
    buffer = bytearray(cut)
    out = []
    for start in range(0, len(stream), cut):
        piece = stream[start : start + cut]
        buffer[: len(piece)] = piece
        out += frames.feed(memoryview(buffer)[: len(piece)])
        buffer[:] = b"\xff" * cut  # the next read's bytes
    assert out == messages


def test_a_length_no_message_can_have_is_refused() -> None:
    with pytest.raises(ConnectionError):
        Frames().feed((1 << 31).to_bytes(4, "little") + b"x")


def _engine(sock: socket.socket, arena: MappedArena, seen: list[tuple[object, ...]]) -> None:
    """A stand-in engine: answers each INFER with its input's rows doubled, in the out block when there is
    one, and fails any request to the model "broken"."""
    frames = Frames()
    while data := sock.recv(1 << 20):
        for message in frames.feed(data):
            seen.append(message)
            _, rid, name, _version, tensors, out, _timeout, _slot = message
            if name == "broken":
                sock.sendall(frame((m.ERROR, rid, "INVALID_ARGUMENT", "no such input", "invalid_input")))
                continue
            (_key, dtype, shape, data_or_offset) = tensors[0]
            if isinstance(data_or_offset, int):
                x = arena.array(data_or_offset, dtype, shape)
            else:
                x = np.frombuffer(data_or_offset, dtype=np.dtype(dtype)).reshape(shape)
            y = x * 2
            if out is not None and arena.write(out[0], out[1], y):
                answer: object = 0
            else:
                answer = y.tobytes()
            sock.sendall(frame((m.RESULT, rid, [("y", y.dtype.str, y.shape, answer)], 0.001, 0.002, 1)))


def test_a_request_crosses_inline_or_through_the_arena_and_every_block_is_given_back() -> None:
    fd = new_memfd(SIZE)
    ours, theirs = socket.socketpair()
    seen: list[tuple[object, ...]] = []
    threading.Thread(target=_engine, args=(theirs, MappedArena(fd, SIZE), seen), daemon=True).start()

    async def run() -> None:
        link = EngineLink(Arena(fd, SIZE))
        await link.open(ours)
        small = np.ones((1, 4), np.float32)  # inline
        large = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)  # through the arena
        a, b = await asyncio.gather(
            infer(link, "m", "1", {"x": small}, None, 0),
            infer(link, "m", "1", {"x": large}, 1.0, large.nbytes + 64, slot=3),
        )
        np.testing.assert_array_equal(a.outputs["y"], small * 2)
        np.testing.assert_array_equal(b.outputs["y"], large * 2)
        assert (b.queue_s, b.compute_s, b.batch_size) == (0.001, 0.002, 1)
        with pytest.raises(ServeError) as refused:
            await infer(link, "broken", "1", {"x": small}, None, 0)
        assert refused.value.message == "no such input" and refused.value.outcome == "invalid_input"
        assert link.arena.blocks_in_use == 0 and link.idle
        ours.close()

    asyncio.run(run())
    tensors = [message[4] for message in seen]
    assert isinstance(tensors[0][0][3], bytes)  # type: ignore[index]  # the small tensor: in the message
    assert isinstance(tensors[1][0][3], int)  # type: ignore[index]  # the large one: an offset in the arena
    assert [message[7] for message in seen] == [-1, 3, -1]  # the version's row of queue places, or none
    assert len(pickle.dumps(seen[1])) < 512


def test_when_the_engine_goes_away_waiting_requests_end_unavailable_at_once() -> None:
    fd = new_memfd(SIZE)
    ours, theirs = socket.socketpair()

    async def run() -> None:
        link = EngineLink(Arena(fd, SIZE))
        lost = asyncio.Event()
        link.on_lost(lost.set)
        await link.open(ours)
        waiting = asyncio.ensure_future(infer(link, "m", "1", {"x": np.ones((1, 4), np.float32)}, None, 0))
        await asyncio.sleep(0.05)
        theirs.close()  # the engine died with the request queued
        with pytest.raises(ServeError) as gone:
            await asyncio.wait_for(waiting, 5)
        assert gone.value.code.name == "UNAVAILABLE"
        await asyncio.wait_for(lost.wait(), 5)
        assert not link.alive
        with pytest.raises(ServeError):  # and every later one, without writing to a dead socket
            await infer(link, "m", "1", {"x": np.ones((1, 4), np.float32)}, None, 0)

    asyncio.run(run())


def test_a_message_that_does_not_unpickle_ends_the_stream_as_corrupt() -> None:
    """Both ends treat ConnectionError as the end of the connection (the engine's reader thread logs it and
    reports the worker lost): a frame of garbage must not escape as any other exception."""
    garbage = b"\x80\x05not a pickle"
    with pytest.raises(ConnectionError, match="corrupt"):
        Frames().feed(len(garbage).to_bytes(4, "little") + garbage)
    frames = Frames()
    frames.feed(len(garbage).to_bytes(4, "little"))  # held: the rest comes with the next read
    with pytest.raises(ConnectionError, match="corrupt"):
        frames.feed(garbage)
