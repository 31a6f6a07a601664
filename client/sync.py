"""The blocking client for the image API.

with Client("localhost:8001") as c:
    result = c.classify("cat.jpg", top_k=3)
    print(result.top.label, result.top.score)
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resnet_serve.client import channel, wire
from resnet_serve.client.channel import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    PROBE_TIMEOUT_S,
    USE_DEFAULT,
    RetryPolicy,
    TLSConfig,
    UseDefault,
    auth_metadata,
    channel_options,
)
from resnet_serve.client.images import ImageLike
from resnet_serve.client.results import Classification, ClassifyError, ModelInfo
from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc


class Client(wire.CallDefaults):
    """A connection to one server, or to several balanced round-robin. Thread-safe; reuse one per process
    rather than one per call.

    `target` is ``host:port``, several (``"a:8001,b:8001"`` or a list) or a name resolving to several
    addresses (``dns:///resnet-serve-headless:8001``); every request goes to the next healthy address, and
    one refused with UNAVAILABLE (a replica draining) is retried on another by `retry`.

    `timeout` is the default deadline in seconds for single and batch calls (None: no deadline); each call
    may override it. `retry` retries UNAVAILABLE with exponential backoff (None disables retries). `tls`
    switches to a TLS channel (`TLSConfig()` for the system's trust store). `token` is sent as
    `authorization: Bearer <token>` on every call, for a server started with `--auth-token-file`.
    """

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        model: str = "",
        version: str = "",
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe as a default
        tls: TLSConfig | None = None,
        options: Sequence[tuple[str, str | int]] = (),
        token: str | None = None,
    ) -> None:
        self._metadata = auth_metadata(token)
        opts = channel_options(retry, tls, options)
        address, opts = channel.balance(target, opts)
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=opts)
        else:
            self._channel = grpc.secure_channel(address, tls.credentials(), options=opts)
        self._stub = pb_grpc.ImageClassifierStub(self._channel)  # type: ignore[no-untyped-call]
        self.target = target if isinstance(target, str) else ",".join(target)
        self._tls = tls is not None
        self.model = model
        self.version = version
        self.timeout = timeout

    def classify(
        self,
        image: ImageLike,
        *,
        top_k: int = 5,
        model: str | None = None,
        version: str | None = None,
        request_id: str | None = None,
        timeout: float | UseDefault | None = USE_DEFAULT,
    ) -> Classification:
        """Classify one image. Raises ClassifyError on failure."""
        rid = request_id or wire.new_request_id()
        request = wire.classify_request(self._model(model), self._version(version), image, top_k, rid)
        start = time.perf_counter()
        try:
            response = self._stub.Classify(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise wire.rpc_error(exc, rid) from None
        return wire.classification(response, time.perf_counter() - start)

    def classify_batch(
        self,
        images: Sequence[ImageLike],
        *,
        top_k: int = 5,
        model: str | None = None,
        version: str | None = None,
        request_id: str | None = None,
        timeout: float | UseDefault | None = USE_DEFAULT,
    ) -> list[Classification | ClassifyError]:
        """Classify several images in one call: one result or error per image, in order.

        Raises ClassifyError only when the whole call fails.
        """
        rid = request_id or wire.new_request_id()
        request = wire.batch_request(self._model(model), self._version(version), images, top_k, rid)
        start = time.perf_counter()
        try:
            response = self._stub.ClassifyBatch(
                request, timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise wire.rpc_error(exc, rid) from None
        return wire.batch_results(response, len(request.images), time.perf_counter() - start)

    def classify_stream(
        self,
        images: Iterable[ImageLike],
        *,
        top_k: int = 5,
        model: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[tuple[int, Classification | ClassifyError]]:
        """Classify images over one bidirectional stream, yielding (input index, result) as results arrive.

        Results may come back out of order; the index says which input each belongs to. `images` is consumed
        lazily, so it may be a generator. `timeout` bounds the whole stream (default: none). An image that
        cannot be read or encoded yields a ClassifyError (INVALID_ARGUMENT) without reaching the server.
        """
        ledger = wire.StreamLedger(self._model(model), self._version(version), top_k)

        def requests() -> Iterator[pb.ClassifyRequest]:
            for i, image in enumerate(images):
                if (msg := ledger.request(i, image)) is not None:
                    yield msg

        try:
            for msg in self._stub.ClassifyStream(requests(), timeout=timeout, metadata=self._metadata):
                while ledger.local_errors:
                    yield ledger.local_errors.pop(0)
                yield ledger.result(msg)
        except grpc.RpcError as exc:
            raise wire.rpc_error(exc) from None
        while ledger.local_errors:
            yield ledger.local_errors.pop(0)

    def list_models(self, *, timeout: float | UseDefault | None = USE_DEFAULT) -> list[ModelInfo]:
        """The models the server serves, with their versions' states."""
        try:
            response = self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise wire.rpc_error(exc) from None
        return wire.models(response)

    def wait_until_ready(self, timeout: float = 10.0, *, fail_fast: bool = False) -> None:
        """Block until the channel connects; raises ClassifyError(UNAVAILABLE) after `timeout` seconds,
        naming the last connection failure. `fail_fast`: raise at the first failed connection attempt
        instead (connection refused, a TLS mismatch); without it a server still starting is waited for."""
        states: queue.SimpleQueue[grpc.ChannelConnectivity] = queue.SimpleQueue()
        watch = states.put
        self._channel.subscribe(watch, try_to_connect=True)
        end = time.monotonic() + timeout
        state = grpc.ChannelConnectivity.IDLE
        failed = False  # an attempt has failed: a timeout says why
        try:
            while state is not grpc.ChannelConnectivity.READY:
                failed = failed or state is grpc.ChannelConnectivity.TRANSIENT_FAILURE
                if failed and fail_fast:
                    raise ClassifyError(grpc.StatusCode.UNAVAILABLE, self._connect_failure())
                try:
                    state = states.get(timeout=max(0.0, end - time.monotonic()))
                except queue.Empty:
                    last = f"; last attempt: {self._connect_failure()}" if failed else ""
                    raise ClassifyError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"no server answered at {self.target} within {timeout:g}s{last}",
                    ) from None
        finally:
            self._channel.unsubscribe(watch)

    def _connect_failure(self) -> str:
        """Why the channel cannot connect, in gRPC's words: a call that fails at once says it."""
        probe = health_pb2_grpc.HealthStub(self._channel)  # type: ignore[no-untyped-call]
        try:
            probe.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S, wait_for_ready=False)
        except grpc.RpcError as exc:
            return channel.connect_failure(self.target, wire.rpc_error(exc).message, self._tls)
        return f"{self.target} answers now"  # connected meanwhile

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
