"""The server's registered shared-memory regions (Triton's shared-memory extension), by name.

One registry per server (`ServerContext.shared_memory`), with a plain API that the KServe gRPC RPCs and the
HTTP endpoints both call: `register` / `status` / `unregister` for system (POSIX) shared memory and
`register_cuda` / `cuda_status` / `unregister_cuda` for CUDA IPC memory. Names share one namespace, as in
Triton, because an inference request names a region without saying its kind. The KServe codec `resolve`s the
region an input or output names, with its offset and byte size checked against the region.

Semantics where Triton's documentation is silent, kept compatible with what Triton does:
* registering a name that is registered (under any key) is ALREADY_EXISTS; unregister it first;
* unregistering a name that is not registered succeeds and does nothing (clients unregister defensively);
  with no name, every region of that kind goes;
* unregistering a region that a request in flight uses takes it out of the registry at once (the next request
  naming it is refused) while that request keeps its mapping and completes, reading its inputs and writing its
  outputs; the region is unmapped (or its IPC handle closed) when the last such request is done — the
  request holds the region object, and the region releases itself when the last reference goes;
* at server shutdown, after the requests have drained, `close` releases every region.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from resnet_serve.server.errors import ServeError, invalid_argument, not_found
from resnet_serve.server.shm.cuda import CudaRegion, CudaRuntime, import_cudart, installed
from resnet_serve.server.shm.system import SHM_DIR, SystemRegion

# Each region holds a file descriptor (kept to re-check its size) and a mapping: a client that registers in a
# loop must not exhaust the process's descriptors (a soft limit of 1024 is common).
MAX_REGIONS: Final = 256

Region = SystemRegion | CudaRegion


def extensions() -> tuple[str, ...]:
    """The ServerMetadata extensions this module implements here."""
    return ("system_shared_memory", "cuda_shared_memory") if installed() else ("system_shared_memory",)


@dataclass(frozen=True)
class SystemStatus:
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class CudaStatus:
    name: str
    device_id: int
    byte_size: int


class SharedMemoryRegistry:
    """Registered regions by name. `cudart` returns the cuda-python runtime module (tests pass a fake)."""

    def __init__(
        self,
        cudart: Callable[[], Any] = import_cudart,
        root: Path = SHM_DIR,
        max_regions: int = MAX_REGIONS,
    ) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()
        self._cudart = cudart
        self._cuda: CudaRuntime | None = None
        self._root = root
        self._max = max_regions

    def __len__(self) -> int:
        return len(self._regions)

    # ---------------------------------------------------------------------------------------------- system

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map `byte_size` bytes at `offset` of the shared-memory object `key` as region `name`."""
        self._add(name, lambda: SystemRegion(name, key, offset, byte_size, self._root))

    def status(self, name: str | None = None) -> list[SystemStatus]:
        return [SystemStatus(r.name, r.key, r.offset, r.byte_size) for r in self._of_kind(SystemRegion, name)]

    def unregister(self, name: str | None = None) -> None:
        self._remove(SystemRegion, name)

    # ------------------------------------------------------------------------------------------------ CUDA

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """Open another process's device allocation (its cudaIpcMemHandle_t) as region `name`."""
        self._add(name, lambda: CudaRegion(name, raw_handle, device_id, byte_size, self._runtime()))

    def cuda_status(self, name: str | None = None) -> list[CudaStatus]:
        return [CudaStatus(r.name, r.device_id, r.byte_size) for r in self._of_kind(CudaRegion, name)]

    def unregister_cuda(self, name: str | None = None) -> None:
        self._remove(CudaRegion, name)

    def _runtime(self) -> CudaRuntime:
        if self._cuda is None:
            self._cuda = CudaRuntime(self._cudart())
        return self._cuda

    # ------------------------------------------------------------------------------------------ inference

    def resolve(self, name: str, offset: int, byte_size: int, tensor: str) -> Region:
        """The region a tensor names, with [offset, offset + byte_size) inside it; `tensor` ("input 'x'")
        starts each error message. Raises INVALID_ARGUMENT."""
        region = self._regions.get(name)
        if region is None:
            raise invalid_argument(
                f"{tensor}: shared memory region '{name}' is not registered "
                "(register it with SystemSharedMemoryRegister or CudaSharedMemoryRegister first)"
            )
        if offset < 0 or byte_size < 0:
            raise invalid_argument(
                f"{tensor}: shared_memory_offset and shared_memory_byte_size must be non-negative, "
                f"got {offset} and {byte_size}"
            )
        if offset + byte_size > region.byte_size:
            raise invalid_argument(
                f"{tensor}: shared_memory_offset {offset} + shared_memory_byte_size {byte_size} runs past "
                f"the end of shared memory region '{name}' ({region.byte_size} bytes)"
            )
        return region

    def close(self) -> None:
        """Release every region (server shutdown, after the requests in flight are done)."""
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
        for region in regions:
            region.close()

    # ------------------------------------------------------------------------------------------- helpers

    def _add(self, name: str, make: Callable[[], Region]) -> None:
        if not name:
            raise invalid_argument("a shared memory region needs a name")
        with self._lock:
            existing = self._regions.get(name)
            if existing is not None:
                where = f"key {existing.key!r}" if isinstance(existing, SystemRegion) else "CUDA memory"
                raise ServeError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"shared memory region '{name}' is already registered ({where}); unregister it first",
                )
            if len(self._regions) >= self._max:
                raise ServeError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._max} shared memory regions are registered, the most this server holds; "
                    "unregister some first",
                )
            self._regions[name] = make()  # under the lock: two registrations of one name cannot both map

    def _of_kind(self, kind: type[Region], name: str | None) -> list[Any]:
        with self._lock:
            if not name:
                return [r for r in self._regions.values() if isinstance(r, kind)]
            region = self._regions.get(name)
        if not isinstance(region, kind):
            what = "system" if kind is SystemRegion else "CUDA"
            raise not_found(f"no {what} shared memory region named '{name}' is registered")
        return [region]

    def _remove(self, kind: type[Region], name: str | None) -> None:
        with self._lock:
            names = [n for n, r in self._regions.items() if isinstance(r, kind) and (not name or n == name)]
            gone = [self._regions.pop(n) for n in names]
        del gone  # each region unmaps now, or when the last request in flight that holds it is done
