"""One inference request's bookkeeping, written once for both APIs (our image API and KServe v2).

Each API decodes its own request and encodes its own response; everything between is here:

    with request_scope(request_id), Call("ModelInfer", name, version, lookup) as call:
        call.admit()                                               # a place in the queue, before any work
        inputs = decode(call.model, request)                       # the API's own decoding
        result = await call.infer(inputs, timeout_s, rows)         # the model's batcher
        return encode(call.model, result)                          # the API's own encoding

`Call` looks the model version up (a refusal is access-logged, and counted by the manager), holds the
version's in-flight gauge while the request runs, and when it ends records the outcome in the metrics and
the access log. `admit` claims the request's place in the model's queue before the API decodes anything
(a full queue refuses it at no cost); the place is given back if the request fails before it is queued.
A failure leaves it as the status the client gets (`errors.status_of`, which logs an
unexpected one with the request id still in scope).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

import numpy as np

from resnet_serve.server.batching.batcher import BatchResult, Ticket
from resnet_serve.server.errors import ServeError, outcome_of, refusal_outcome, status_of
from resnet_serve.server.models.served import ServedModel
from resnet_serve.server.observability.logging import access_log
from resnet_serve.server.outcomes import Outcome

# A request cancelled this close to its deadline was cancelled by the deadline (`Call.infer`).
DEADLINE_SLACK_S = 0.002
DEADLINE_SLACK_SHARE = 0.05
DEADLINE_SLACK_MAX_S = 0.1


class Call:
    """One request to one model version, from lookup to outcome: `with Call(...) as call:` around its work.

    A context manager class rather than a generator: it is on every request's path."""

    __slots__ = (
        "_count",
        "_deadline",
        "_end",
        "_gauge",
        "_result",
        "_rows",
        "_summary",
        "_ticket",
        "model",
        "preprocess_s",
        "rpc",
        "start",
    )

    def __init__(
        self,
        rpc: str,
        name: str,
        version: str,
        lookup: Callable[[], ServedModel],
        *,
        count: bool = True,
    ) -> None:
        """`lookup` returns the model version the request goes to or raises (ModelManager.get and any
        checks that refuse a request before it counts). `count=False`: the caller records each item of the
        request in the metrics itself (ClassifyBatch) and ends it with `summary`."""
        self.rpc = rpc
        self.start = time.perf_counter()
        self.preprocess_s: float | None = None
        self._count = count
        self._result: BatchResult | None = None
        self._rows = 1
        self._summary: tuple[Outcome, int | None, str | None] = (Outcome.SUCCESS, None, None)
        self._ticket: Ticket | None = None
        self._end: float | None = None
        self._deadline: float | None = None
        try:
            self.model = lookup()
        except Exception as exc:
            error = status_of(exc, rpc)
            total = time.perf_counter() - self.start
            access_log(name, version, refusal_outcome(error), total, detail=error.message)
            if error is not exc:
                raise error from None
            raise

    def admit(self, places: int = 1) -> Ticket:
        """Claim `places` in the model's queue before decoding (raises ServeError UNAVAILABLE when it is
        full); `infer` fills them, and those left are given back when the call ends."""
        self._ticket = self.model.batcher.reserve(places)
        return self._ticket

    async def infer(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None, rows: int = 1
    ) -> BatchResult:
        """Run the request's `rows` inferences on the model's batcher; its timings become the request's."""
        if timeout_s is not None:
            # A client's own deadline runs from before the request reached the server, so its cancel comes
            # a little before this one: the slack, up to 5 % of the time it gave (at most 0.1 s).
            slack = min(DEADLINE_SLACK_MAX_S, max(DEADLINE_SLACK_S, timeout_s * DEADLINE_SLACK_SHARE))
            self._deadline = time.perf_counter() + timeout_s - slack
        self._result = await self.model.infer(inputs, timeout_s, self._ticket)
        self._rows = rows
        return self._result

    def elapsed(self) -> float:
        """Seconds since the request started, as the metrics and the access log will record them: the first
        call fixes the request's end, so a duration the answer reports is the one the server counts."""
        if self._end is None:
            self._end = time.perf_counter()
        return self._end - self.start

    def summary(self, outcome: Outcome, batch_size: int | None, detail: str | None = None) -> None:
        """The access-log line of a request whose items were counted one by one (`count=False`)."""
        self._summary = (outcome, batch_size, detail)

    def __enter__(self) -> Call:
        self._gauge = self.model.metrics.in_flight()
        self._gauge.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        model = self.model
        metrics = model.metrics
        total = (self._end if self._end is not None and exc is None else time.perf_counter()) - self.start
        error: ServeError | None = None
        try:
            if exc is None:
                result = self._result
                if self._count and result is not None:
                    metrics.request_done(
                        Outcome.SUCCESS,
                        total,
                        result.queue_s,
                        self.preprocess_s,
                        result.compute_s,
                        self._rows,
                    )
                    access_log(model.name, model.version, Outcome.SUCCESS, total, result.batch_size)
                else:
                    outcome, batch_size, detail = self._summary
                    access_log(model.name, model.version, outcome, total, batch_size, detail)
                return
            if isinstance(exc, Exception):
                error = status_of(exc, self.rpc)
                outcome, detail = error.outcome, error.message
            else:  # cancelled: the client went away, nobody reads a status
                outcome, detail = outcome_of(exc), None
                if self._deadline is not None and time.perf_counter() >= self._deadline:
                    # grpc.aio cancels the call at the client's deadline, often before the batcher's own
                    # timer answers it: counted as what the client saw, DEADLINE_EXCEEDED
                    outcome = Outcome.DEADLINE_EXCEEDED
            if self._count:
                metrics.request_done(outcome, total, preprocess_s=self.preprocess_s)
            access_log(model.name, model.version, outcome, total, detail=detail)
        finally:
            if self._ticket is not None:
                self._ticket.release()
            self._gauge.__exit__(None, None, None)
        if error is not None and error is not exc:
            raise error from None
