"""The KServe v2 tensor encodings, whatever the request and the model: raw little-endian contents, typed
contents (InferTensorContents), BYTES elements (formats/bytes_tensor.py) and Triton's classification strings,
each checked before an array is built (a shape NumPy could not describe, a size that does not match, a value
out of range: INVALID_ARGUMENT naming the input). Used by server/kserve/codec.py for gRPC and HTTP requests
and by server/http/binary.py for the HTTP body."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from resnet_serve.formats import bytes_tensor
from resnet_serve.formats.datatypes import BYTES, CONTENTS_FIELD, WIRE_DTYPES
from resnet_serve.formats.errors import InvalidInput
from resnet_serve.server.errors import ServeError, echo, invalid_argument

MAX_DIMS: Final = 32  # NumPy allows 64; a model input has a handful
# The most elements a shape may span with each 0 dimension counted as 1. NumPy refuses to describe a larger
# shape even when it holds no elements ([0, 2**62]: "array is too big"), so such a request has to be
# refused here, as INVALID_ARGUMENT, before anything is allocated; 2**48 is far past any message gRPC takes.
MAX_SPAN: Final = 2**48


def element_count(name: str, shape: Sequence[int]) -> int:
    """The number of elements of a tensor shape; INVALID_ARGUMENT for a negative dimension, more than
    MAX_DIMS dimensions or a span over MAX_SPAN, so every shape that passes can be built by NumPy."""
    if len(shape) > MAX_DIMS:
        raise invalid_argument(f"input {echo(name)}: {len(shape)} dimensions; at most {MAX_DIMS}")
    count = 1
    span = 1
    for dim in shape:
        if dim < 0:
            raise invalid_argument(f"input {echo(name)}: shape {echo(list(shape))} has a negative dimension")
        count *= dim
        span *= max(dim, 1)
    if span > MAX_SPAN:
        raise invalid_argument(f"input {echo(name)}: shape {echo(list(shape))} is too large")
    return count


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """View raw little-endian bytes as an array of `shape` (BYTES: an object array of bytes elements)."""
    count = element_count(name, shape)
    if datatype == BYTES:  # prefixes checked against the buffer before anything is split
        try:
            elements = bytes_tensor.deserialize(raw, count, f"input {echo(name)}")
        except InvalidInput as exc:
            raise invalid_argument(str(exc)) from None
        return bytes_tensor.object_array(elements, shape)
    dtype = wire_dtype(name, datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise count_mismatch(name, expected, shape, f"bytes for {datatype}", len(raw))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def from_contents(name: str, datatype: str, shape: Sequence[int], contents: Any) -> np.ndarray:
    """Build an array from typed InferTensorContents (the protobuf message)."""
    count = element_count(name, shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype == "FP16":
            raise invalid_argument(f"input {echo(name)}: FP16 has no typed contents; send raw_input_contents")
        raise invalid_argument(f"input {echo(name)}: unsupported datatype {echo(datatype)}")
    values = getattr(contents, field)
    if len(values) != count:
        raise count_mismatch(name, count, shape, f"values in {field}", len(values))
    if datatype == BYTES:
        return bytes_tensor.object_array(list(values), shape)
    try:
        return np.array(values, dtype=WIRE_DTYPES[datatype]).reshape(shape)
    except OverflowError:
        raise invalid_argument(
            f"input {echo(name)}: a value in {field} is out of range for {datatype}"
        ) from None


def top_k_strings(scores: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """Triton's classification extension: for each row, the k largest values as "value:index:label".

    Values print as C's "%f" (Triton uses std::to_string); ties keep the lower index first. Rows are
    concatenated, so the result reshapes to (rows, min(k, classes)).
    """
    rows = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(1, -1)
    k = min(k, rows.shape[1])
    # A stable sort of the negated values keeps equal scores in index order (std::sort leaves it undefined).
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out: list[bytes] = []
    for row, indices in zip(rows, order, strict=True):
        for i in indices.tolist():
            text = f"{float(row[i]):f}:{i}"
            if i < len(labels):
                text += f":{labels[i]}"
            out.append(text.encode())
    return out


def count_mismatch(name: str, expected: int, shape: Sequence[int], what: str, got: int) -> ServeError:
    return invalid_argument(
        f"input {echo(name)}: expected {expected} {what} for shape {echo(list(shape))}, got {got}"
    )


def wire_dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = WIRE_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"input {echo(name)}: unsupported datatype {echo(datatype)}")
    return dtype
