"""The asyncio client for the image API; same calls as `client.sync.Client`, awaited.

    async with AsyncClient("localhost:8001") as c:
        results = await asyncio.gather(*(c.classify(p) for p in paths))

Create it inside the running event loop that will use it (gRPC binds the channel to that loop).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from types import TracebackType

import grpc
import grpc.aio
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


class AsyncClient(wire.CallDefaults):
    """A connection to one server for asyncio code; see `client.sync.Client` for the arguments."""

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
            self._channel = grpc.aio.insecure_channel(address, options=opts)
        else:
            self._channel = grpc.aio.secure_channel(address, tls.credentials(), options=opts)
        self._stub = pb_grpc.ImageClassifierStub(self._channel)  # type: ignore[no-untyped-call]
        self.target = target if isinstance(target, str) else ",".join(target)
        self._tls = tls is not None
        self.model = model
        self.version = version
        self.timeout = timeout

    async def classify(
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
            response = await self._stub.Classify(
                request, timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise wire.rpc_error(exc, rid) from None
        return wire.classification(response, time.perf_counter() - start)

    async def classify_batch(
        self,
        images: Sequence[ImageLike],
        *,
        top_k: int = 5,
        model: str | None = None,
        version: str | None = None,
        request_id: str | None = None,
        timeout: float | UseDefault | None = USE_DEFAULT,
    ) -> list[Classification | ClassifyError]:
        """One result or error per image, in order; raises ClassifyError only when the whole call fails."""
        rid = request_id or wire.new_request_id()
        request = wire.batch_request(self._model(model), self._version(version), images, top_k, rid)
        start = time.perf_counter()
        try:
            response = await self._stub.ClassifyBatch(
                request, timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise wire.rpc_error(exc, rid) from None
        return wire.batch_results(response, len(request.images), time.perf_counter() - start)

    async def classify_stream(
        self,
        images: Iterable[ImageLike] | AsyncIterable[ImageLike],
        *,
        top_k: int = 5,
        model: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[int, Classification | ClassifyError]]:
        """Yield (input index, result) over one bidirectional stream as results arrive (maybe out of order).

        Images that cannot be read or encoded yield a ClassifyError (INVALID_ARGUMENT) locally.
        """
        ledger = wire.StreamLedger(self._model(model), self._version(version), top_k)

        async def requests() -> AsyncIterator[pb.ClassifyRequest]:
            if isinstance(images, AsyncIterable):
                i = 0
                async for image in images:
                    if (msg := ledger.request(i, image)) is not None:
                        yield msg
                    i += 1
            else:
                for i, image in enumerate(images):
                    if (msg := ledger.request(i, image)) is not None:
                        yield msg

        call = self._stub.ClassifyStream(requests(), timeout=timeout, metadata=self._metadata)
        try:
            async for msg in call:
                while ledger.local_errors:
                    yield ledger.local_errors.pop(0)
                yield ledger.result(msg)
        except grpc.RpcError as exc:
            raise wire.rpc_error(exc) from None
        finally:
            call.cancel()
        while ledger.local_errors:
            yield ledger.local_errors.pop(0)

    async def list_models(self, *, timeout: float | UseDefault | None = USE_DEFAULT) -> list[ModelInfo]:
        try:
            response = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise wire.rpc_error(exc) from None
        return wire.models(response)

    async def wait_until_ready(self, timeout: float = 10.0, *, fail_fast: bool = False) -> None:
        """Wait until the channel connects; raises ClassifyError(UNAVAILABLE) after `timeout` seconds,
        naming the last connection failure. `fail_fast`: raise at the first failed connection attempt
        instead (connection refused, a TLS mismatch), as a command run against a server that should be
        up wants; without it a server that is still starting is waited for."""
        import asyncio

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        state = self._channel.get_state(try_to_connect=True)
        failed = False  # an attempt has failed: a timeout says why
        while state is not grpc.ChannelConnectivity.READY:
            failed = failed or state is grpc.ChannelConnectivity.TRANSIENT_FAILURE
            if failed and fail_fast:
                raise ClassifyError(grpc.StatusCode.UNAVAILABLE, await self._connect_failure())
            left = end - loop.time()
            if left <= 0:
                last = f"; last attempt: {await self._connect_failure()}" if failed else ""
                raise ClassifyError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"no server answered at {self.target} within {timeout:g}s{last}",
                )
            with contextlib.suppress(TimeoutError):  # the loop's next turn reports the timeout
                await asyncio.wait_for(self._channel.wait_for_state_change(state), left)
            state = self._channel.get_state(try_to_connect=True)

    async def _connect_failure(self) -> str:
        """Why the channel cannot connect, in gRPC's words: a call that fails at once says it."""
        probe = health_pb2_grpc.HealthStub(self._channel)  # type: ignore[no-untyped-call]
        try:
            await probe.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S, wait_for_ready=False)
        except grpc.RpcError as exc:
            return channel.connect_failure(self.target, wire.rpc_error(exc).message, self._tls)
        return f"{self.target} answers now"  # connected meanwhile

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
