"""The server-wide decode memory budget (`max_decode_memory_mib`) and the one way the services run a model's
preprocessing on encoded images (`preprocess_images`).

Each decode declares its peak memory from the image's header before a pixel is decoded
(formats/decode.py's `Header.cost`). A decode whose cost fits what is left of the budget runs at once, in the
same trip to the preprocessing pool that parsed its header (`Preprocessor.__call__`); one that does not waits
on the event loop (not in a pool thread, so small images keep flowing), first come first served, until the
budget has room or the request's deadline passes: then it ends RESOURCE_EXHAUSTED. An image that could never
fit (cost above the whole budget) is refused at once. So concurrent large images queue instead of adding up
to an out-of-memory kill.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Final

import grpc
import numpy as np

from resnet_serve.formats.decode import DecodeDeferred, Header
from resnet_serve.formats.preprocess import Preprocessor
from resnet_serve.server.decode import gpu as gpu_decode
from resnet_serve.server.errors import ServeError
from resnet_serve.server.outcomes import Outcome

MIB: Final = 1024 * 1024
# How long a decode waits for room when its request has no deadline.
DEFAULT_WAIT_S: Final = 10.0


def decode_memory_exhausted(message: str) -> ServeError:
    return ServeError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, outcome=Outcome.QUEUE_FULL)


@dataclass
class _Waiter:
    cost: int
    future: asyncio.Future[None]
    granted: bool = False


@dataclass
class DecodeBudget:
    """Bytes of decode memory, shared by every model; thread-safe (pool threads try, the loop waits)."""

    capacity: int
    _used: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiters: deque[_Waiter] = field(default_factory=deque)

    @classmethod
    def of_mib(cls, mib: int) -> DecodeBudget:
        return cls(mib * MIB)

    @property
    def used(self) -> int:
        return self._used

    def try_acquire(self, nbytes: int) -> bool:
        """Take `nbytes` if they fit now and nobody is waiting before us (first come, first served)."""
        with self._lock:
            if self._waiters or self._used + nbytes > self.capacity:
                return False
            self._used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes
            self._grant()

    def _grant(self) -> None:
        # Called with the lock held: wake the waiters at the head of the line whose cost now fits.
        while self._waiters and self._used + self._waiters[0].cost <= self.capacity:
            waiter = self._waiters.popleft()
            waiter.granted = True
            self._used += waiter.cost
            loop = waiter.future.get_loop()
            loop.call_soon_threadsafe(_resolve, waiter.future)

    async def acquire(self, nbytes: int, timeout: float | None) -> None:
        """Wait for `nbytes`, at most `timeout` seconds (None: DEFAULT_WAIT_S); RESOURCE_EXHAUSTED after."""
        if nbytes > self.capacity:
            raise decode_memory_exhausted(
                f"decoding this image needs {_mib(nbytes)} MiB, more than the server's whole decode "
                f"budget (max_decode_memory_mib={self.capacity // MIB}); send a smaller image"
            )
        waiter = _Waiter(nbytes, asyncio.get_running_loop().create_future())
        with self._lock:
            if not self._waiters and self._used + nbytes <= self.capacity:
                self._used += nbytes
                return
            self._waiters.append(waiter)
        wait = DEFAULT_WAIT_S if timeout is None else max(0.0, timeout)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), wait)
        except BaseException as exc:
            with self._lock:
                if waiter.granted:  # granted while timing out or cancelled: give it back
                    self._used -= nbytes
                    self._grant()
                else:
                    self._waiters.remove(waiter)
                    self._grant()  # a large waiter leaving may let smaller ones behind it in
            if isinstance(exc, TimeoutError):
                raise decode_memory_exhausted(
                    f"the server's decode memory (max_decode_memory_mib={self.capacity // MIB}) stayed "
                    f"full for {wait:.3g} s; this image needs {_mib(nbytes)} MiB to decode; retry later"
                ) from None
            raise


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.0f}" if nbytes >= 10 * MIB else f"{nbytes / MIB:.1f}"


async def preprocess_image(
    pre: Preprocessor, pool: Executor | None, data: bytes, timeout: float | None
) -> np.ndarray:
    """One encoded image → the model's input row, within the decode budget (the preprocessor's gate)."""
    loop = asyncio.get_running_loop()
    try:
        row: np.ndarray = await loop.run_in_executor(pool, pre, data)
        return row
    except DecodeDeferred as deferred:
        out = deferred.header
    budget = pre.gate
    assert isinstance(budget, DecodeBudget)
    await budget.acquire(out.cost, timeout)
    if pool is None:
        try:
            return await loop.run_in_executor(None, pre.finish, out)
        finally:
            budget.release(out.cost)
    # Released when the decode itself ends, not when the request does: a cancelled request's decode may
    # still be running in its thread, holding the memory.
    try:
        done = pool.submit(pre.finish, out)
    except BaseException:  # the pool is shut down: nothing will run, so nothing holds the memory
        budget.release(out.cost)
        raise
    done.add_done_callback(lambda _: budget.release(out.cost))
    return await asyncio.wrap_future(done)


async def preprocess_each(
    pre: Preprocessor, pool: Executor | None, images: Sequence[bytes], timeout: float | None
) -> list[np.ndarray | Exception]:
    """Every image of a request, concurrently: its input row, or the exception it failed with."""
    if isinstance(pre, Preprocessor) and pre.limits.decoder == "nvimgcodec":
        return await _gpu_batch(pre, pool, images, timeout)
    results = await asyncio.gather(
        *(preprocess_image(pre, pool, data, timeout) for data in images), return_exceptions=True
    )
    return [_exception_or_row(r) for r in results]


async def preprocess_images(
    pre: Preprocessor, pool: Executor | None, images: Sequence[bytes], timeout: float | None
) -> list[np.ndarray]:
    """Every image of a request; the first failure propagates (KServe BYTES is all or none)."""
    rows = await preprocess_each(pre, pool, images, timeout)
    for row in rows:
        if isinstance(row, Exception):
            raise row
    return rows  # type: ignore[return-value]


_NOT_YET: Final = RuntimeError("not preprocessed")  # replaced before the list is returned


def _exception_or_row(result: np.ndarray | BaseException) -> np.ndarray | Exception:
    if isinstance(result, BaseException) and not isinstance(result, Exception):
        raise result  # cancellation and the like end the request
    return result


async def _gpu_batch(
    pre: Preprocessor, pool: Executor | None, images: Sequence[bytes], timeout: float | None
) -> list[np.ndarray | Exception]:
    """nvImageCodec: headers (allowlist, limits) on the CPU, the request's JPEGs as one GPU batch, the rest
    of the pipeline on the CPU; other formats take the CPU path."""
    loop = asyncio.get_running_loop()
    headers = await asyncio.gather(
        *(loop.run_in_executor(pool, pre.inspect, data) for data in images), return_exceptions=True
    )
    out: list[np.ndarray | Exception] = [
        _exception_or_row(h) if isinstance(h, BaseException) else _NOT_YET for h in headers
    ]
    inspected = {i: h for i, h in enumerate(headers) if isinstance(h, Header)}
    jpegs = [i for i, h in inspected.items() if h.format == "JPEG"]
    others = [i for i, h in inspected.items() if h.format != "JPEG"]
    rest = asyncio.gather(
        *(preprocess_image(pre, pool, images[i], timeout) for i in others), return_exceptions=True
    )
    if jpegs:
        batch = [inspected[i] for i in jpegs]
        # Full-size RGB on the host (3 bytes per pixel) and Pillow's copy of it (4): 7 bytes per pixel.
        cost = sum(h.declared[0] * h.declared[1] * 7 for h in batch)
        budget = pre.gate
        if isinstance(budget, DecodeBudget):
            await budget.acquire(cost, timeout)
        try:
            rows = await loop.run_in_executor(pool, gpu_decode.finish_batch, pre, batch)
        finally:
            if isinstance(budget, DecodeBudget):
                budget.release(cost)
        for i, row in zip(jpegs, rows, strict=True):
            out[i] = row
    for i, result in zip(others, await rest, strict=True):
        out[i] = _exception_or_row(result)
    return out
