"""BYTES tensors (Triton's TYPE_STRING, ONNX `tensor(string)`): Triton's serialisation, in one place.

In memory a BYTES tensor is a NumPy object array whose elements are `bytes`. Serialised (gRPC's
raw_input_contents and raw_output_contents, the HTTP binary tensor extension, and system shared memory), each
element is a 4-byte little-endian unsigned length followed by that many bytes, elements in row-major order,
with nothing between or after them (tritonclient's `serialize_byte_tensor`). Typed contents carry the
elements in `bytes_contents`; JSON over HTTP carries them as strings.

Both front ends (server/kserve/codec.py for gRPC and shared memory, server/http/binary.py for HTTP) use
these functions, so the two cannot disagree. Limits come before memory: a tensor whose buffer cannot hold
its elements' length prefixes is refused before anything is split, and a length prefix larger than what is
left of the buffer is an `InvalidInput` naming the element, never an exception from slicing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np

from resnet_serve.formats.errors import InvalidInput

LENGTH: Final = struct.Struct("<I")  # each element's length prefix
PREFIX_BYTES: Final = LENGTH.size


def serialize(elements: Iterable[bytes]) -> bytes:
    """Elements with their length prefixes, concatenated (what raw contents and shared memory hold)."""
    return b"".join(LENGTH.pack(len(e)) + e for e in elements)


def serialize_array(array: np.ndarray) -> bytes:
    """An object array of bytes (or str, UTF-8 encoded) serialised in row-major order."""
    return serialize(as_bytes(item) for item in array.reshape(-1).tolist())


def as_bytes(item: object) -> bytes:
    """One element as bytes: bytes as is, str as UTF-8 (what a backend may hand back for a string)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8", "surrogateescape")
    if isinstance(item, bytearray | memoryview | np.bytes_):
        return bytes(item)
    raise InvalidInput(f"a BYTES element must be bytes or a string, got {type(item).__name__}")


def deserialize(raw: bytes | memoryview, count: int | None = None, tensor: str = "the tensor") -> list[bytes]:
    """Split length-prefixed elements. With `count`, the buffer must hold exactly that many (checked
    against the buffer's size before any element is copied). InvalidInput otherwise, its message starting
    with `tensor` ("input 'x'", already made safe to echo by the caller)."""
    view = memoryview(raw).cast("B")
    end = view.nbytes
    if count is not None and count * PREFIX_BYTES > end:
        raise InvalidInput(
            f"{tensor}: {end} bytes cannot hold {count} BYTES elements "
            f"(each needs a {PREFIX_BYTES}-byte length prefix)"
        )
    out: list[bytes] = []
    offset = 0
    while offset < end:
        if count is not None and len(out) == count:
            raise InvalidInput(
                f"{tensor}: {end - offset} bytes follow the {count} BYTES elements of the tensor"
            )
        if end - offset < PREFIX_BYTES:
            raise InvalidInput(f"{tensor}: truncated BYTES element length at byte {offset}")
        (length,) = LENGTH.unpack_from(view, offset)
        offset += PREFIX_BYTES
        if length > end - offset:
            raise InvalidInput(
                f"{tensor}: BYTES element {len(out)} says {length} bytes but only {end - offset} "
                "remain in the tensor"
            )
        out.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(out) != count:
        raise InvalidInput(f"{tensor}: expected {count} BYTES elements, got {len(out)}")
    return out


def check_text(array: np.ndarray, tensor: str) -> None:
    """Every element is UTF-8 text: what a model's string tensor holds (ONNX Runtime's Python binding passes
    string tensors as text). InvalidInput names the first element that is not."""
    for i, item in enumerate(array.reshape(-1).tolist()):
        try:
            as_bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"{tensor}: BYTES element {i} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "the model's string tensors hold text"
            ) from None


def object_array(elements: Sequence[bytes], shape: Sequence[int]) -> np.ndarray:
    """The elements as an object array of `shape` (their count must be its element count)."""
    array = np.empty(len(elements), dtype=object)
    array[:] = list(elements)
    return array.reshape(tuple(shape))


def zeros(shape: Sequence[int]) -> np.ndarray:
    """A BYTES tensor of empty elements: Triton's zero data for TYPE_STRING (every length prefix 0)."""
    array = np.empty(tuple(shape), dtype=object)
    array.fill(b"")
    return array
