"""KServe v2 tensors on the wire ⇄ NumPy arrays, and Triton's classification strings.

Raw contents are little-endian, row-major; BYTES elements each carry a 4-byte little-endian length prefix
(what tritonclient sends). Decoding raw contents never copies: `np.frombuffer` views the request's bytes.
Every failure is a `ServeError` with INVALID_ARGUMENT and a message naming what was expected.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from resnet_serve.formats.datatypes import BYTES, CONTENTS_FIELD, WIRE_DTYPES
from resnet_serve.server.errors import invalid_argument

_LENGTH: Final = struct.Struct("<I")


def element_count(name: str, shape: Sequence[int]) -> int:
    """The number of elements of a tensor shape, rejecting negative dimensions."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise invalid_argument(f"input '{name}': shape {list(shape)} has a negative dimension")
        count *= dim
    return count


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """View raw little-endian bytes as an array of `shape` (BYTES: an object array of bytes elements)."""
    count = element_count(name, shape)
    if datatype == BYTES:
        return _as_object_array(name, split_bytes(name, raw), shape, count)
    dtype = _wire_dtype(name, datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise invalid_argument(
            f"input '{name}': expected {expected} bytes for {datatype} shape {list(shape)}, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def from_contents(name: str, datatype: str, shape: Sequence[int], contents: Any) -> np.ndarray:
    """Build an array from typed InferTensorContents (the protobuf message)."""
    count = element_count(name, shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype == "FP16":
            raise invalid_argument(f"input '{name}': FP16 has no typed contents; send raw_input_contents")
        raise invalid_argument(f"input '{name}': unsupported datatype {datatype!r}")
    values = getattr(contents, field)
    if len(values) != count:
        raise invalid_argument(
            f"input '{name}': expected {count} values in {field} for shape {list(shape)}, got {len(values)}"
        )
    if datatype == BYTES:
        return _as_object_array(name, list(values), shape, count)
    try:
        return np.array(values, dtype=WIRE_DTYPES[datatype]).reshape(shape)
    except OverflowError:
        raise invalid_argument(f"input '{name}': a value in {field} is out of range for {datatype}") from None


def split_bytes(name: str, raw: bytes | memoryview) -> list[bytes]:
    """Split length-prefixed BYTES elements."""
    out: list[bytes] = []
    view = memoryview(raw)
    offset, end = 0, len(raw)
    while offset < end:
        if end - offset < _LENGTH.size:
            raise invalid_argument(f"input '{name}': truncated BYTES element length at byte {offset}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if end - offset < length:
            raise invalid_argument(
                f"input '{name}': BYTES element of {length} bytes runs past the end of the tensor"
            )
        out.append(bytes(view[offset : offset + length]))
        offset += length
    return out


def join_bytes(elements: Sequence[bytes]) -> bytes:
    """Serialise BYTES elements with their length prefixes, as raw contents."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


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


def _wire_dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = WIRE_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"input '{name}': unsupported datatype {datatype!r}")
    return dtype


def _as_object_array(name: str, elements: list[bytes], shape: Sequence[int], count: int) -> np.ndarray:
    if len(elements) != count:
        raise invalid_argument(
            f"input '{name}': expected {count} BYTES elements for shape {list(shape)}, got {len(elements)}"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array.reshape(shape)
