"""The KServe v2 / Open Inference Protocol gRPC service (`inference.GRPCInferenceService`), so an unmodified
`tritonclient.grpc` can use resnet-serve. server/app.py registers it with `register(server, ctx)`.

Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, and Triton's
ModelStreamInfer, ModelConfig, ModelStatistics, RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload,
and the shared-memory extension's System/CudaSharedMemoryRegister/Status/Unregister (server/shm/).
Every other RPC of the service (today: trace and log settings) answers UNIMPLEMENTED with one line and
nothing in the log (`unimplemented`). server/http/ serves the same methods over HTTP/REST.

A ModelInfer: wire.py deserializes it (tensor bytes not copied) → `ModelInfer` here → codec.py decodes it
for its model → server/request.py's `Call` (lookup, in-flight, metrics, access log) runs it on the model's
batcher → codec.py encodes the response. docs/kserve.md has the conventions (UINT8 pixels, BYTES images,
classification strings) and the differences from Triton.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import metadata as importlib_metadata
from typing import Any, Final

import grpc

from resnet_serve.formats.datatypes import BYTES, config_type, numpy_to_kserve
from resnet_serve.formats.metadata import PREFIX
from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc
from resnet_serve.protos import model_config_pb2 as mc
from resnet_serve.runtime.base import BackendError, TensorSpec
from resnet_serve.runtime.factory import backend_for
from resnet_serve.server.context import ServerContext
from resnet_serve.server.errors import (
    ServeError,
    boundary,
    invalid_argument,
    malformed,
    status_of,
    stream_boundary,
    unavailable,
)
from resnet_serve.server.frontend import CallContext, Frontend
from resnet_serve.server.kserve.codec import decode_request, encode_response, is_image_input
from resnet_serve.server.kserve.wire import InferRequest, deserialize_infer_request
from resnet_serve.server.models.overrides import parse_override
from resnet_serve.server.models.served import ServedModel
from resnet_serve.server.models.triton_config import TensorDecl, WarmupSample
from resnet_serve.server.observability.logging import request_scope, resolve_request_id
from resnet_serve.server.observability.model_metrics import ModelStatistics
from resnet_serve.server.request import Call
from resnet_serve.server.security import model_control
from resnet_serve.server.shm import registry as shm
from resnet_serve.server.streams import answer_concurrently
from resnet_serve.server.transport import max_message_bytes

SERVICE: Final = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS: Final = (
    "classification",
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
    *shm.extensions(),
)

Context = CallContext


def register(server: grpc.aio.Server, ctx: ServerContext) -> str:
    """Add the KServe v2 service to `server`; returns its full service name (for health and reflection)."""
    handlers = method_handlers(KServeService(ctx))
    # A generic handler only, no registered methods (server/registration.py says why).
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return SERVICE


def implemented(name: str) -> bool:
    """Whether KServeService serves the RPC `name` (rather than inheriting the generated stub)."""
    return getattr(KServeService, name) is not getattr(pb_grpc.GRPCInferenceServiceServicer, name)


def _one_repository(name: str) -> None:
    """A load or unload that names a repository is UNIMPLEMENTED (HTTP 501), in Triton's words: the server has
    one repository. (RepositoryIndex ignores the name, as Triton's does.)"""
    if name:
        raise ServeError(grpc.StatusCode.UNIMPLEMENTED, "'repository_name' specification is not supported")


def unimplemented(name: str) -> ServeError:
    """The answer to an RPC this server does not serve: UNIMPLEMENTED, one line for the client. The
    generated stub raised NotImplementedError, which grpc logged as a 12-line traceback per call."""
    return ServeError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{name} is not implemented by resnet-serve (extensions: {', '.join(EXTENSIONS)})",
    )


def _refuse(name: str) -> Any:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        error = unimplemented(name)
        await context.abort(error.code, error.message)

    return refuse


def method_handlers(servicer: KServeService) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The generated registration, except that inference requests use the zero-copy deserializer and an
    RPC the service does not implement answers UNIMPLEMENTED without a traceback."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        infer = request_type is pb.ModelInferRequest
        deserializer = deserialize_infer_request if infer else request_type.FromString
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name) if implemented(method.name) else _refuse(method.name),
            request_deserializer=deserializer,
            response_serializer=response_type.SerializeToString,
        )
    return handlers


def _server_version() -> str:
    try:
        return importlib_metadata.version("resnet-serve")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


class KServeService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Every RPC answers, or ends with its failure's status at server/errors.py's boundary."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._manager = ctx.manager
        self._shm = ctx.shared_memory
        self._version = _server_version()
        self._max_send = max_message_bytes(ctx.config)  # grpc.max_send_message_length (server/transport.py)

    # ------------------------------------------------------------------------------------- health, metadata

    @boundary
    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=self._ctx.live())

    @boundary
    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self._ctx.ready())

    @boundary
    async def ModelReady(self, request: Any, context: Context) -> Any:
        ready = self._manager.is_ready(request.name, request.version, default=False)  # a model is named
        return pb.ModelReadyResponse(ready=ready)

    @boundary
    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return pb.ServerMetadataResponse(name="resnet-serve", version=self._version, extensions=EXTENSIONS)

    @boundary
    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        model = self._get(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[m.version for m in self._manager.versions(model.name)],
            platform=model.info.platform,
            inputs=[_tensor_metadata(model, spec) for spec in model.info.inputs],
            outputs=[_tensor_metadata(model, spec) for spec in model.info.outputs],
        )

    @boundary
    async def ModelConfig(self, request: Any, context: Context) -> Any:
        model = self._get(request.name, request.version)
        return pb.ModelConfigResponse(config=_triton_config(model))

    # ------------------------------------------------------------------------------------------- inference

    @boundary
    async def ModelInfer(self, request: InferRequest, context: Context) -> Any:
        # The request id: x-request-id metadata, else the request's `id`, else a new one; echoed in the
        # trailing metadata (failures included) and, when the request has no `id`, as the response's id.
        request_id = context.echo_request_id(request.message.id)
        # gRPC's send limit; HTTP has none (an aiohttp body of any size is sent, as Triton's HTTP does).
        max_bytes = self._max_send if context.frontend is Frontend.GRPC else None
        with request_scope(request_id):
            return await self._infer(request, context.time_remaining(), request_id, "ModelInfer", max_bytes)

    @stream_boundary
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[InferRequest], context: Context
    ) -> AsyncIterator[Any]:
        # A failed request is answered in-stream with error_message, as Triton does, and the stream goes on.
        # Each request counts as in flight until answered, so shutdown waits for it even before it reaches a
        # batcher. A request's own `id` wins; one without gets "<stream id>/<n>", the stream id being the
        # stream's x-request-id metadata (or a new id), echoed in the stream's trailing metadata.
        in_flight = self._ctx.in_flight
        stream_id = context.echo_request_id()

        async def answer(request: InferRequest, n: int) -> Any:
            m = request.message
            request_id = resolve_request_id(m.id, f"{stream_id}/{n}")
            with in_flight, request_scope(request_id):
                try:
                    response = await self._infer(
                        request,
                        context.time_remaining(),
                        request_id,
                        "ModelStreamInfer",
                        self._max_send,
                        streamed=True,
                    )
                except Exception as exc:
                    error = status_of(exc, "ModelStreamInfer")
                    echo = pb.ModelInferResponse(
                        model_name=m.model_name, model_version=m.model_version, id=m.id or request_id
                    )
                    return pb.ModelStreamInferResponse(error_message=error.message, infer_response=echo)
                return pb.ModelStreamInferResponse(infer_response=response)

        async for item in answer_concurrently(request_iterator, answer):
            yield item

    async def _infer(
        self,
        incoming: InferRequest,
        time_remaining: float | None,
        request_id: str,
        rpc: str,
        max_bytes: int | None = None,
        streamed: bool = False,
    ) -> Any:
        """One request, start to finish, inside its request_scope; raises ServeError (metrics and the
        access log are recorded either way). `max_bytes`, `streamed`: codec.encode_response's; an answer
        over the limit is refused inside the call, so it is counted and logged as the failure it is."""
        request = incoming.message

        def lookup() -> ServedModel:
            if incoming.error is not None:
                raise malformed(incoming.error, "ModelInferRequest")
            return self._manager.get(request.model_name, request.model_version, default=False)

        with Call(rpc, request.model_name, request.model_version, lookup) as call:
            call.admit()  # a place in the queue first: a full queue refuses before any tensor is decoded
            decoded = await decode_request(call.model, incoming, time_remaining, self._ctx.pool, self._shm)
            call.preprocess_s = decoded.preprocess_s
            result = await call.infer(decoded.inputs, decoded.timeout_s, decoded.rows)
            response_id = request.id or request_id
            return encode_response(call.model, decoded, result.outputs, response_id, max_bytes, streamed)

    # ------------------------------------------------------------------------------------------ statistics

    @boundary
    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        if request.name:
            if request.version:
                models = [self._get(request.name, request.version)]
            else:
                models = self._manager.versions(request.name)
        else:
            if request.version:
                raise invalid_argument("a version needs a model name")
            models = [m for name in self._manager.names() for m in self._manager.versions(name)]
        return pb.ModelStatisticsResponse(
            model_stats=[_statistics(s) for s in await self._manager.statistics(models)]
        )

    # ------------------------------------------------------------------------------------------ repository

    @boundary
    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        index = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=s.name, version=s.version, state=str(s.state), reason=s.reason
            )
            for s in self._manager.statuses()
            if not request.ready or str(s.state) == "READY"
        ]
        if not request.ready:
            known = {s.name for s in self._manager.statuses()}
            # In the repository but never loaded: Triton lists these by name alone.
            index.extend(
                pb.RepositoryIndexResponse.ModelIndex(name=name)
                for name in self._manager.repository_models()
                if name not in known
            )
        return pb.RepositoryIndexResponse(models=index)

    @boundary
    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        self._model_control_allowed(context)
        _one_repository(request.repository_name)
        # `config` and `file:<path>` overrides (Triton's semantics and words: server/models/overrides.py).
        override = parse_override(request.model_name, request.parameters)
        await self._manager.load(request.model_name, override=override)
        return pb.RepositoryModelLoadResponse()

    @boundary
    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        self._model_control_allowed(context)
        _one_repository(request.repository_name)
        await self._manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---------------------------------------------------------------------------------------- shared memory

    @boundary
    async def SystemSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        await self._ctx.regions.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @boundary
    async def SystemSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        regions = {
            r.name: status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
            for r in self._shm.status(request.name)
        }
        return pb.SystemSharedMemoryStatusResponse(regions=regions)

    @boundary
    async def SystemSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        await self._ctx.regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @boundary
    async def CudaSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        await self._ctx.regions.register_cuda(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    @boundary
    async def CudaSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        status = pb.CudaSharedMemoryStatusResponse.RegionStatus
        regions = {
            r.name: status(name=r.name, device_id=r.device_id, byte_size=r.byte_size)
            for r in self._shm.cuda_status(request.name)
        }
        return pb.CudaSharedMemoryStatusResponse(regions=regions)

    @boundary
    async def CudaSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        await self._ctx.regions.unregister_cuda(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # ---------------------------------------------------------------------------------------------- helpers

    def _model_control_allowed(self, context: Context) -> None:
        mode = self._ctx.config.model_control_mode
        if not model_control.load_unload_allowed(mode):
            self._ctx.metrics.access_refused(context.frontend, "model-repository", "model_control")
            raise unavailable(model_control.refusal(mode))  # Triton's status for it

    def _get(self, name: str, version: str) -> ServedModel:
        # metadata: not an inference request; KServe names its model (no default model)
        return self._manager.get(name, version, count=False, default=False)


def _batch_shape(model: ServedModel, spec: TensorSpec) -> list[int]:
    """The KServe shape: -1 for the batch dimension of a batching model."""
    shape = list(spec.shape)
    if model.info.max_batch_size > 0 and shape:
        shape[0] = -1
    return shape


def _tensor_metadata(model: ServedModel, spec: TensorSpec) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=numpy_to_kserve(spec.dtype), shape=_batch_shape(model, spec)
    )


def _triton_config(model: ServedModel) -> Any:
    """Triton's model configuration, filled only with what is true of this served version."""
    settings = model.settings
    batching = model.info.max_batch_size > 0

    def dims(spec: TensorSpec) -> list[int]:
        return list(spec.shape[1:]) if batching else list(spec.shape)

    if settings.version_policy == "all":
        policy = mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
    elif settings.version_policy == "specific":
        specific = mc.ModelVersionPolicy.Specific(versions=list(settings.versions))
        policy = mc.ModelVersionPolicy(specific=specific)
    else:
        latest = mc.ModelVersionPolicy.Latest(num_versions=settings.latest_versions)
        policy = mc.ModelVersionPolicy(latest=latest)
    parameters = {
        key.removeprefix(PREFIX): mc.ModelParameter(string_value=value)
        for key, value in model.info.metadata.items()
        if key.startswith(PREFIX)
    }
    accepted = [numpy_to_kserve(model.info.inputs[0].dtype)] if model.info.inputs else []
    if model.preprocessor is not None:
        accepted += ["UINT8", BYTES]
    parameters["accepted_input_datatypes"] = mc.ModelParameter(string_value=",".join(accepted))
    gpu = model.info.device != "cpu"
    decls = {d.name: d for d in (*model.triton.inputs, *model.triton.outputs)} if model.triton else {}
    out = mc.ModelConfig(
        name=model.name,
        platform=model.info.platform,
        backend=_backend_name(model),
        version_policy=policy,
        max_batch_size=model.batcher.max_batch_size if batching else 0,
        input=[
            mc.ModelInput(
                name=s.name,
                data_type=config_type(numpy_to_kserve(s.dtype)),
                format=_input_format(model, s, dims(s)),
                dims=dims(s),
                reshape=_reshape(decls.get(s.name)),
            )
            for s in model.info.inputs
        ],
        output=[
            mc.ModelOutput(
                name=s.name,
                data_type=config_type(numpy_to_kserve(s.dtype)),
                dims=dims(s),
                reshape=_reshape(decls.get(s.name)),
            )
            for s in model.info.outputs
        ],
        instance_group=[
            mc.ModelInstanceGroup(
                name=model.name,
                kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
                count=model.instances,
                gpus=[0] if gpu else [],
            )
        ],
        default_model_filename=model.path.name,
        parameters=parameters,
    )
    if model.triton is not None and model.settings.warmup:
        out.model_warmup.extend(_warmup(sample) for sample in model.triton.warmup)
    if batching:
        b = model.settings.batching
        out.dynamic_batching.CopyFrom(
            mc.ModelDynamicBatching(
                preferred_batch_size=list(b.preferred_batch_sizes),
                max_queue_delay_microseconds=b.max_queue_delay_us,
                preserve_ordering=False,
                default_queue_policy=mc.ModelQueuePolicy(
                    max_queue_size=b.max_queue_size,
                    default_timeout_microseconds=round(b.timeout_ms * 1000),
                ),
            )
        )
    return out


def _input_format(model: ServedModel, spec: TensorSpec, dims: list[int]) -> Any:
    """config.pbtxt's `format` where it states one; else FORMAT_NCHW for the image input of a model with
    preprocessing metadata (C, H, W after any batch dimension, as the image pipeline makes them)."""
    if model.triton is not None:
        for decl in model.triton.inputs:
            if decl.name == spec.name and decl.format:
                return mc.ModelInput.Format.Value(decl.format)
    if is_image_input(model, spec) and len(dims) == 3:
        return mc.ModelInput.FORMAT_NCHW
    return mc.ModelInput.FORMAT_NONE


def _reshape(decl: TensorDecl | None) -> Any:
    """A tensor's `reshape` as config.pbtxt states it (None: no reshape)."""
    if decl is None or decl.reshape is None:
        return None
    return mc.ModelTensorReshape(shape=list(decl.reshape))


def _warmup(sample: WarmupSample) -> Any:
    """A model_warmup sample as config.pbtxt states it (what the version was warmed up with)."""
    inputs = {}
    for given in sample.inputs:
        entry = mc.ModelWarmup.Input(data_type=config_type(given.datatype), dims=list(given.dims))
        if given.kind == "input_data_file":
            entry.input_data_file = given.file_name
        else:
            setattr(entry, given.kind, True)
        inputs[given.name] = entry
    return mc.ModelWarmup(name=sample.name, batch_size=sample.batch_size, count=sample.count, inputs=inputs)


def _backend_name(model: ServedModel) -> str:
    try:
        return backend_for(model.path, model.settings.backend)
    except BackendError:
        return model.settings.backend


def _statistics(s: ModelStatistics) -> Any:
    def duration(d: Any) -> Any:
        return pb.StatisticDuration(count=d.count, ns=d.ns)

    return pb.ModelStatistics(
        name=s.name,
        version=s.version,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=duration(s.success),
            fail=duration(s.fail),
            queue=duration(s.queue),
            compute_input=duration(s.compute_input),
            compute_infer=duration(s.compute_infer),
            compute_output=duration(s.compute_output),
            # No response cache: zeros, present as Triton's answers always have them (a script reading
            # inference_stats.cache_hit.count must not fail on our JSON)
            cache_hit=pb.StatisticDuration(),
            cache_miss=pb.StatisticDuration(),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=b.batch_size,
                compute_input=duration(b.compute_input),
                compute_infer=duration(b.compute_infer),
                compute_output=duration(b.compute_output),
            )
            for b in s.batch_stats
        ],
    )
