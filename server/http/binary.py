"""KServe v2 HTTP inference bodies ⇄ the gRPC messages: a request body (JSON, or JSON followed by binary
tensors: Triton's binary tensor data extension) becomes the `InferRequest` (server/kserve/wire.py) that the
gRPC path decodes, and a ModelInferResponse becomes the HTTP answer.

The binary extension: the `Inference-Header-Content-Length` header gives the JSON header's length; the
tensor bytes follow it in input order, each input saying its length in its `binary_data_size` parameter
(the same bytes as gRPC's raw_input_contents: little-endian, BYTES elements with 4-byte length prefixes).
Outputs come back binary when the output's `binary_data` parameter, else the request's `binary_data_output`
parameter, is true (tritonclient.http asks for binary by default); the answer's JSON then has its own
`Inference-Header-Content-Length`.

Every input becomes a raw tensor (JSON `data` is packed with NumPy, binary data is a zero-copy view into the
body), so the codec sees what tritonclient.grpc sends. Parameters travel unchanged into the message's
parameters (shared memory's `shared_memory_region/offset/byte_size` included: an input in shared memory has
no raw tensor, as on gRPC); only the HTTP-only `binary_data*` parameters are consumed here.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from resnet_serve.formats import bytes_tensor
from resnet_serve.formats.datatypes import BYTES, WIRE_DTYPES
from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.server.errors import invalid_argument
from resnet_serve.server.kserve.tensors import element_count
from resnet_serve.server.kserve.wire import InferRequest
from resnet_serve.server.shm.parameters import SHARED_MEMORY_REGION

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
BINARY_DATA: Final = "binary_data"
BINARY_DATA_SIZE: Final = "binary_data_size"
BINARY_DATA_OUTPUT: Final = "binary_data_output"
_INT64: Final = (-(2**63), 2**63 - 1)
# Inputs or outputs one request may name: far above any model's (a ResNet has one of each), far below what
# fits in a body (a 64 MiB body of 1M tiny inputs would hold the event loop ~13 s in this parser).
MAX_TENSORS: Final = 1024


@dataclass
class HttpInferRequest:
    """An HTTP inference request as the gRPC path's InferRequest, plus how its outputs go back."""

    incoming: InferRequest
    binary_output: bool = False  # the request's binary_data_output
    binary: dict[str, bool] = field(default_factory=dict)  # outputs' own binary_data parameters

    def wants_binary(self, output: str) -> bool:
        return self.binary.get(output, self.binary_output)


def header_length(value: str | None, body_length: int) -> int | None:
    """The Inference-Header-Content-Length header, checked against the body."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):  # int() would take "+12", " 12" and non-ASCII digits
        raise invalid_argument(f"{HEADER_LENGTH} must be a non-negative integer, got {value[:40]!r}")
    length = int(value)
    if length > body_length:
        raise invalid_argument(f"{HEADER_LENGTH} {length} is outside the body of {body_length} bytes")
    return length


def parse_request(body: bytes, json_length: int | None, model: str, version: str) -> HttpInferRequest:
    """The InferRequest for `model`/`version` from an HTTP inference body; raises ServeError
    INVALID_ARGUMENT naming what is wrong."""
    json_length = len(body) if json_length is None else json_length
    header = json_object(memoryview(body)[:json_length], "inference request")
    view = memoryview(body)
    offset = json_length
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise invalid_argument("the request's id must be a string")
    message.id = request_id
    parameters = dict(_object(header.get("parameters", {}), "the request's parameters"))
    binary_output = parameters.pop(BINARY_DATA_OUTPUT, False)
    if not isinstance(binary_output, bool):
        raise invalid_argument(f"parameter {BINARY_DATA_OUTPUT} must be true or false")
    _copy_parameters(parameters, message.parameters, "the request")
    raw: list[memoryview] = []
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid_argument("the request needs a non-empty 'inputs' list")
    if len(inputs) > MAX_TENSORS:  # each costs ~13 µs here before the codec rejects the name
        raise invalid_argument(f"the request has {len(inputs)} inputs; at most {MAX_TENSORS} are accepted")
    for item in inputs:
        tensor = _object(item, "each input")
        name = _string(tensor, "name", "an input")
        datatype = _string(tensor, "datatype", f"input '{name}'")
        shape = _shape(tensor.get("shape"), name)
        params = dict(_object(tensor.get("parameters", {}), f"input '{name}' parameters"))
        size = params.pop(BINARY_DATA_SIZE, None)
        message.inputs.add(name=name, datatype=datatype, shape=shape)
        _copy_parameters(params, message.inputs[-1].parameters, f"input '{name}'")
        if size is not None:
            if "data" in tensor:
                raise invalid_argument(f"input '{name}' has both data and {BINARY_DATA_SIZE}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise invalid_argument(f"input '{name}': {BINARY_DATA_SIZE} must be a non-negative integer")
            if offset + size > len(body):
                raise invalid_argument(
                    f"input '{name}': {BINARY_DATA_SIZE} {size} runs past the end of the body "
                    f"({len(body) - offset} binary bytes left)"
                )
            raw.append(view[offset : offset + size])
            offset += size
        elif "data" in tensor:
            raw.append(memoryview(_pack(name, datatype, shape, tensor["data"])))
        elif SHARED_MEMORY_REGION not in params:
            raise invalid_argument(f"input '{name}' has no data, {BINARY_DATA_SIZE} or shared memory region")
    if offset != len(body):
        raise invalid_argument(
            f"the body has {len(body) - offset} bytes after the inputs' binary data; "
            f"{HEADER_LENGTH} and the {BINARY_DATA_SIZE} parameters must add up to the body's length"
        )
    binary: dict[str, bool] = {}
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise invalid_argument("'outputs' must be a list")
    if len(outputs) > MAX_TENSORS:
        raise invalid_argument(f"the request has {len(outputs)} outputs; at most {MAX_TENSORS} are accepted")
    for item in outputs:
        tensor = _object(item, "each output")
        name = _string(tensor, "name", "an output")
        params = dict(_object(tensor.get("parameters", {}), f"output '{name}' parameters"))
        wants = params.pop(BINARY_DATA, None)
        if wants is not None:
            if not isinstance(wants, bool):
                raise invalid_argument(f"output '{name}': {BINARY_DATA} must be true or false")
            binary[name] = wants
        requested = message.outputs.add(name=name)
        _copy_parameters(params, requested.parameters, f"output '{name}'")
    return HttpInferRequest(InferRequest(message, raw), binary_output, binary)


def encode_response(response: Any, request: HttpInferRequest) -> tuple[bytes, int | None]:
    """The HTTP body of a ModelInferResponse and its JSON header's length (None: all JSON)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    # An output written to shared memory has no data here: its raw entry is empty (one per output, as
    # tritonclient.grpc looks them up by position) or, from a server that leaves it out, absent.
    positional = len(response.raw_output_contents) == len(response.outputs)
    raws = iter(response.raw_output_contents)
    for tensor in response.outputs:
        shape = list(tensor.shape)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        parameters = parameters_json(tensor.parameters)
        in_region = SHARED_MEMORY_REGION in parameters
        raw = next(raws) if positional or not in_region else b""
        if not in_region:
            if request.wants_binary(tensor.name):
                parameters[BINARY_DATA_SIZE] = len(raw)
                blobs.append(raw)
            else:
                entry["data"] = _unpack(tensor.name, tensor.datatype, raw)
        if parameters:
            entry["parameters"] = parameters
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        answer["id"] = response.id
    if response.parameters:
        answer["parameters"] = parameters_json(response.parameters)
    answer["outputs"] = outputs
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)


def parameters_json(parameters: Any) -> dict[str, Any]:
    """A protobuf map of InferParameter as plain JSON values."""
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


# ----------------------------------------------------------------------------------------------- helpers


def json_object(data: bytes | memoryview, what: str) -> dict[str, Any]:
    """`data` as a JSON object; raises INVALID_ARGUMENT for anything else, deep nesting included."""
    try:
        # UTF-8 only, as JSON over HTTP is (RFC 8259): json.loads(bytes) would guess UTF-16/32 from the
        # first bytes and report garbage as a syntax error somewhere else.
        raw = bytes(data)
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_argument(f"the {what} is not UTF-8 text: {exc}") from None
    try:
        # NaN, Infinity and -Infinity are taken, as Triton's parser takes them (rapidjson's
        # kParseNanAndInfFlag) and as this API writes them for non-finite outputs.
        if _may_overflow(raw):
            value = json.loads(text, parse_int=_int_in_double_range, parse_float=_finite_float)
        else:  # the common case, at the C parser's speed (a parse_float hook costs it 2x for FP32 data)
            value = json.loads(text)
    except (json.JSONDecodeError, _NumberTooBig) as exc:
        raise invalid_argument(f"the {what} is not valid JSON: {exc}") from None
    except RecursionError:  # nesting past the interpreter's recursion limit (~1000)
        raise invalid_argument(f"the {what} nests JSON arrays or objects too deeply") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise invalid_argument(
            f"the {what} holds a string with a lone UTF-16 surrogate escape (\\ud800-\\udfff without its "
            "pair), which is not Unicode text"
        )
    return _object(value, f"the {what}")


class _NumberTooBig(ValueError):
    """A JSON number beyond a double's range: refused as Triton's parser (rapidjson) refuses it, rather than
    read as infinity (Python reads 1e999 as inf) or as an integer of thousands of digits (which Python
    refuses to convert past 4300 digits, with a ValueError that is no JSONDecodeError)."""

    def __init__(self, literal: str) -> None:
        shown = literal if len(literal) <= 40 else f"{literal[:20]}… ({len(literal)} characters)"
        super().__init__(f"the number {shown} is too big to be stored in a double (±{sys.float_info.max:g})")


# A number overflows a double only if it has 210+ digits before its exponent or an exponent of 3+ digits
# (below that it is under 10^209 × 10^99). Looked for in the body with every digit as "0" and "E" as "e":
# bytes.translate, a substring search and a regex that starts with a literal run at C speed (~3 ms for 3 MB
# of FP32 data, against ~25 ms to parse it; parsing with the hooks below costs another ~25 ms).
_NUMBER_SHAPE: Final = bytes.maketrans(b"123456789E", b"000000000e")
_LONG_DIGITS: Final = b"0" * 210
_LONG_EXPONENT: Final = re.compile(rb"e\+?000")


def _may_overflow(data: bytes) -> bool:
    shape = data.translate(_NUMBER_SHAPE)
    return _LONG_DIGITS in shape or _LONG_EXPONENT.search(shape) is not None


def _int_in_double_range(literal: str) -> int:
    if len(literal) > 310:  # past any double, and int() refuses past 4300 digits
        raise _NumberTooBig(literal)
    value = int(literal)
    if abs(value) > sys.float_info.max:
        raise _NumberTooBig(literal)
    return value


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise _NumberTooBig(literal)
    return value


# JSON may escape half of a UTF-16 pair; json.loads keeps it as a str that UTF-8 and protobuf cannot encode.
# Only text with such an escape is walked (a pair is fine: it decodes to one character).
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid_argument(f"{what} must be a JSON object")
    return value


def _string(value: dict[str, Any], key: str, what: str) -> str:
    found = value.get(key)
    if not isinstance(found, str):
        raise invalid_argument(f"{what} needs a string '{key}'")
    return found


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise invalid_argument(f"input '{name}' needs a 'shape': a list of integers")
    if not all(_INT64[0] <= d <= _INT64[1] for d in value):  # the message's shape is int64
        raise invalid_argument(f"input '{name}': dimensions must fit in 64 bits, got {str(value)[:200]}")
    return value


def _copy_parameters(values: dict[str, Any], target: Any, where: str) -> None:
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
            parameter.int64_param = value
        elif isinstance(value, int) and 0 <= value < 2**64:
            parameter.uint64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise invalid_argument(f"{where}: parameter '{key}' must be a boolean, number or string")


def _pack(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """JSON `data` (flat or nested, row-major) as raw little-endian bytes."""
    count = element_count(name, shape)
    if datatype == BYTES:
        flat: list[Any] = []
        try:
            depths = _flatten(data, flat, 0)
        except RecursionError:
            raise invalid_argument(f"input '{name}': data nests lists too deeply") from None
        if len(depths) > 1:  # [["a"], "b"]: refused as NumPy refuses it for numbers
            raise invalid_argument(
                f"input '{name}': data is nested unevenly (values at list depths {sorted(depths)}); send a "
                "flat list or lists nested as the shape is"
            )
        if not all(isinstance(item, str) for item in flat):
            raise invalid_argument(f"input '{name}': BYTES data must be strings (send binary data for bytes)")
        if len(flat) != count:
            raise invalid_argument(
                f"input '{name}': expected {count} values in data for shape {shape}, got {len(flat)}"
            )
        return bytes_tensor.serialize(item.encode() for item in flat)
    dtype = WIRE_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"input '{name}': unsupported datatype {datatype[:40]!r}")
    array = _typed(name, datatype, np.dtype(dtype), data)
    if array.size != count:
        raise invalid_argument(
            f"input '{name}': expected {count} values in data for shape {shape}, got {array.size}"
        )
    return array.tobytes()


# The JSON values each datatype takes, by the kind NumPy infers for them: np.array(data, dtype=...) alone
# would turn null into NaN, true into 1.0, 1.5 into 1 for an integer type and 300 into 44 for UINT8.
_KINDS: Final = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def _typed(name: str, datatype: str, dtype: np.dtype[Any], data: Any) -> np.ndarray:
    wrong = f"input '{name}': data is not a list of {datatype} values"
    try:
        array = np.array(data)
    except (ValueError, OverflowError, RecursionError) as exc:  # ragged or too deep
        raise invalid_argument(f"{wrong} nested as the shape is ({str(exc)[:120]})") from None
    if dtype.kind == "u" and dtype.itemsize == 8 and array.dtype.kind in "fO" and array.size:
        # UINT64's upper half, beyond INT64, comes out of NumPy's inference as float64 (rounded) or objects:
        # read the values as the Python ints they are, when every one is.
        flat: list[Any] = []
        _flatten(data, flat, 0)
        if all(type(value) is int for value in flat):
            limits = np.iinfo(dtype)
            if min(flat) < limits.min or max(flat) > limits.max:
                raise invalid_argument(f"{wrong}: values must lie in [{limits.min}, {limits.max}]")
            return np.array(flat, dtype=dtype).reshape(array.shape)
    if array.size and array.dtype.kind not in _KINDS.get(dtype.kind, ""):  # also refuses [true, 1.5]
        found = {"b": "true/false", "U": "strings", "O": "null, objects or numbers too large"}
        raise invalid_argument(f"{wrong}, got {found.get(array.dtype.kind, array.dtype.name)}")
    if dtype.kind in "iu" and array.size:
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise invalid_argument(f"{wrong}: values must lie in [{limits.min}, {limits.max}]")
    if dtype.kind == "f" and array.size:
        with np.errstate(over="ignore"):
            typed = array.astype(dtype)
        if np.count_nonzero(np.isinf(typed)) != np.count_nonzero(np.isinf(array)):  # 1e10 as FP16
            raise invalid_argument(
                f"{wrong}: a value is beyond {datatype}'s range (±{np.finfo(dtype).max:g})"
            )
        return typed
    return array.astype(dtype)


def _flatten(data: Any, out: list[Any], depth: int) -> set[int]:
    """Append the values of nested lists to `out`, row-major; returns the list depths they were found at."""
    if not isinstance(data, list):
        out.append(data)
        return {depth}
    depths: set[int] = set()
    for item in data:
        depths |= _flatten(item, out, depth + 1)
    return depths


def _unpack(name: str, datatype: str, raw: bytes) -> list[Any]:
    """Raw output bytes as a flat JSON list (BYTES elements as text)."""
    if datatype == BYTES:
        return [
            item.decode("utf-8", "replace")
            for item in bytes_tensor.deserialize(raw, None, f"output '{name}'")
        ]
    values: list[Any] = np.frombuffer(raw, dtype=WIRE_DTYPES[datatype]).tolist()
    return values
