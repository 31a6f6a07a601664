"""A worker's connection to the engine: requests out, answers in, and what the engine pushes.

`send_infer` writes a request's tensors into the worker's arena (server/ipc/arena.py; small ones go
inline) and sends one INFER message; `answer` waits for its RESULT or ERROR. The blocks are freed when that
answer arrives, because until then the engine may still read them. `call` runs one CALL (model control, the
shared-memory registry, statistics) and returns its REPLY. CATALOG, REGIONS and PULL_METRICS messages go to
the handlers the worker sets. When the connection is lost (the engine died) every request waiting on it ends
UNAVAILABLE at once, and `on_lost` runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from resnet_serve.server.batching.batcher import BatchResult
from resnet_serve.server.errors import unavailable
from resnet_serve.server.ipc import messages as m
from resnet_serve.server.ipc.arena import Arena
from resnet_serve.server.ipc.channel import Channel, Message, connect, frame
from resnet_serve.server.ipc.failures import error_of

log = logging.getLogger(__name__)

ENGINE_GONE = "the server's engine process stopped; retry on another replica"
# Once no request has waited on the engine for this long and at least this much freed arena memory is held,
# the arena gives those pages back (ipc/arena.py, `trim`): a burst's peak does not stay in memory for good,
# and a busy worker never pays for faulting its blocks in again.
TRIM_IDLE_S = 2.0
TRIM_MIN_BYTES = 16 * 1024 * 1024


class _Request:
    __slots__ = ("blocks", "future", "out")

    def __init__(self, future: asyncio.Future[Any], blocks: list[int], out: int | None) -> None:
        self.future = future
        self.blocks = blocks
        self.out = out


class EngineLink:
    """The worker's end of its socket to the engine, and its arena."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self._channel: Channel | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Request] = {}
        self._handlers: dict[str, Callable[..., None]] = {}
        self._lost_callbacks: list[Callable[[], None]] = []
        self._outbox: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._trim_timer: asyncio.TimerHandle | None = None
        self._last_request = 0.0  # the event loop's time of the latest request's start
        self.alive = False

    async def open(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._channel = await connect(sock, self._on_message, self._on_lost)
        self.alive = True

    def on(self, name: str, handler: Callable[..., None]) -> None:
        """Call `handler(*args)` for each pushed message `name` (CATALOG, REGIONS, PULL_METRICS)."""
        self._handlers[name] = handler

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._lost_callbacks.append(callback)

    def send(self, message: Message) -> None:
        """Queue `message` for the engine: the messages of one turn of the event loop go in one write (under
        load many requests start in one turn; one system call and one wake-up of the engine for them all)."""
        if self._channel is None or not self.alive:
            raise unavailable(ENGINE_GONE)
        self._outbox.append(frame(message))
        if len(self._outbox) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if self._channel is not None and not self._channel.closed:
            self._channel.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])

    @property
    def idle(self) -> bool:
        """No request or call waits on the engine."""
        return not self._pending

    # ------------------------------------------------------------------------------------------ requests

    def send_infer(
        self,
        name: str,
        version: str,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None,
        out_bytes: int,
        slot: int = -1,
    ) -> tuple[int, asyncio.Future[BatchResult]]:
        """Send one request for the engine's batcher of `name` `version` (raises, having sent nothing, when
        it cannot be), and return what `answer` waits on. `out_bytes` is the outputs' size when it is known
        (0: unknown, they come back inline); `slot` the version's row of queue places (server/ipc/places.py),
        -1 for none."""
        if not self.alive:
            raise unavailable(ENGINE_GONE)
        arena = self.arena
        blocks: list[int] = []
        tensors: list[tuple[str, str, tuple[int, ...], Any]] = []
        for key, array in inputs.items():
            data: Any = None
            if array.nbytes >= m.INLINE_MAX and not array.dtype.hasobject:
                offset = arena.alloc(array.nbytes)
                if offset is not None:
                    arena.write(offset, array)
                    blocks.append(offset)
                    data = offset
            if data is None:
                data = array if array.dtype.hasobject else array.tobytes()
            tensors.append((key, array.dtype.str, array.shape, data))
        out = None
        out_spec = None
        if out_bytes >= m.INLINE_MAX:
            out = arena.alloc(out_bytes)
            if out is not None:
                blocks.append(out)
                out_spec = (out, out_bytes)
        rid = next(self._ids)
        assert self._loop is not None
        future: asyncio.Future[BatchResult] = self._loop.create_future()
        self._pending[rid] = _Request(future, blocks, out)
        self._last_request = self._loop.time()
        try:
            self.send((m.INFER, rid, name, version, tensors, out_spec, timeout_s, slot))
        except BaseException:
            self._finish(rid)
            raise
        return rid, future

    async def answer(self, rid: int, future: asyncio.Future[BatchResult]) -> BatchResult:
        """The engine's answer to request `rid`, sent by `send_infer` (cancelled: the engine is told)."""
        try:
            return await future
        except asyncio.CancelledError:
            if rid in self._pending and self.alive:
                self.send((m.CANCEL, rid))
            raise

    def abandon(self, message: str) -> int:
        """The end of a grace period: every request and call still waiting on the engine ends UNAVAILABLE
        with `message`, and the engine is told to withdraw the requests it has not computed. Their arena
        blocks stay held until the engine answers: a batch computing may still read them. Returns how many
        ended so."""
        error = unavailable(message)
        count = 0
        for rid, request in list(self._pending.items()):
            if request.future.done():
                continue
            request.future.set_exception(error)
            count += 1
            if self.alive:
                self.send((m.CANCEL, rid))
        return count

    def expire(self, rid: int) -> None:
        """Request `rid`'s deadline passed: the engine withdraws it if no batch has taken it yet, and answers
        it with the expiry error (otherwise its batch's answer comes as usual)."""
        if rid in self._pending and self.alive:
            self.send((m.EXPIRE, rid))

    async def call(self, op: str, *args: Any) -> Any:
        """One CALL to the engine; its REPLY's value, or the ServeError of its FAIL."""
        if not self.alive:
            raise unavailable(ENGINE_GONE)
        rid = next(self._ids)
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = _Request(future, [], None)
        self.send((m.CALL, rid, op, args))
        return await future

    def _finish(self, rid: int) -> _Request | None:
        request = self._pending.pop(rid, None)
        if request is not None:
            for block in request.blocks:
                self.arena.free(block)
            if (
                not self._pending
                and self._trim_timer is None
                and self.arena.held_free_bytes >= TRIM_MIN_BYTES
                and self._loop is not None
            ):
                self._trim_timer = self._loop.call_later(TRIM_IDLE_S, self._trim_when_idle)
        return request

    def _trim_when_idle(self) -> None:
        self._trim_timer = None
        if self._pending:  # busy again: the next idle moment tries again
            return
        assert self._loop is not None
        wait = self._last_request + TRIM_IDLE_S - self._loop.time()
        if wait > 0:  # a request came and went meanwhile: idle for the whole of TRIM_IDLE_S first
            self._trim_timer = self._loop.call_later(wait, self._trim_when_idle)
            return
        released = self.arena.trim()
        log.debug("gave back %d MiB of the arena's free blocks", released >> 20)

    # -------------------------------------------------------------------------------------------- incoming

    def _on_message(self, message: Message) -> None:
        kind = message[0]
        if kind == m.RESULT:
            _, rid, outputs, queue_s, compute_s, batch = message
            request = self._pending.get(rid)
            if request is None:
                return
            try:
                arrays = {
                    name: self._array(request.out, dtype, shape, data) for name, dtype, shape, data in outputs
                }
            finally:
                self._finish(rid)  # the outputs were copied out of the arena: its blocks may be reused
            if not request.future.done():
                request.future.set_result(BatchResult(arrays, queue_s, compute_s, batch))
        elif kind in (m.ERROR, m.FAIL):
            _, rid, code, text, outcome = message
            request = self._finish(rid)
            if request is not None and not request.future.done():
                request.future.set_exception(error_of(code, text, outcome))
        elif kind == m.REPLY:
            _, rid, value = message
            request = self._finish(rid)
            if request is not None and not request.future.done():
                request.future.set_result(value)
        else:
            handler = self._handlers.get(kind)
            if handler is None:
                log.warning("the engine sent an unknown message %r", kind)
                return
            handler(*message[1:])

    def _array(self, out: int | None, dtype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
        if isinstance(data, int):
            assert out is not None
            copied: np.ndarray = self.arena.array(out + data, dtype, shape).copy()
            return copied
        if isinstance(data, np.ndarray):
            return data
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)

    def _on_lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        pending, self._pending = self._pending, {}
        for request in pending.values():
            if not request.future.done():
                request.future.set_exception(unavailable(ENGINE_GONE))
        # The arena's blocks are not reused: nothing will be sent on this link again.
        for callback in self._lost_callbacks:
            try:
                callback()
            except Exception:
                log.exception("a callback for the engine's loss failed")
