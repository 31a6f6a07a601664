"""Tensors in shared memory (Triton's extension; server/shm/): where an input or a requested output lives when
its parameters name a registered region (`shared_memory_region`, `shared_memory_byte_size`, optionally
`shared_memory_offset`), read as a view of the region, or written into it. Every region, offset and size is
checked before any work: an input's byte size must be exactly its shape × datatype, an output's at least that.
server/kserve/codec.py calls these for a request's inputs and outputs, gRPC and HTTP alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from resnet_serve.formats.datatypes import BYTES, numpy_to_kserve
from resnet_serve.server.errors import invalid_argument
from resnet_serve.server.kserve.tensors import element_count, from_raw, wire_dtype
from resnet_serve.server.models.served import ServedModel
from resnet_serve.server.shm.parameters import (
    SHARED_MEMORY_BYTE_SIZE,
    SHARED_MEMORY_OFFSET,
    SHARED_MEMORY_REGION,
)
from resnet_serve.server.shm.registry import Region, SharedMemoryRegistry

_NO_SHARED_MEMORY: Final = "shared memory is not supported here; send tensors in raw_input_contents"


@dataclass(frozen=True)
class SharedTensor:
    """Where a tensor lives in shared memory: `byte_size` bytes at `offset` of the registered `region`."""

    region: Region
    name: str  # the region's name, as the request gave it
    offset: int
    byte_size: int


def shared_tensor(parameters: Any, tensor: str, regions: SharedMemoryRegistry | None) -> SharedTensor | None:
    """The region a tensor's parameters name, checked against it; None when the tensor is in the message.
    `tensor` ("input 'x'") starts each error message."""
    param = parameters.get(SHARED_MEMORY_REGION)
    if param is None:
        return None
    if regions is None:
        raise invalid_argument(_NO_SHARED_MEMORY)
    if param.WhichOneof("parameter_choice") != "string_param" or not param.string_param:
        raise invalid_argument(
            f"{tensor}: the {SHARED_MEMORY_REGION} parameter must be a region name (a string)"
        )
    if SHARED_MEMORY_BYTE_SIZE not in parameters:
        raise invalid_argument(f"{tensor}: a tensor in shared memory needs {SHARED_MEMORY_BYTE_SIZE}")
    byte_size = _int_parameter(parameters, SHARED_MEMORY_BYTE_SIZE, tensor)
    offset = (
        _int_parameter(parameters, SHARED_MEMORY_OFFSET, tensor) if SHARED_MEMORY_OFFSET in parameters else 0
    )
    region = regions.resolve(param.string_param, offset, byte_size, tensor)
    return SharedTensor(region, param.string_param, offset, byte_size)


def _int_parameter(parameters: Any, key: str, tensor: str) -> int:
    param = parameters[key]
    choice = param.WhichOneof("parameter_choice")
    if choice not in ("int64_param", "uint64_param") or getattr(param, choice) < 0:
        raise invalid_argument(f"{tensor}: the {key} parameter must be a non-negative integer")
    return int(getattr(param, choice))


def from_region(name: str, datatype: str, shape: Sequence[int], where: SharedTensor) -> np.ndarray:
    """An input read from shared memory: a zero-copy view of system memory, a host copy of CUDA memory."""
    if datatype != BYTES:
        expected = element_count(name, shape) * wire_dtype(name, datatype).itemsize
        if where.byte_size != expected:
            raise invalid_argument(
                f"input '{name}': {SHARED_MEMORY_BYTE_SIZE} {where.byte_size} does not match {datatype} "
                f"{list(shape)} ({expected} bytes)"
            )
    return from_raw(name, datatype, shape, where.region.view(where.offset, where.byte_size))


def check_output_room(model: ServedModel, name: str, rows: int, where: SharedTensor) -> None:
    """Refuse, before any work, an output region too small for the output (when its size is known now: no
    dynamic dimension besides the batch)."""
    spec = next(s for s in model.info.outputs if s.name == name)
    dims = [rows, *spec.shape[1:]] if model.info.max_batch_size > 0 else list(spec.shape)
    if any(d < 0 for d in dims) or spec.dtype.hasobject:  # BYTES: the size is known only when written
        return
    needed = int(np.prod(dims)) * spec.dtype.itemsize
    if where.byte_size < needed:
        raise invalid_argument(
            f"output '{name}': {SHARED_MEMORY_BYTE_SIZE} {where.byte_size} is too small for "
            f"{numpy_to_kserve(spec.dtype)} {dims} ({needed} bytes)"
        )


def write_region(name: str, where: SharedTensor, data: memoryview, params: Any) -> None:
    """Write an output's bytes into its region and echo the region in the output's parameters (`params`)."""
    if data.nbytes > where.byte_size:  # an output with dynamic dimensions: its size is known only now
        raise invalid_argument(
            f"output '{name}': {SHARED_MEMORY_BYTE_SIZE} {where.byte_size} is too small for the "
            f"{data.nbytes} bytes of the output"
        )
    where.region.write(where.offset, data)
    params[SHARED_MEMORY_REGION].string_param = where.name
    params[SHARED_MEMORY_BYTE_SIZE].int64_param = data.nbytes
    if where.offset:
        params[SHARED_MEMORY_OFFSET].int64_param = where.offset
