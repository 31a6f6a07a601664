"""Tensor datatypes: the one table between KServe v2 / Triton datatype names and NumPy dtypes.

The server's KServe codec, its ModelConfig answers and the benchmarks read it; backends speak NumPy dtypes
only and never see these names.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import numpy as np

from resnet_serve.formats.errors import InvalidInput

# Little-endian on the wire whatever the host, so the dtypes say so explicitly.
WIRE_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
# Variable-length byte strings (encoded images, classification results): NumPy object arrays of bytes.
BYTES: Final = "BYTES"

# Which InferTensorContents field carries each datatype (8/16-bit integers travel widened to 32 bits).
CONTENTS_FIELD: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}

_BY_NUMPY_NAME: Final[dict[str, str]] = {dtype.name: name for name, dtype in WIRE_DTYPES.items()} | {
    "object": BYTES,
    "bytes": BYTES,
}


class UnsupportedDatatype(InvalidInput):
    """A dtype or datatype name outside the table."""


@functools.lru_cache(maxsize=64)  # on every request's path; numpy builds a dtype's name in Python each time
def numpy_to_kserve(dtype: np.dtype[Any]) -> str:
    """The KServe datatype name of a NumPy dtype (`float32` → `FP32`, object → `BYTES`)."""
    try:
        return _BY_NUMPY_NAME[np.dtype(dtype).name]
    except KeyError:
        raise UnsupportedDatatype(f"unsupported tensor dtype {dtype}") from None


def config_type(name: str) -> str:
    """Triton's model-configuration enum name: `FP32` → `TYPE_FP32`, BYTES → `TYPE_STRING`."""
    return "TYPE_STRING" if name == BYTES else f"TYPE_{name}"
