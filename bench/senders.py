"""One request of each protocol, timed by the load generator: the image API or the KServe v2 tensor API.

A sender knows its payloads and returns a Reply (status, and the server's own time split when the protocol
reports one); it never raises for a failed request, because errors are part of what a benchmark measures.
KServe requests go through the real tritonclient (a different client than ours, exactly what users run).
"""

from __future__ import annotations

import abc
import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from resnet_serve.bench.workload import random_tensors
from resnet_serve.client.aio import AsyncClient
from resnet_serve.client.channel import TLSConfig, balance, channel_options, connect_reason
from resnet_serve.client.results import Classification, ClassifyError

OK = "OK"
UNAVAILABLE = "UNAVAILABLE"  # what every request gets from a server that went away (connection refused)


@dataclass(frozen=True)
class ServerSplit:
    """Where a request's time went on the server, in seconds (mean over a batch request's images)."""

    queue_s: float
    preprocess_s: float
    compute_s: float
    batch_size: float


@dataclass(frozen=True)
class Reply:
    code: str  # "OK" or the gRPC status name
    server: ServerSplit | None = None


class Sender(abc.ABC):
    """Sends requests of one shape, cycling through its payloads."""

    batch_size: int = 1  # inferences per request
    description: str = ""

    @abc.abstractmethod
    async def send(self) -> Reply: ...

    async def counters(self) -> dict[str, float] | None:
        """Cumulative server-side counters, for protocols whose replies carry no timing (else None)."""
        return None

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        pass


class ImageSender(Sender):
    """Classify (or ClassifyBatch for batch_size > 1) with pre-encoded images, top-1, no retries."""

    def __init__(
        self,
        client: AsyncClient,
        images: list[bytes],
        batch_size: int = 1,
        timeout_s: float = 10.0,
        description: str = "",
    ) -> None:
        self._client = client
        self._images = itertools.cycle(images)
        self.batch_size = batch_size
        self._timeout = timeout_s
        self.description = description

    async def send(self) -> Reply:
        try:
            if self.batch_size == 1:
                result = await self._client.classify(next(self._images), top_k=1, timeout=self._timeout)
                return Reply(OK, _split([result]))
            images = [next(self._images) for _ in range(self.batch_size)]
            results = await self._client.classify_batch(images, top_k=1, timeout=self._timeout)
        except ClassifyError as exc:
            return Reply(exc.code.name)
        failed = [r for r in results if isinstance(r, ClassifyError)]
        if failed:
            return Reply(failed[0].code.name)
        return Reply(OK, _split([r for r in results if isinstance(r, Classification)]))

    async def close(self) -> None:
        await self._client.close()


def _split(results: list[Classification]) -> ServerSplit:
    n = len(results)
    return ServerSplit(
        queue_s=sum(r.timing.queue_us for r in results) / n / 1e6,
        preprocess_s=sum(r.timing.preprocess_us for r in results) / n / 1e6,
        compute_s=sum(r.timing.compute_us for r in results) / n / 1e6,
        batch_size=sum(r.timing.batch_size for r in results) / n,
    )


@dataclass(frozen=True)
class TensorModel:
    """What ModelMetadata/ModelConfig say about a KServe model's first input and output."""

    name: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch dimension when the model batches
    batches: bool
    output_name: str


class KServeSender(Sender):
    """ModelInfer through tritonclient's asyncio client, over gRPC (tritonclient.grpc.aio) or HTTP
    (tritonclient.http.aio, perf_analyzer's -i http), with tensors of the model's input shape and datatype."""

    def __init__(
        self,
        triton: Any,
        model: TensorModel,
        batch_size: int = 1,
        timeout_s: float = 10.0,
        transport: str = "grpc",
    ) -> None:
        module = _triton_module(transport)
        self._triton = triton
        self._model = model
        self._http = transport == "http"
        self.model_name = model.name
        self.batch_size = batch_size
        self._timeout = timeout_s
        shape = (batch_size, *model.shape) if model.batches else model.shape
        self._inputs = []
        for tensor in random_tensors(shape, model.datatype):
            tensor_input = module.InferInput(model.input_name, list(shape), model.datatype)
            tensor_input.set_data_from_numpy(tensor)
            self._inputs.append(tensor_input)
        self._cycle = itertools.cycle(self._inputs)
        self._outputs = [module.InferRequestedOutput(model.output_name)]
        self.description = f"{model.datatype} tensors of shape {list(shape)} via tritonclient ({transport})"
        self._lost, self._failed = _connection_errors(transport)

    async def send(self) -> Reply:
        from tritonclient.utils import InferenceServerException

        inputs = [next(self._cycle)]
        try:
            if self._http:  # tritonclient.http has no client-side deadline per call: asyncio's
                call = self._triton.infer(self._model.name, inputs=inputs, outputs=self._outputs)
                await asyncio.wait_for(call, self._timeout)
            else:
                await self._triton.infer(
                    self._model.name, inputs=inputs, outputs=self._outputs, client_timeout=self._timeout
                )
        except InferenceServerException as exc:
            return Reply(_status_name(exc.status()))
        except TimeoutError:  # before the connection errors: asyncio's TimeoutError is an OSError
            return Reply("DEADLINE_EXCEEDED")
        except self._lost:  # no connection (refused, reset, closed): what gRPC calls UNAVAILABLE
            return Reply(UNAVAILABLE)
        except self._failed:  # the HTTP client's other failures (a body cut short)
            return Reply("UNKNOWN")
        return Reply(OK)

    async def counters(self) -> dict[str, float] | None:
        """The model's ModelStatistics totals over all its versions (None if the server has none)."""
        from tritonclient.utils import InferenceServerException

        try:
            if self._http:
                stats = await self._triton.get_inference_statistics(self._model.name)
            else:
                stats = await self._triton.get_inference_statistics(
                    self._model.name, as_json=True, client_timeout=5
                )
        except (InferenceServerException, *self._lost, *self._failed):
            return None
        totals: dict[str, float] = {}
        for version in stats.get("model_stats", []):
            phases = version.get("inference_stats", {})
            for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
                entry = phases.get(phase, {})
                totals[f"{phase}_count"] = totals.get(f"{phase}_count", 0.0) + float(entry.get("count", 0))
                totals[f"{phase}_ns"] = totals.get(f"{phase}_ns", 0.0) + float(entry.get("ns", 0))
            for key in ("inference_count", "execution_count"):
                totals[key] = totals.get(key, 0.0) + float(version.get(key, 0))
        return totals

    async def close(self) -> None:
        await self._triton.close()


def split_from_counters(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float] | None:
    """Mean queue / preprocess (compute_input) / compute (infer + output) ms and batch size between two
    ModelStatistics snapshots, in the same units as the image API's per-response split."""
    if not before or not after:
        return None
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    requests = delta.get("queue_count", 0.0)
    if requests <= 0:
        return None

    def mean_ms(*phases: str) -> float:
        return sum(delta.get(f"{p}_ns", 0.0) / max(delta.get(f"{p}_count", 0.0), 1.0) for p in phases) / 1e6

    executions = delta.get("execution_count", 0.0)
    return {
        "queue_ms": mean_ms("queue"),
        "preprocess_ms": mean_ms("compute_input"),
        "compute_ms": mean_ms("compute_infer", "compute_output"),
        "batch_size": delta.get("inference_count", 0.0) / executions if executions > 0 else 0.0,
    }


def _status_name(status: str | None) -> str:
    # tritonclient.grpc reports failures as "StatusCode.UNAVAILABLE", tritonclient.http as the HTTP status.
    if not status:
        return "UNKNOWN"
    return f"HTTP {status}" if status.isdigit() else status.removeprefix("StatusCode.")


def _connection_errors(
    transport: str,
) -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """What tritonclient raises, besides InferenceServerException, when the connection fails (counted as
    UNAVAILABLE, so a server gone away ends the sweep as over gRPC) and when the request fails otherwise.
    tritonclient.grpc reports both as InferenceServerException; tritonclient.http lets aiohttp's through."""
    if transport != "http":
        return (OSError,), ()
    import aiohttp

    return (OSError, aiohttp.ClientConnectionError), (aiohttp.ClientError,)


def _triton_module(transport: str) -> Any:
    if transport == "http":
        from tritonclient.http import aio as http_aio

        return http_aio
    from tritonclient.grpc import aio as grpc_aio

    return grpc_aio


async def kserve_sender(
    target: str,
    model: str,
    tls: TLSConfig | None,
    batch_size: int,
    timeout_s: float,
    transport: str = "grpc",
) -> KServeSender:
    """Connect with tritonclient, read the model's input from ModelMetadata and ModelConfig."""
    from tritonclient.utils import InferenceServerException

    http = transport == "http"
    lost, failed = _connection_errors(transport)
    triton = _triton_http_client(target, tls) if http else _triton_client(_triton_module("grpc"), target, tls)
    try:
        if not model:
            index = await (
                triton.get_model_repository_index()
                if http
                else triton.get_model_repository_index(as_json=True)
            )
            listed = index if isinstance(index, list) else index.get("models", [])
            ready = [m["name"] for m in listed if m.get("state", "READY") == "READY"]
            if not ready:
                raise InferenceServerException("the server lists no READY model; pass --model")
            model = ready[0]
        if http:
            meta = await triton.get_model_metadata(model)
            config = await triton.get_model_config(model)
        else:
            meta = await triton.get_model_metadata(model, as_json=True)
            config = await triton.get_model_config(model, as_json=True)
    except (InferenceServerException, *lost, *failed) as exc:  # aiohttp's: it cannot connect, or no HTTP/1
        await triton.close()
        raise ConnectionError(
            f"KServe metadata from {target} over {transport}: {_why(exc, http, tls)}"
        ) from None
    config = config.get("config", config)  # gRPC's answer wraps the config, HTTP's is the config
    first_in, first_out = meta["inputs"][0], meta["outputs"][0]
    dims = tuple(int(d) for d in first_in["shape"])
    batches = int(config.get("max_batch_size", 0) or 0) > 0 or (bool(dims) and dims[0] == -1)
    shape = dims[1:] if batches else dims
    if any(d < 0 for d in shape):
        await triton.close()
        raise ConnectionError(f"model {model}'s input {first_in['name']} has a dynamic shape {list(dims)}")
    tensor_model = TensorModel(
        model, first_in["name"], first_in["datatype"], shape, batches, first_out["name"]
    )
    return KServeSender(triton, tensor_model, batch_size if batches else 1, timeout_s, transport)


def _why(exc: BaseException, http: bool, tls: TLSConfig | None) -> str:
    """One line saying why the metadata could not be read: a known connection failure's reason first."""
    detail = " ".join(str(exc).split())  # aiohttp's messages span lines
    if http and "Bad status line" in detail:  # gRPC's HTTP/2 SETTINGS frame where an HTTP/1 status was due
        return (
            "that address does not answer HTTP/1 (a gRPC port?): the HTTP/REST port is 8000 by default (gRPC "
            "is 8001, metrics 8002)"
        )
    reason = None if http else connect_reason(detail, tls is not None)
    return f"{reason} ({detail})" if reason else detail


def _triton_http_client(target: str, tls: TLSConfig | None) -> Any:
    """tritonclient.http's asyncio client for one `host:port` (HTTP has no client-side balancing)."""
    if "," in target or target.startswith("dns:"):
        raise ValueError(f"-i http takes one --server HOST:PORT, not {target!r}")
    module = _triton_module("http")
    if tls is None:
        return module.InferenceServerClient(url=target)
    import ssl

    context = ssl.create_default_context(cafile=_path(tls.root_certs))
    if tls.client_cert is not None:
        context.load_cert_chain(str(tls.client_cert), _path(tls.client_key))
    return module.InferenceServerClient(url=target, ssl=True, ssl_context=context)


def _triton_client(triton_aio: Any, target: str, tls: TLSConfig | None) -> Any:
    # Our client's channel options: message limits and round-robin over several servers (or a DNS name
    # with several addresses), without retries (a benchmark must see every UNAVAILABLE).
    url, args = balance(target, channel_options(None, tls))
    if tls is None:
        return triton_aio.InferenceServerClient(url=url, channel_args=args)
    # tritonclient reads PEM files by path.
    return triton_aio.InferenceServerClient(
        url=url,
        ssl=True,
        root_certificates=_path(tls.root_certs),
        private_key=_path(tls.client_key),
        certificate_chain=_path(tls.client_cert),
        channel_args=args,
    )


def _path(value: object) -> str | None:
    return None if value is None else str(value)
