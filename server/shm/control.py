"""Registering and unregistering shared-memory regions, as the services ask for it: in one process straight on
the server's registry (`LocalRegions`); in a worker process through the engine, which keeps the one registry
of the server and tells every worker (server/remote/regions.py). Status and lookups read the process's own
registry, which in a worker mirrors the engine's."""

from __future__ import annotations

import asyncio
from typing import Protocol

from resnet_serve.server.shm.registry import SharedMemoryRegistry


class RegionControl(Protocol):
    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None: ...

    async def unregister(self, name: str | None = None) -> None: ...

    async def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None: ...

    async def unregister_cuda(self, name: str | None = None) -> None: ...


class LocalRegions:
    """Changes made on this process's registry."""

    def __init__(self, registry: SharedMemoryRegistry) -> None:
        self.registry = registry

    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.registry.register(name, key, offset, byte_size)

    async def unregister(self, name: str | None = None) -> None:
        self.registry.unregister(name)

    async def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        # Off the event loop: the first CUDA call of the process creates its context (a second or so).
        await asyncio.to_thread(self.registry.register_cuda, name, raw_handle, device_id, byte_size)

    async def unregister_cuda(self, name: str | None = None) -> None:
        self.registry.unregister_cuda(name)
