"""Dynamic batching: requests from many clients are queued per model version and run as whole batches.

Semantics (docs/server.md, "Batching"):

* A request carries one or more rows (its inputs' leading dimension). A model without a batch dimension
  (max_batch_size 0, Triton's meaning) takes inputs of its own shape, whole: each request is one inference and
  runs on its own, never stacked with another. Requests are never split: a batch is
  a run of whole requests taken from the head of the queue in arrival order, at most `max_batch_size` rows.
  A request with more rows than `max_batch_size` is refused with INVALID_ARGUMENT.
* An instance that becomes free dispatches at once when the queue holds `max_batch_size` rows, when a prefix
  of the queue adds up to a preferred batch size (the largest one it can form), or when the oldest request
  has waited `max_queue_delay`; otherwise it waits for more requests up to that moment. With a delay of 0 a
  lone request runs immediately.
* The queue holds at most `max_queue_size` requests; beyond that `submit` fails at once with UNAVAILABLE
  (as Triton does), so overload is visible to clients instead of growing latency without bound.
* Admission comes before work: `reserve` claims a place in the queue for a request that still has to be
  decoded, and `submit(..., ticket)` fills it. Queued requests plus unfilled places never exceed
  `max_queue_size`, so a request refused for a full queue costs no decoding (at 10x overload an image
  decoded and then refused cost ~3.5 ms of server CPU, issue #15). A ticket not filled is released.
* A request's deadline (its timeout) bounds its time in the queue: if it passes before the request is taken
  into a batch, the request is dropped without compute and fails with DEADLINE_EXCEEDED. Once its batch has
  started, it completes. A cancelled request (its awaiting task cancelled, e.g. the client went away)
  leaves the queue and costs no compute.
* Each execution instance is one backend on its own worker thread; the worker forms its batch, stacks its
  rows in buffers it reuses (staging.py), runs it and completes the requests' futures on their event loop
  with one `call_soon_threadsafe` per batch.
* A request `enqueue`d from another thread with `inline=True` (the engine process's socket readers, for a
  request that arrived alone) runs on that thread at once when nothing is queued, the model has no queue
  delay and an instance is free: the instance is lent to the caller for that one batch (its lock), which
  saves waking its worker thread, the largest part of a lone request's hand-off. Its worker takes nothing
  from the queue until the instance comes back (a batch taken out to wait for it would free places in the
  queue that no compute freed); `join` waits for a lent instance too.
* A backend exception fails that batch's requests with INTERNAL; the worker keeps serving.
* On Linux each worker thread runs under the SCHED_BATCH scheduling policy (`_batch_policy`): woken by a
  request while the event loop thread holds the GIL, it no longer preempts that thread only to find the GIL
  taken and sleep again; it runs when the loop thread waits, or on another core when one is free, and keeps
  its fair share of the CPU. On one core under load that cut the server's CPU per small request by ~15 %
  (docs/benchmarking.md, "The serving floor").
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from resnet_serve.runtime.base import Backend, BackendInfo
from resnet_serve.server.batching.staging import Staging
from resnet_serve.server.config import BatchingConfig
from resnet_serve.server.errors import (
    ServeError,
    deadline_exceeded,
    internal,
    invalid_argument,
    queue_full,
    unavailable,
)
from resnet_serve.server.observability.model_metrics import ModelMetrics

log = logging.getLogger(__name__)

_QUEUED, _TAKEN, _GONE = 0, 1, 2


@dataclass(frozen=True)
class BatchResult:
    """One request's share of an executed batch, with where its time went (seconds)."""

    outputs: dict[str, np.ndarray]  # this request's rows of every output (views into the batch's outputs)
    queue_s: float  # enqueue → its batch started
    compute_s: float  # the whole batch's backend time
    batch_size: int  # rows in the executed batch


Outcome = tuple["_Pending", BatchResult | ServeError]


class Sink(Protocol):
    """Where `enqueue`d requests' outcomes go: `deliver` is called on the batcher's worker thread, once per
    batch with that batch's outcomes for this sink (the engine process sends them to a worker process)."""

    def deliver(self, outcomes: list[Outcome]) -> None: ...


class _Pending:
    __slots__ = ("deadline", "enqueued", "future", "inputs", "loop", "rows", "state", "tag", "timer")

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        loop: asyncio.AbstractEventLoop | Sink,
        future: asyncio.Future[BatchResult] | None,
        deadline: float | None,
        tag: object = None,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.loop = loop  # an event loop (its future is completed there) or a Sink
        self.future = future
        self.tag = tag  # the Sink's name for the request
        self.enqueued = time.perf_counter()
        self.deadline = deadline  # perf_counter time, or None
        self.state = _QUEUED
        self.timer: asyncio.TimerHandle | None = None


class _Instance:
    """One execution instance: its backend, the buffers its batches are stacked in, and the lock held by
    whichever thread runs it (its worker, or a caller it is lent to)."""

    __slots__ = ("backend", "lock", "staging")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.staging = Staging()
        self.lock = threading.Lock()


def _batch_policy() -> None:
    """Put the calling thread under SCHED_BATCH (Linux; its nice value is kept): a woken thread of that policy
    does not preempt the running one, so a worker woken by `submit` waits for the event loop thread to let go
    of the GIL instead of taking the core from it, failing to get the GIL and sleeping again."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # 0: the calling thread
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted here: the default policy stays
        log.debug("batcher worker keeps the default scheduling policy: %s", exc)


def _complete(outcomes: list[Outcome]) -> None:
    # Runs on the requests' event loop: the only place their futures are touched.
    for pending, outcome in outcomes:
        if pending.future is None or pending.future.done():
            continue
        if isinstance(outcome, ServeError):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)


def full_queue(model: str, max_queue_size: int) -> ServeError:
    """The refusal of a request that finds the model's queue full (UNAVAILABLE, outcome queue_full)."""
    return queue_full(
        f"model {model!r} is overloaded: its queue is full (max_queue_size={max_queue_size}); retry later"
    )


def check_rows(model: str, rows: int, max_batch_size: int) -> None:
    """Refuse a request of more rows than a batch of `model` may hold (INVALID_ARGUMENT)."""
    if rows > max_batch_size:
        raise invalid_argument(
            f"request has {rows} rows but model {model!r} takes at most max_batch_size="
            f"{max_batch_size} per request"
        )


class Ticket:
    """Places claimed in a batcher's queue by `reserve`; each `submit` with it fills one. `with ticket:` (or
    `release`) gives back the places not filled, e.g. when decoding the request failed."""

    __slots__ = ("_release", "places")

    def __init__(self, release: Callable[[Ticket], None], places: int) -> None:
        self._release = release  # the queue's: gives back the places this ticket has not filled
        self.places = places

    def release(self) -> None:
        self._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class DynamicBatcher:
    """The queue and execution instances of one model version.

    `submit` is called on the event loop; everything else happens on the worker threads, one per backend.
    """

    def __init__(
        self,
        name: str,
        version: str,
        backends: Sequence[Backend],
        config: BatchingConfig,
        metrics: ModelMetrics,
    ) -> None:
        if not backends:
            raise ValueError("a batcher needs at least one backend instance")
        self.name = name
        self.version = version
        self.config = config
        self.info: BackendInfo = backends[0].info
        # A model without a batch dimension (max_batch_size 0) runs one request at a time.
        model_max = self.info.max_batch_size
        self.batched = model_max > 0
        self.max_batch_size = min(config.max_batch_size, model_max) if self.batched else 1
        self._preferred = sorted({s for s in config.preferred_batch_sizes if s <= self.max_batch_size})
        self._delay_s = config.max_queue_delay_ms / 1000.0
        self._timeout_s = config.timeout_ms / 1000.0 if config.timeout_ms > 0 else None
        self._metrics = metrics
        self._backends = list(backends)
        self._instances = [_Instance(backend) for backend in self._backends]
        self._queue: collections.deque[_Pending] = collections.deque()
        self._reserved = 0  # places claimed by tickets and not yet filled
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._running = 0  # batches being computed
        self._lent = 0  # instances lent to a caller's thread (`enqueue(inline=True)`)
        # Called with the queue's depth whenever it changes, on whichever thread changed it (the engine
        # process publishes it to the workers: server/ipc/places.py).
        self.depth_hook: Callable[[int], None] | None = None
        self._input_names = [spec.name for spec in self.info.inputs]
        self._input_set = frozenset(self._input_names)
        self._threads = [
            threading.Thread(
                target=self._work, args=(instance,), name=f"batcher-{name}-v{version}-{i}", daemon=True
            )
            for i, instance in enumerate(self._instances)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------------------------ event loop side

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being computed."""
        return not self._queue and self._running == 0

    def _depth_changed(self, depth: int) -> None:
        self._metrics.set_queue_depth(depth)
        if self.depth_hook is not None:
            self.depth_hook(depth)

    def reserve(self, places: int = 1) -> Ticket:
        """Claim `places` in the queue for requests about to be decoded; raises ServeError UNAVAILABLE when
        the queue (queued plus claimed) has no room for them all, or the batcher is closed."""
        with self._cond:
            self._admit_locked(places)
            self._reserved += places
        return Ticket(self._release, places)

    def _admit_locked(self, places: int) -> None:
        if self._closed:
            raise unavailable(f"model {self.name!r} version {self.version} is unloading or shutting down")
        if len(self._queue) + self._reserved + places > self.config.max_queue_size:
            raise full_queue(self.name, self.config.max_queue_size)

    def _release(self, ticket: Ticket) -> None:
        with self._cond:
            self._reserved -= ticket.places
            ticket.places = 0

    async def submit(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None = None, ticket: Ticket | None = None
    ) -> BatchResult:
        """Queue one request and wait for its rows of the outputs.

        `inputs` maps every model input name to an array whose leading dimension is the request's row count
        (the same for all inputs). `timeout_s` is the time left before the caller's deadline (e.g. the gRPC
        deadline); the model's configured `timeout_ms`, if any, also applies and the earlier one wins.

        Raises ServeError: INVALID_ARGUMENT (inputs do not fit the model or exceed max_batch_size),
        UNAVAILABLE (queue full or the model is being unloaded/shut down), DEADLINE_EXCEEDED (the deadline
        passed while queued), INTERNAL (the backend failed). Cancelling the awaiting task withdraws the
        request from the queue. A `ticket` from `reserve` with a place left fills that place (no second
        admission check).
        """
        rows = self._check(inputs)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchResult] = loop.create_future()
        timeout = self._timeout_s
        if timeout_s is not None:
            timeout = timeout_s if timeout is None else min(timeout, timeout_s)
        if timeout is not None and timeout <= 0:
            raise deadline_exceeded(f"deadline exceeded before model {self.name!r} could queue the request")
        deadline = None if timeout is None else time.perf_counter() + timeout
        pending = _Pending(inputs, rows, loop, future, deadline)
        self._queue_one(pending, ticket)
        if timeout is not None:
            pending.timer = loop.call_later(timeout, self._expire, pending)
        try:
            return await future
        except asyncio.CancelledError:
            self._withdraw(pending)
            raise
        finally:
            if pending.timer is not None:
                pending.timer.cancel()

    def enqueue(
        self,
        inputs: dict[str, np.ndarray],
        timeout_s: float | None,
        sink: Sink,
        tag: object,
        inline: bool = False,
    ) -> object:
        """Queue one request from any thread; its outcome goes to `sink.deliver` with `tag` (no event loop:
        the engine process's path). The request's deadline is checked when a batch takes it. Returns a
        handle for `withdraw`. Raises ServeError as `submit` does.

        `inline`: the caller's thread may run the request itself, before this returns, when nothing is
        queued, the model has no queue delay and an instance is free (see the module's docstring). Only a
        thread that may block for a batch's compute should ask."""
        rows = self._check(inputs)
        timeout = self._timeout_s
        if timeout_s is not None:
            timeout = timeout_s if timeout is None else min(timeout, timeout_s)
        if timeout is not None and timeout <= 0:
            raise deadline_exceeded(f"deadline exceeded before model {self.name!r} could queue the request")
        deadline = None if timeout is None else time.perf_counter() + timeout
        pending = _Pending(inputs, rows, sink, None, deadline, tag)
        instance = self._lend(pending) if inline and self._delay_s <= 0 else None
        if instance is None:
            self._queue_one(pending, None)
            return pending
        try:
            self._run_guarded(instance, [pending])
        finally:
            instance.lock.release()
            with self._cond:
                self._lent -= 1
                if self._queue:  # the instance's own worker waits for it to take what queued meanwhile
                    self._cond.notify_all()
        return pending

    def _lend(self, pending: _Pending) -> _Instance | None:
        """A free instance for `pending` to run on the caller's thread, taken (its lock held, the request
        counted running), or None: something is queued, or every instance is busy."""
        with self._cond:
            if self._queue:
                return None
            self._admit_locked(1)  # closed, or places reserved to the limit: refused as a queued one would be
            for instance in self._instances:
                if instance.lock.acquire(blocking=False):
                    pending.state = _TAKEN
                    self._running += 1
                    self._lent += 1
                    return instance
        return None

    def withdraw(self, handle: object) -> bool:
        """Take an `enqueue`d request out of the queue if no batch has taken it yet (True when it was)."""
        assert isinstance(handle, _Pending)
        return self._withdraw(handle)

    def _queue_one(self, pending: _Pending, ticket: Ticket | None) -> None:
        with self._cond:
            if ticket is not None and ticket.places > 0 and not self._closed:
                ticket.places -= 1
                self._reserved -= 1
            else:
                self._admit_locked(1)
            self._queue.append(pending)
            depth = len(self._queue)
            # Wake an idle worker only when this request can change its decision: the queue was empty (it
            # waits without a deadline), or a batch can go now (always, without a queue delay: no look at
            # the queue needed). Otherwise it is waiting for the head's delay to end, which this request
            # does not move: under load with a delay, waking it for every request cost a context switch and
            # a look at the queue each (docs/benchmarking.md).
            if self._lent:  # the worker of a lent instance may be the one woken, and it must wait
                self._cond.notify_all()
            elif depth == 1 or self._delay_s <= 0 or self._dispatchable(time.perf_counter()):
                self._cond.notify()
        self._depth_changed(depth)

    def _check(self, inputs: dict[str, np.ndarray]) -> int:
        if inputs.keys() != self._input_set:
            raise invalid_argument(
                f"model {self.name!r} expects inputs {self._input_names}, got {sorted(inputs)}"
            )
        rows = -1
        first = 1 if self.batched else 0  # without a batch dimension the whole shape is the model's
        for spec in self.info.inputs:
            arr = inputs[spec.name]
            if arr.dtype != spec.dtype:
                raise invalid_argument(
                    f"input {spec.name!r} of model {self.name!r} must be {spec.dtype}, got {arr.dtype}"
                )
            expected = spec.shape[first:]
            actual = arr.shape[first:]
            if arr.ndim != len(spec.shape) or any(
                e >= 0 and e != a for e, a in zip(expected, actual, strict=True)
            ):
                shown = ["N"] if self.batched else []
                shown += ["?" if d < 0 else str(d) for d in expected]
                raise invalid_argument(
                    f"input {spec.name!r} of model {self.name!r} must have shape [{', '.join(shown)}], "
                    f"got {list(arr.shape)}"
                )
            refusal = self._backends[0].input_refusal(spec.name, arr.shape)  # e.g. config.pbtxt's reshape
            if refusal is not None:
                raise invalid_argument(f"model {self.name!r}: {refusal}")
            if not self.batched:
                rows = 1
            elif rows == -1:
                rows = arr.shape[0]
            elif arr.shape[0] != rows:
                raise invalid_argument(f"inputs of model {self.name!r} disagree on the batch dimension")
        if rows < 1:
            raise invalid_argument(f"a request to model {self.name!r} needs at least one row, got {rows}")
        self.check_rows(rows)
        return rows

    def check_rows(self, rows: int) -> None:
        """Refuse a request of more rows than a batch may hold (INVALID_ARGUMENT); callers that must decode
        a request first (encoded images) call it before decoding."""
        check_rows(self.name, rows, self.max_batch_size)

    def _remove_locked(self, pending: _Pending) -> bool:
        if pending.state != _QUEUED:
            return False
        pending.state = _GONE
        self._queue.remove(pending)
        return True

    def _withdraw(self, pending: _Pending) -> bool:
        """Take a still-queued request out of the queue; False if a worker already took it."""
        with self._cond:
            removed = self._remove_locked(pending)
            depth = len(self._queue)
        if removed:
            self._depth_changed(depth)
        return removed

    def _expire(self, pending: _Pending) -> None:
        if self._withdraw(pending) and pending.future is not None and not pending.future.done():
            pending.future.set_exception(self.expired_error())

    def expired_error(self) -> ServeError:
        """What a request whose deadline passed while it was queued is answered."""
        return deadline_exceeded(f"deadline exceeded while queued for model {self.name!r}; not computed")

    def close(self) -> None:
        """Refuse new requests; the workers finish what is queued (at once, without waiting for delays)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abandon(self, message: str) -> int:
        """The end of a grace period: refuse new requests, answer every queued one UNAVAILABLE with `message`
        (none of them computed) and let the workers stop after the batches they are computing. Returns how
        many requests were answered so."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            for pending in dropped:
                pending.state = _GONE
            self._cond.notify_all()
        if dropped:
            self._depth_changed(0)
            error = unavailable(message)
            self._deliver([(p, error) for p in dropped])
        return len(dropped)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait (blocking) for the workers to finish after `close`; True when all have stopped."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            return False
        for instance in self._instances:  # one lent to a caller's thread is still computing
            if not instance.lock.acquire(timeout=-1 if end is None else max(0.0, end - time.monotonic())):
                return False
            instance.lock.release()
        return True

    # ---------------------------------------------------------------------------------------- worker side

    def _work(self, instance: _Instance) -> None:
        _batch_policy()
        while True:
            batch = self._next_batch(instance)
            if batch is None:
                return
            with instance.lock:  # lent to a caller's thread: wait for it to come back
                self._run_guarded(instance, batch)
            # Drop the finished batch before waiting for the next: its inputs may be views of a client's
            # shared memory, which must not stay mapped until this worker's next batch.
            del batch

    def _run_guarded(self, instance: _Instance, batch: list[_Pending]) -> None:
        """Run a taken batch on `instance` (its lock held); every request is answered, whatever fails."""
        try:
            self._run(instance.backend, instance.staging, batch)
        except Exception as exc:  # a bug outside the backend: answer the batch, keep the worker alive
            log.exception("model %s version %s: the worker failed on a batch", self.name, self.version)
            error = internal(f"model {self.name!r} version {self.version} failed: {exc}")
            self._deliver([(p, error) for p in batch])  # futures already answered are skipped

    def _next_batch(self, instance: _Instance) -> list[_Pending] | None:
        expired: list[Outcome] = []
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                if instance.lock.locked():
                    # Lent to a caller's thread: a batch taken now would leave the queue to wait for the
                    # instance, and its places would go to more requests than max_queue_size (the lender
                    # notifies when it gives the instance back).
                    self._cond.wait()
                    continue
                now = time.perf_counter()
                take = self._dispatchable(now)
                if take:
                    break
                self._cond.wait(self._queue[0].enqueued + self._delay_s - now)
            batch: list[_Pending] = []
            for _ in range(take):
                pending = self._queue.popleft()
                if pending.deadline is not None and pending.deadline <= now:
                    pending.state = _GONE
                    expired.append((pending, self.expired_error()))
                else:
                    pending.state = _TAKEN
                    batch.append(pending)
            depth = len(self._queue)
            self._running += 1
            if self._queue:
                self._cond.notify()  # another idle instance may take the rest
        self._depth_changed(depth)
        if expired:
            self._deliver(expired)
        return batch

    def _dispatchable(self, now: float) -> int:
        """How many requests from the head to dispatch now (0: keep waiting). Called with the lock held."""
        limit = self.max_batch_size
        fit = 0
        rows = 0
        preferred_fit = 0
        for pending in self._queue:
            if rows + pending.rows > limit:
                break
            rows += pending.rows
            fit += 1
            if rows in self._preferred:
                preferred_fit = fit
        full = fit < len(self._queue) or rows == limit
        if full or self._closed or now >= self._queue[0].enqueued + self._delay_s:
            return fit
        return preferred_fit

    def _run(self, backend: Backend, staging: Staging, batch: list[_Pending]) -> None:
        try:
            if batch:
                self._execute(backend, staging, batch)
        finally:
            with self._cond:
                self._running -= 1

    def _execute(self, backend: Backend, staging: Staging, batch: list[_Pending]) -> None:
        start = time.perf_counter()
        rows = sum(p.rows for p in batch)
        outcomes: list[Outcome] = []
        try:
            if len(batch) == 1:
                feeds = batch[0].inputs
                outputs = backend.infer(feeds)
            else:
                feeds = {n: staging.assemble(n, [p.inputs[n] for p in batch]) for n in self._input_names}
                outputs = backend.infer(feeds)
                # The staging buffers are overwritten by this worker's next batch, while the requests may
                # still be serialising their rows of the outputs.
                outputs = {k: v.copy() if staging.owns(v) else v for k, v in outputs.items()}
            bad = [name for name, out in outputs.items() if self.batched and out.shape[:1] != (rows,)]
            if bad:
                raise RuntimeError(f"outputs {bad} do not have the batch's {rows} rows")
            compute_s = time.perf_counter() - start
            self._metrics.batch_executed(rows, compute_s)
        except Exception as exc:
            if len(batch) > 1:
                # One request's data can fail the whole batch (a string the model cannot parse as a number):
                # each request then runs alone, so only one that fails on its own gets the error.
                log.warning(
                    "model %s version %s failed on a batch of %d requests (%s); running each alone",
                    self.name,
                    self.version,
                    len(batch),
                    " ".join(str(exc).split())[:200],
                )
                for pending in batch:
                    self._execute(backend, staging, [pending])
                return
            log.exception("model %s version %s failed on a batch of %d", self.name, self.version, rows)
            error = internal(f"model {self.name!r} version {self.version} failed: {exc}")
            outcomes = [(p, error) for p in batch]
        else:
            offset = 0
            for p in batch:
                if not self.batched or len(batch) == 1:  # one request: its outputs whole, no slicing
                    outcomes.append((p, BatchResult(outputs, start - p.enqueued, compute_s, rows)))
                    continue
                mine = {name: out[offset : offset + p.rows] for name, out in outputs.items()}
                offset += p.rows
                outcomes.append((p, BatchResult(mine, start - p.enqueued, compute_s, rows)))
        self._deliver(outcomes)

    @staticmethod
    def _deliver(outcomes: list[Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop | Sink, list[Outcome]] = {}
        if len(outcomes) == 1:  # most batches under light load: no grouping to do
            by_loop[outcomes[0][0].loop] = outcomes
        else:
            for outcome in outcomes:
                by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, items in by_loop.items():
            if not isinstance(loop, asyncio.AbstractEventLoop):
                try:
                    loop.deliver(items)
                except Exception:
                    log.exception("could not deliver %d result(s)", len(items))
                continue
            try:
                loop.call_soon_threadsafe(_complete, items)
            except RuntimeError:
                log.debug("event loop closed before %d result(s) could be delivered", len(items))
