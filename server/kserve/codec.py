"""KServe v2 / Open Inference Protocol messages ⇄ a model's arrays: a ModelInferRequest decoded into the
model's input arrays (`decode_request`, checked against the model), its outputs encoded into a
ModelInferResponse (`encode_response`). The tensor encodings underneath (raw little-endian contents, typed
contents, BYTES, Triton's classification strings) are server/kserve/tensors.py, tensors in shared memory
server/kserve/regions.py. The datatype names are formats/datatypes.py's.

What a request may send for a model input (docs/kserve.md):

* the model's own datatype and shape (FP32 [N, C, H, W] for our models; FP16 for an FP16 model, which also
  takes FP32 and converts it);
* UINT8 [N, C, H, W]: pixels 0..255, already resized and cropped to the model's geometry; the server
  normalises them with the model's preprocess mean/std, exactly as the image pipeline does;
* BYTES [N] or [N, 1]: encoded image files (PNG, JPEG, ...), decoded and preprocessed on the server — only
  for the image input of a model with preprocessing metadata (`is_image_input`); any other BYTES input is a
  string tensor, passed to the model as an object array of bytes (UTF-8 text checked here, before queuing).

A model without a batch dimension (max_batch_size 0) takes its own shapes, whole: a request is one
inference. Raw contents are little-endian, row-major; BYTES elements each carry a 4-byte little-endian length
prefix (what tritonclient sends), split and joined by formats/bytes_tensor.py. The hot path (raw FP32 in,
raw FP32 out) views the received bytes (wire.py, no copy) with `np.frombuffer`, reshapes once, queues the
array and serialises each output with one `tobytes`.
Every failure is a `ServeError` with INVALID_ARGUMENT and a message naming what was expected.

Shared memory (Triton's extension; server/kserve/regions.py): an input or requested output whose parameters
name a registered region is read from, or written to, it instead of the message. A system-memory input is a
zero-copy view of the mapping (the batcher copies rows into its batch buffer, or a batch of one goes straight
to the backend, which reads it during `infer`); nothing keeps the view after the request. The `DecodedRequest`
holds the regions it uses, so a region unregistered meanwhile stays mapped until the request is done. Outputs
written to a region travel with no bytes (an empty raw_output_contents entry, to keep the entries one per
output) and their parameters echo the region, as Triton's do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from resnet_serve.formats import bytes_tensor
from resnet_serve.formats.datatypes import BYTES, numpy_to_kserve
from resnet_serve.formats.errors import InvalidInput
from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.runtime.base import TensorSpec
from resnet_serve.server.decode.budget import preprocess_images
from resnet_serve.server.errors import ServeError, echo, invalid_argument, too_large
from resnet_serve.server.kserve.regions import (
    SharedTensor,
    check_output_room,
    from_region,
    shared_tensor,
    write_region,
)
from resnet_serve.server.kserve.tensors import from_contents, from_raw, top_k_strings
from resnet_serve.server.kserve.wire import InferRequest
from resnet_serve.server.models.served import ServedModel
from resnet_serve.server.shm.registry import SharedMemoryRegistry
from resnet_serve.server.transport import field_bytes

UINT8: Final = "UINT8"
_US: Final = 1e-6


@dataclass
class DecodedRequest:
    """A ModelInferRequest decoded for its model, ready for the batcher."""

    inputs: dict[str, np.ndarray]
    rows: int
    outputs: list[tuple[str, int]]  # (output name, classification k or 0)
    timeout_s: float | None
    preprocess_s: float | None
    # Outputs to write into shared memory, by name; holding them keeps their regions mapped (module doc).
    shared_outputs: dict[str, SharedTensor] = field(default_factory=dict)
    shared_inputs: list[SharedTensor] = field(default_factory=list)


async def decode_request(
    model: ServedModel,
    incoming: InferRequest,
    time_remaining: float | None,
    executor: Executor | None,
    regions: SharedMemoryRegistry | None = None,
) -> DecodedRequest:
    """Validate and decode a ModelInferRequest for `model`; raises ServeError INVALID_ARGUMENT. `regions`:
    the server's shared-memory registry (None: tensors in shared memory are refused)."""
    specs = model.input_specs
    request = incoming.message
    raw = incoming.raw
    if request.parameters:
        _check_parameters(request.parameters)
    tensors = list(request.inputs)  # each pass over the repeated field builds its message wrappers again
    # A tensor without parameters is in the message: no region to look for (most requests).
    shared = [
        shared_tensor(t.parameters, f"input '{t.name}'", regions) if t.parameters else None for t in tensors
    ]
    in_message = shared.count(None)
    if raw:
        for tensor in tensors:
            if tensor.HasField("contents"):
                raise invalid_argument(
                    "contents field must not be specified when using raw_input_contents for "
                    f"{echo(tensor.name)} for model {echo(model.name)}"
                )
    if raw and len(raw) != in_message:
        one_per = "one per input" if in_message == len(tensors) else "one per input not in shared memory"
        raise invalid_argument(f"expected {in_message} raw_input_contents ({one_per}), got {len(raw)}")
    # Output regions too are checked before any work (decoding images is work); the rows are the first
    # input's (the batcher refuses inputs that disagree, and every write is checked again).
    outputs, shared_outputs = _requested_outputs(model, request, regions)
    if shared_outputs and tensors and tensors[0].shape:
        for name, place in shared_outputs.items():
            check_output_room(model, name, tensors[0].shape[0], place)
    arrays: dict[str, np.ndarray] = {}
    preprocess_s: float | None = None
    next_raw = 0
    for tensor, where in zip(tensors, shared, strict=True):
        spec = specs.get(tensor.name)
        if spec is None:
            raise invalid_argument(
                f"unexpected inference input {echo(tensor.name)} for model '{model.name}'; "
                f"expected {_describe(specs)}"
            )
        if tensor.name in arrays:
            raise invalid_argument(f"input {echo(tensor.name)} is given twice")
        shape = tuple(tensor.shape)
        if where is not None:
            array = from_region(tensor.name, tensor.datatype, shape, where)
        elif raw:
            array = from_raw(tensor.name, tensor.datatype, shape, raw[next_raw])
            next_raw += 1
        else:
            array = from_contents(tensor.name, tensor.datatype, shape, tensor.contents)
        if tensor.datatype == BYTES and is_image_input(model, spec):
            start = time.perf_counter()
            timeout = _timeout(request, time_remaining)
            arrays[tensor.name] = await _decode_images(model, spec, array, executor, timeout)
            preprocess_s = time.perf_counter() - start
        else:
            arrays[tensor.name] = _to_model_input(model, spec, tensor.datatype, array)
    if len(arrays) != len(specs):  # every name in `arrays` is one of `specs`
        missing = [name for name in specs if name not in arrays]
        raise invalid_argument(
            f"missing input(s) {missing} for model '{model.name}'; expected {_describe(specs)}"
        )
    # A model without a batch dimension runs each request on its own: one inference whatever its shape.
    batched = model.info.max_batch_size > 0
    rows = (next(iter(arrays.values())).shape[0] if arrays else 0) if batched else 1
    return DecodedRequest(
        arrays,
        rows,
        outputs,
        _timeout(request, time_remaining),
        preprocess_s,
        shared_outputs,
        [where for where in shared if where is not None] if in_message < len(shared) else [],
    )


def encode_response(
    model: ServedModel,
    decoded: DecodedRequest,
    outputs: dict[str, np.ndarray],
    response_id: str,
    max_bytes: int | None = None,
    streamed: bool = False,
) -> Any:
    """Build the ModelInferResponse with every requested output in raw_output_contents, or written to its
    shared memory region (then its raw_output_contents entry is empty). `max_bytes`: the largest message
    the transport sends (gRPC's max send message length; None: no limit), `streamed`: the response goes
    inside a ModelStreamInferResponse. An answer over it raises ServeError RESOURCE_EXHAUSTED (`too_large`)
    rather than leave gRPC to fail the send after the server counted a success."""
    tensors = []
    raws: list[bytes] = []
    for name, k in decoded.outputs:
        array = outputs[name]
        if k:
            # Without a batch dimension the whole output is one set of scores: the answer is [k] (Triton's).
            batched = model.info.max_batch_size > 0 and array.ndim > 0
            scores = array if batched else array.reshape(1, -1)
            strings = top_k_strings(scores, k, model.labels)
            shape = [scores.shape[0], len(strings) // max(1, scores.shape[0])] if batched else [len(strings)]
            tensor = pb.ModelInferResponse.InferOutputTensor(name=name, datatype=BYTES, shape=shape)
            data: bytes | np.ndarray = bytes_tensor.serialize(strings)
        else:
            tensor = pb.ModelInferResponse.InferOutputTensor(
                name=name, datatype=numpy_to_kserve(array.dtype), shape=array.shape
            )
            data = bytes_tensor.serialize_array(array) if array.dtype.hasobject else array
        tensors.append(tensor)
        where = decoded.shared_outputs.get(name)
        if where is None:
            raws.append(data if isinstance(data, bytes) else data.tobytes())
        else:
            write_region(name, where, _byte_view(data), tensor.parameters)
            raws.append(b"")
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=response_id, outputs=tensors
    )
    if max_bytes is not None:
        # The exact encoded size without serialising the tensors: upb's ByteSize serialises the whole
        # message, so it is asked of the response before its raw contents (a few small fields), and each
        # raw entry adds its tag, length and bytes.
        size = response.ByteSize()
        for raw in raws:
            size += field_bytes(len(raw))
        if streamed:
            size = field_bytes(size)  # ModelStreamInferResponse's infer_response field
        if size > max_bytes:
            raise answer_too_large(size, max_bytes)
    response.raw_output_contents.extend(raws)
    return response


def answer_too_large(size: int, max_bytes: int) -> ServeError:
    """An answer over the gRPC message limit (RESOURCE_EXHAUSTED, the request's fault)."""
    return too_large(
        f"the response is {size} bytes; the limit is grpc_max_message_bytes={max_bytes} "
        "(request fewer rows or outputs, or raise the limit)"
    )


def _describe(specs: dict[str, TensorSpec]) -> str:
    return ", ".join(f"'{s.name}' ({numpy_to_kserve(s.dtype)} {list(s.shape)})" for s in specs.values())


def _check_shape(model: ServedModel, spec: TensorSpec, shape: Sequence[int], datatype: str) -> None:
    """The request's shape against the model's: -1 matches any size; with a batch dimension (max_batch_size
    > 0) the leading one is the request's rows, at least 1; without one the shape is the model's own."""
    expected = spec.shape
    batched = model.info.max_batch_size > 0
    first = 1 if batched else 0
    fits = len(shape) == len(expected) and all(
        e < 0 or e == a for e, a in zip(expected[first:], shape[first:], strict=True)
    )
    if not fits:
        any_size = "any batch size" if batched else "any size"
        raise invalid_argument(
            f"input '{spec.name}' of model '{model.name}' must have shape {list(expected)} "
            f"(-1: {any_size}), got {datatype} {list(shape)}"
        )
    if batched and shape[0] < 1:
        raise invalid_argument(f"input '{spec.name}' has batch size {shape[0]}; need at least 1")


def is_image_input(model: ServedModel, spec: TensorSpec) -> bool:
    """Whether BYTES for this input are encoded images: only for a model with preprocessing metadata, and only
    its image input (the first, a floating-point tensor). Any other BYTES input is a string tensor."""
    return (
        model.preprocessor is not None
        and bool(model.info.inputs)
        and model.info.inputs[0].name == spec.name
        and spec.dtype.kind == "f"
    )


def _to_model_input(model: ServedModel, spec: TensorSpec, datatype: str, array: np.ndarray) -> np.ndarray:
    expected = numpy_to_kserve(spec.dtype)
    _check_shape(model, spec, array.shape, datatype)
    if datatype == expected:
        if datatype == BYTES:
            try:
                bytes_tensor.check_text(array, f"input '{spec.name}'")
            except InvalidInput as exc:
                raise invalid_argument(str(exc)) from None
        return array
    if datatype == "FP32" and expected == "FP16":
        return array.astype(np.float16)
    if datatype == UINT8 and model.preprocessor is not None and is_image_input(model, spec):
        # The image pipeline's own normalisation, so UINT8 pixels give identical inputs.
        return model.preprocessor.normalize_chw(array).astype(spec.dtype, copy=False)
    raise invalid_argument(
        f"input '{spec.name}' of model '{model.name}' has datatype {datatype}; expected {expected}"
        + (
            f", UINT8 pixels [N, {', '.join(map(str, spec.shape[1:]))}] or BYTES encoded images [N]"
            if is_image_input(model, spec)
            else ""
        )
    )


async def _decode_images(
    model: ServedModel,
    spec: TensorSpec,
    array: np.ndarray,
    executor: Executor | None,
    timeout: float | None,
) -> np.ndarray:
    pre = model.preprocessor
    if pre is None:
        raise invalid_argument(
            f"model '{model.name}' has no preprocessing metadata, so it cannot take BYTES images; "
            f"send {numpy_to_kserve(spec.dtype)} {list(spec.shape)}"
        )
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or array.shape[0] < 1:
        raise invalid_argument(
            f"input '{spec.name}' as BYTES must have shape [N] or [N, 1] (one encoded image per row), "
            f"got {list(array.shape)}"
        )
    batched = model.info.max_batch_size > 0
    if not batched and len(spec.shape) == 3 and array.shape[0] != 1:
        raise invalid_argument(
            f"input '{spec.name}' of model '{model.name}' takes one image (the model has no batch "
            f"dimension), got {array.shape[0]}"
        )
    model.batcher.check_rows(array.shape[0] if batched else 1)  # before decoding a request that cannot run
    # Within the server's decode memory budget (server/decode/budget.py), waiting up to the request's timeout.
    rows = await preprocess_images(pre, executor, [bytes(item) for item in array], timeout)
    return model.image_input(np.stack(rows).astype(spec.dtype, copy=False))


def _requested_outputs(
    model: ServedModel, request: Any, regions: SharedMemoryRegistry | None
) -> tuple[list[tuple[str, int]], dict[str, SharedTensor]]:
    names = model.output_names
    if not request.outputs:
        return [(name, 0) for name in names], {}
    out: list[tuple[str, int]] = []
    shared: dict[str, SharedTensor] = {}
    seen: set[str] = set()
    for requested in request.outputs:
        # Each output once: a name repeated would be computed once and answered (and copied) once per
        # mention, a 1 MB answer grown to 100 MB by naming it 100 times. Refused, as a repeated input is.
        if requested.name in seen:
            raise invalid_argument(f"output {echo(requested.name)} is requested twice")
        seen.add(requested.name)
        where = shared_tensor(requested.parameters, f"output '{requested.name}'", regions)
        if where is not None:
            shared[requested.name] = where
        if requested.name not in names:
            raise invalid_argument(
                f"unknown output {echo(requested.name)} for model '{model.name}'; "
                f"expected one of {list(names)}"
            )
        k = 0
        param = requested.parameters.get("classification")
        if param is not None:
            choice = param.WhichOneof("parameter_choice")
            k = int(getattr(param, choice)) if choice in ("int64_param", "uint64_param") else -1
            if k < 1:
                raise invalid_argument(
                    f"output {echo(requested.name)}: the classification parameter must be an integer >= 1"
                )
            if next(s for s in model.info.outputs if s.name == requested.name).dtype.hasobject:
                raise invalid_argument(
                    f"output '{requested.name}': the classification parameter needs a numeric output to "
                    f"rank; '{requested.name}' is BYTES (request it without classification)"
                )
            if where is not None:
                raise invalid_argument(
                    f"output '{requested.name}': a classification output cannot be written to shared memory "
                    "(as in Triton); request it without shared memory"
                )
        out.append((requested.name, k))
    return out, shared


def _byte_view(data: bytes | np.ndarray) -> memoryview:
    if isinstance(data, bytes):
        return memoryview(data)
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8).data


# The request parameters Triton defines: the InferParameter kinds each may be, and Triton's words for them.
_PARAMETER_KINDS: Final = {
    "priority": (("int64_param", "uint64_param"), "int64_param or uint64_param"),
    "sequence_id": (
        ("int64_param", "uint64_param", "string_param"),
        "int64_param, uint64_param, or string_param",
    ),
    "sequence_start": (("bool_param",), "bool_param"),
    "sequence_end": (("bool_param",), "bool_param"),
}


def _check_parameters(parameters: Any) -> None:
    """Triton's rules for a request's own parameters (the same over gRPC and HTTP, whose JSON values arrive
    as InferParameters): keys starting with `triton_` are reserved, and `priority`, `sequence_id`,
    `sequence_start` and `sequence_end` must have their kinds. Sequence parameters are then ignored, as
    Triton ignores them for a model without sequence batching; `timeout` is read by `_timeout`."""
    for key in parameters:
        if key.startswith("triton_"):
            raise invalid_argument(
                "parameter keys starting with 'triton_' are reserved for Triton usage and should not be "
                "specified."
            )
        rule = _PARAMETER_KINDS.get(key)
        if rule is None:
            continue
        kinds, expected = rule
        param = parameters[key]
        choice = param.WhichOneof("parameter_choice")
        if choice not in kinds:
            raise invalid_argument(f"invalid value type for '{key}' parameter, expected {expected}.")
        if key in ("priority", "sequence_id") and choice == "int64_param" and param.int64_param < 0:
            raise invalid_argument(f"the '{key}' parameter must not be negative, got {param.int64_param}")


def _timeout(request: Any, time_remaining: float | None) -> float | None:
    """The earlier of the gRPC deadline and Triton's `timeout` parameter (microseconds)."""
    param = request.parameters.get("timeout")
    timeout = time_remaining
    if param is not None:
        choice = param.WhichOneof("parameter_choice")
        if choice not in ("int64_param", "uint64_param") or getattr(param, choice) < 0:
            raise invalid_argument("the timeout parameter must be a non-negative integer (microseconds)")
        micros = int(getattr(param, choice))
        if micros > 0:
            mine = micros * _US
            timeout = mine if timeout is None else min(timeout, mine)
    return timeout
