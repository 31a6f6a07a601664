"""The engine's side of every worker's socket: requests into the batchers, answers back, and the state every
worker mirrors.

For each INFER the engine looks the version up, views the request's tensors where the worker wrote them (its
arena, mapped here once) and submits them to that version's batcher, so batches form from every worker's
requests under one queue and one admission per model; the outputs are written into the block the worker set
aside and only their places go back in the RESULT. A CANCEL withdraws a request still queued. CALLs (model
control, shared-memory registrations, statistics) run here, on the server's one manager and registry; after a
change the engine sends the new CATALOG (or REGIONS) to every worker before it answers the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import threading
from typing import Any, cast

import numpy as np

from resnet_serve.server.batching.batcher import BatchResult, DynamicBatcher, Outcome
from resnet_serve.server.errors import unavailable
from resnet_serve.server.ipc import messages as m
from resnet_serve.server.ipc.arena import MappedArena
from resnet_serve.server.ipc.channel import CorruptStream, Frames, Message, frame
from resnet_serve.server.ipc.failures import failure_of
from resnet_serve.server.ipc.places import SLOTS, QueuePlaces
from resnet_serve.server.models.catalog import Catalog, EntryView, VersionView
from resnet_serve.server.models.manager import ModelManager
from resnet_serve.server.models.served import ServedModel
from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.observability.model_metrics import ModelStatistics
from resnet_serve.server.observability.totals import ServerMetricsState
from resnet_serve.server.shm.registry import SharedMemoryRegistry

log = logging.getLogger(__name__)

_ALIGN = 64
_READ_BYTES = 1 << 20


class WorkerLink:
    """The engine's end of one worker's socket, with that worker's arena mapped.

    A thread of its own reads the socket: an INFER is looked up and queued on the version's batcher right
    there (`DynamicBatcher.enqueue`), and the batcher's worker thread sends the batch's answers back (this
    link is the batcher's `Sink`), one write per batch; the engine's event loop sees only the other messages.
    An INFER that a read brought alone may run on this thread, when its batcher is idle and has no queue
    delay (`enqueue(inline=True)`).
    """

    def __init__(self, host: EngineHost, index: int, sock: socket.socket, arena: MappedArena) -> None:
        self.host = host
        self.index = index
        self.arena = arena
        self.pid = 0
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        self._send_lock = threading.Lock()
        self._requests: dict[int, list[Any]] = {}  # rid → [batcher's handle, batcher], until answered
        self._broken = False
        self._reader = threading.Thread(target=self._read, name=f"engine-link-{index}", daemon=True)

    def start(self) -> None:
        self._reader.start()

    # ------------------------------------------------------------------------------------------ sending

    def send(self, message: Message) -> None:
        self._write(frame(message))

    def _write(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError:  # the worker is gone: its reader thread reports it
            self._broken = True

    # --------------------------------------------------------------------------------- the reader thread

    def _read(self) -> None:
        frames = Frames()
        sock = self._sock
        # One buffer for every read: `recv(n)` would allocate n bytes per call, which for n above glibc's
        # mmap threshold (128 KiB) is an mmap and munmap, and page faults, per read.
        buffer = bytearray(_READ_BYTES)
        view = memoryview(buffer)
        try:
            while True:
                count = sock.recv_into(buffer)
                if not count:
                    break
                messages = frames.feed(view[:count])
                # A request that came alone may run on this thread when its batcher is idle (no queue
                # delay): one thread hand-off less. With more in this read, they queue and batch together.
                lone = len(messages) == 1
                for message in messages:
                    try:
                        self._dispatch(message, lone)
                    except Exception:
                        log.exception("worker %d: failed to handle a %r message", self.index, message[0])
        except CorruptStream:  # before OSError, of which it is one: a bug to report, not a worker's exit
            log.exception("worker %d sent a corrupt stream", self.index)
        except OSError as exc:
            log.debug("worker %d's socket: %s", self.index, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the engine is exiting
            self._loop.call_soon_threadsafe(self._lost)

    def _dispatch(self, message: Message, lone: bool = False) -> None:
        kind = message[0]
        if kind == m.INFER:
            _, rid, name, version, tensors, out, timeout_s, slot = message
            places = self.host.places
            if places is not None and 0 <= slot < SLOTS:
                # Off the socket: from here the request is queued, running or refused, and the depth counts
                # it when queued. Counted first, so that the place is never counted twice, at worst a moment
                # not at all (the batcher's own admission is the rule; server/ipc/places.py).
                places.received(self.index, slot)
            self._infer(rid, name, version, tensors, out, timeout_s, lone)
        elif kind == m.CANCEL:
            entry = self._requests.get(message[1])
            if entry is not None and entry[0] is not None and entry[1].withdraw(entry[0]):
                self._requests.pop(message[1], None)
                self.send((m.ERROR, message[1], "CANCELLED", "the request was cancelled", None))
        elif kind == m.EXPIRE:
            entry = self._requests.get(message[1])
            if entry is not None and entry[0] is not None and entry[1].withdraw(entry[0]):
                self._requests.pop(message[1], None)
                self.send((m.ERROR, message[1], *failure_of(entry[1].expired_error())))
        else:
            self._loop.call_soon_threadsafe(self._on_loop_message, message)

    def _infer(
        self,
        rid: int,
        name: str,
        version: str,
        tensors: list[tuple[str, str, tuple[int, ...], Any]],
        out: tuple[int, int] | None,
        timeout_s: float | None,
        inline: bool = False,
    ) -> None:
        entry: list[Any] = [None, None]
        try:
            model = self.host.manager.get(name, version, count=False)  # the worker counted its lookup
            arena = self.arena
            inputs: dict[str, np.ndarray] = {}
            for key, dtype, shape, data in tensors:
                if type(data) is int:
                    inputs[key] = arena.array(data, dtype, shape)
                elif isinstance(data, np.ndarray):
                    inputs[key] = data
                else:
                    inputs[key] = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
            batcher = model.batcher
            assert isinstance(batcher, DynamicBatcher)  # the engine's models are this process's
            entry[1] = batcher
            self._requests[rid] = entry
            entry[0] = batcher.enqueue(inputs, timeout_s, self, (rid, out), inline)
        except Exception as exc:
            self._requests.pop(rid, None)
            self.send((m.ERROR, rid, *failure_of(exc)))

    # ------------------------------------------------------------------- the batcher's thread (Sink)

    def deliver(self, outcomes: list[Outcome]) -> None:
        """A batch's answers for this worker, in one write."""
        parts = []
        for pending, outcome in outcomes:
            rid, out = cast(tuple[int, tuple[int, int] | None], pending.tag)
            self._requests.pop(rid, None)
            if isinstance(outcome, BatchResult):
                outputs = self._place(outcome.outputs, out)
                message: Message = (
                    m.RESULT,
                    rid,
                    outputs,
                    outcome.queue_s,
                    outcome.compute_s,
                    outcome.batch_size,
                )
            else:
                message = (m.ERROR, rid, *failure_of(outcome))
            parts.append(frame(message))
        self._write(b"".join(parts))

    def _place(
        self, outputs: dict[str, np.ndarray], out: tuple[int, int] | None
    ) -> list[tuple[str, str, tuple[int, ...], Any]]:
        """Each output written into the worker's out block when it fits (its place relative to the block),
        else inline."""
        placed: list[tuple[str, str, tuple[int, ...], Any]] = []
        cursor = 0
        for key, array in outputs.items():
            if out is not None and self.arena.write(out[0] + cursor, out[1] - cursor, array):
                placed.append((key, array.dtype.str, array.shape, cursor))
                cursor += -(-array.nbytes // _ALIGN) * _ALIGN
            else:
                data = array if array.dtype.hasobject else array.tobytes()
                placed.append((key, array.dtype.str, array.shape, data))
        return placed

    # ----------------------------------------------------------------------------------- the event loop

    def _on_loop_message(self, message: Message) -> None:
        kind = message[0]
        if kind == m.CALL:
            _, rid, op, args = message
            task = self._loop.create_task(self.host.run_call(self, rid, op, args))
            self.host.track(task)
        elif kind == m.READY:
            self.ready.set()
        elif kind == m.METRICS:
            self.host.metrics_arrived(message[1], message[2])
        else:
            log.warning("worker %d sent an unknown message %r", self.index, kind)

    def _lost(self) -> None:
        self._broken = True
        for handle, batcher in list(self._requests.values()):
            if handle is not None:
                batcher.withdraw(handle)  # the worker is gone: its queued requests cost no compute
        self._requests.clear()
        self._sock.close()
        self.closed.set()
        self.host.link_lost(self)


class EngineHost:
    """The server's one model manager, registry and metrics, serving every worker's link."""

    def __init__(
        self,
        manager: ModelManager,
        registry: SharedMemoryRegistry,
        metrics: ServerMetrics,
        places: QueuePlaces | None = None,
    ) -> None:
        self.manager = manager
        self.places = places
        # id(ServedModel) → its row in `places`, and the version itself (held, so that its id is not a new
        # version's while it is here)
        self._slots: dict[int, tuple[int, ServedModel]] = {}
        self.registry = registry
        self.metrics = metrics
        self.links: dict[int, WorkerLink] = {}
        self._ids = itertools.count(1)
        self._pulls: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        manager.add_listener(self.broadcast_catalog)

    def attach(self, index: int, sock: socket.socket, arena: MappedArena) -> WorkerLink:
        """Serve a new worker's socket; it gets the registry's regions and the catalog first."""
        link = WorkerLink(self, index, sock, arena)
        self.links[index] = link
        for status in self.registry.status():
            link.send((m.REGIONS, m.REGISTER, (status.name, status.key, status.offset, status.byte_size)))
        link.send((m.CATALOG, self.catalog()))
        link.start()
        return link

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def link_lost(self, link: WorkerLink) -> None:
        if self.links.get(link.index) is link:
            del self.links[link.index]

    def catalog(self) -> Catalog:
        manager = self.manager
        entries = []
        live: dict[int, tuple[int, ServedModel]] = {}
        for name, entry in manager._entries.items():
            entries.append(
                EntryView(
                    name=name,
                    settings=entry.settings,
                    versions=tuple(VersionView.of(m, self._slot(m, live)) for m in entry.versions.values()),
                    statuses=tuple(entry.status.values()),
                    unloaded=entry.unloaded,
                )
            )
        for key in self._slots.keys() - live.keys():
            retired = self._slots[key][1].batcher
            if isinstance(retired, DynamicBatcher):
                retired.depth_hook = None  # its row may be another version's from now on
        self._slots = live  # a retired version's slot is free again
        return Catalog(tuple(entries), manager._accepting)

    def _slot(self, model: ServedModel, live: dict[int, tuple[int, ServedModel]]) -> int:
        """The version's row in the shared table of queue places (its batcher writes its depth there); -1:
        none."""
        if self.places is None:
            return -1
        known = self._slots.get(id(model))
        if known is not None:
            slot = known[0]
        else:
            used = {s for s, _ in self._slots.values()} | {s for s, _ in live.values()}
            slot = next((s for s in range(SLOTS) if s not in used), -1)
            if slot < 0:
                return -1
            batcher = model.batcher
            if isinstance(batcher, DynamicBatcher):
                places = self.places
                places.set_depth(slot, batcher.queue_depth)
                batcher.depth_hook = lambda depth: places.set_depth(slot, depth)
        live[id(model)] = (slot, model)
        return slot

    def broadcast_catalog(self) -> None:
        catalog = self.catalog()
        for link in list(self.links.values()):
            link.send((m.CATALOG, catalog))

    def _broadcast_regions(self, op: str, args: tuple[Any, ...]) -> None:
        for link in list(self.links.values()):
            link.send((m.REGIONS, op, args))

    async def run_call(self, link: WorkerLink, rid: int, op: str, args: tuple[Any, ...]) -> None:
        try:
            value = await self._call(op, args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not hasattr(exc, "code"):
                log.exception("the engine failed on a %s call", op)
            link.send((m.FAIL, rid, *failure_of(exc)))
        else:
            link.send((m.REPLY, rid, value))

    async def _call(self, op: str, args: tuple[Any, ...]) -> Any:
        registry = self.registry
        if op == m.LOAD:
            name, override = args
            await self.manager.load(name, override=override)
        elif op == m.UNLOAD:
            await self.manager.unload(*args)
        elif op == m.REGISTER:
            registry.register(*args)
            self._broadcast_regions(op, args)
        elif op == m.UNREGISTER:
            registry.unregister(*args)
            self._broadcast_regions(op, args)
        elif op == m.REGISTER_CUDA:
            await asyncio.to_thread(registry.register_cuda, *args)
            self._broadcast_regions(op, args)
        elif op == m.UNREGISTER_CUDA:
            registry.unregister_cuda(*args)
            self._broadcast_regions(op, args)
        elif op == m.STATISTICS:
            return await self.statistics(args[0])
        else:
            raise unavailable(f"the engine does not know the call {op!r}")
        return None

    # ------------------------------------------------------------------------------------------ metrics

    async def pull_metrics(self, timeout_s: float = 2.0) -> list[ServerMetricsState]:
        """Every live worker's metrics export (a worker that does not answer in time is left out)."""
        loop = asyncio.get_running_loop()
        futures = []
        for link in list(self.links.values()):
            rid = next(self._ids)
            future: asyncio.Future[Any] = loop.create_future()
            self._pulls[rid] = future
            futures.append(future)
            link.send((m.PULL_METRICS, rid))
        try:
            done, _ = await asyncio.wait(futures, timeout=timeout_s) if futures else (set(), set())
        finally:
            for rid in [r for r, f in self._pulls.items() if f in futures]:
                self._pulls.pop(rid, None)
        return [f.result() for f in done if not f.cancelled() and f.exception() is None]

    def metrics_arrived(self, rid: int, state: Any) -> None:
        future = self._pulls.pop(rid, None)
        if future is not None and not future.done():
            future.set_result(state)

    async def statistics(self, keys: list[tuple[str, str]]) -> list[ModelStatistics]:
        """The server's totals (the engine's batches, every worker's requests) of these versions."""
        totals = self.metrics.totals(await self.pull_metrics())
        return [(totals.models.get(key) or self.metrics.model(*key)).statistics() for key in keys]
