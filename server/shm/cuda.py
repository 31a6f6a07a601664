"""A CUDA shared-memory region a client registered: device memory of another process, opened by IPC handle.

`tritonclient.utils.cuda_shared_memory` allocates device memory with `cudaMalloc` and registers the raw
`cudaIpcMemHandle_t` (64 bytes), the device and the byte size; the server opens it with
`cudaIpcOpenMemHandle` and closes it with `cudaIpcCloseMemHandle` on unregister or shutdown. Our backends take
host arrays (ONNX Runtime on CPU; TensorRT and PyTorch copy their inputs to the device themselves), so an
input is copied device→host with `cudaMemcpy` and an output host→device.

The CUDA runtime comes from cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` before cuda-python 12.6),
imported only when a client first registers a CUDA region, so servers without a GPU never load it and answer
FAILED_PRECONDITION instead. `CudaRuntime` takes the module as an argument, which is how the tests drive this
code with a fake module on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import weakref
from collections.abc import Callable
from typing import Any, Final

import grpc
import numpy as np

from resnet_serve.server.errors import ServeError, invalid_argument

log = logging.getLogger(__name__)

MODULES: Final = ("cuda.bindings.runtime", "cuda.cudart")
NEEDS: Final = "CUDA shared memory needs a GPU and cuda-python (pip install cuda-python)"


def installed() -> bool:
    """Whether cuda-python is importable (not whether a GPU is present): what ServerMetadata advertises."""
    try:
        return importlib.util.find_spec("cuda.bindings") is not None or (
            importlib.util.find_spec("cuda") is not None
            and importlib.util.find_spec("cuda.cudart") is not None
        )
    except (ImportError, ValueError):
        return False


def import_cudart() -> Any:
    """The cuda-python runtime module; raises FAILED_PRECONDITION when cuda-python is not installed."""
    for name in MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ServeError(grpc.StatusCode.FAILED_PRECONDITION, NEEDS)


class CudaRuntime:
    """The few CUDA runtime calls a region needs, each checked (a failure raises ServeError)."""

    def __init__(self, cudart: Any) -> None:
        self._rt = cudart
        self.handle_size = int(cudart.CUDA_IPC_HANDLE_SIZE)

    def _call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        result = function(*args)
        error = result[0]
        if error != self._rt.cudaError_t.cudaSuccess:
            _, text = self._rt.cudaGetErrorString(error)
            detail = text.decode() if isinstance(text, bytes) else str(text)
            code = grpc.StatusCode.FAILED_PRECONDITION if what == "find a GPU" else grpc.StatusCode.INTERNAL
            raise ServeError(code, f"CUDA shared memory: cannot {what}: {detail}")
        return result[1] if len(result) > 1 else None

    def device_count(self) -> int:
        try:
            count = int(self._call("find a GPU", self._rt.cudaGetDeviceCount))
        except ServeError as exc:
            raise ServeError(grpc.StatusCode.FAILED_PRECONDITION, f"{NEEDS}: {exc.message}") from None
        return count

    def open(self, raw_handle: bytes, device_id: int) -> int:
        """The device pointer of another process's allocation (`cudaIpcOpenMemHandle`)."""
        handle = self._rt.cudaIpcMemHandle_t()
        ctypes.memmove(handle.getPtr(), raw_handle, self.handle_size)
        self._call(f"select device {device_id}", self._rt.cudaSetDevice, device_id)
        pointer = self._call(
            "open the IPC handle",
            self._rt.cudaIpcOpenMemHandle,
            handle,
            self._rt.cudaIpcMemLazyEnablePeerAccess,
        )
        return int(pointer)

    def close(self, pointer: int, device_id: int) -> None:
        self._call(f"select device {device_id}", self._rt.cudaSetDevice, device_id)
        self._call("close the IPC handle", self._rt.cudaIpcCloseMemHandle, pointer)

    def to_host(self, pointer: int, nbytes: int, device_id: int) -> np.ndarray:
        host = np.empty(nbytes, dtype=np.uint8)
        self._call(f"select device {device_id}", self._rt.cudaSetDevice, device_id)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("copy from the device", self._rt.cudaMemcpy, host.ctypes.data, pointer, nbytes, kind)
        return host

    def to_device(self, pointer: int, data: memoryview, device_id: int) -> None:
        host = np.frombuffer(data, dtype=np.uint8)
        self._call(f"select device {device_id}", self._rt.cudaSetDevice, device_id)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("copy to the device", self._rt.cudaMemcpy, pointer, host.ctypes.data, host.nbytes, kind)


class CudaRegion:
    """`byte_size` bytes of device `device_id` memory, opened from a client's IPC handle."""

    kind: Final = "cuda"

    def __init__(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int, cuda: CudaRuntime
    ) -> None:
        if byte_size <= 0:
            raise invalid_argument(f"CUDA shared memory region '{name}': byte_size must be positive")
        if len(raw_handle) != cuda.handle_size:
            raise invalid_argument(
                f"CUDA shared memory region '{name}': raw_handle must be the {cuda.handle_size}-byte "
                f"cudaIpcMemHandle_t, got {len(raw_handle)} bytes"
            )
        devices = cuda.device_count()
        if not 0 <= device_id < devices:
            raise invalid_argument(
                f"CUDA shared memory region '{name}': device_id {device_id} is not one of this server's "
                f"{devices} GPU(s)"
            )
        self.name = name
        self.device_id = device_id
        self.byte_size = byte_size
        self._cuda = cuda
        self._pointer = cuda.open(raw_handle, device_id)
        # Closed by `close()`, or when the last reference goes (unregistered while a request held it).
        self._release = weakref.finalize(self, _close, cuda, name, self._pointer, device_id)

    @property
    def mapped(self) -> bool:
        return bool(self._release.alive)

    def _live(self) -> int:
        if not self._release.alive:
            raise ServeError(
                grpc.StatusCode.UNAVAILABLE, f"CUDA shared memory region '{self.name}' was released"
            )
        return self._pointer

    def view(self, offset: int, nbytes: int) -> memoryview:
        """A host copy of the region's bytes [offset, offset + nbytes)."""
        return self._cuda.to_host(self._live() + offset, nbytes, self.device_id).data

    def write(self, offset: int, data: memoryview) -> None:
        self._cuda.to_device(self._live() + offset, data, self.device_id)

    def close(self) -> None:
        self._release()


def _close(cuda: CudaRuntime, name: str, pointer: int, device_id: int) -> None:
    try:
        cuda.close(pointer, device_id)
    except ServeError as exc:  # at shutdown or from a finalizer: nobody to answer, so say it once
        log.warning("CUDA shared memory region '%s': %s", name, exc.message)
