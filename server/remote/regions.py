"""A worker's shared-memory registrations go to the engine, which keeps the server's one registry and tells
every worker (a REGIONS message) before it answers; each worker mirrors the registry (`mirror`) and reads
regions from its own mapping of them. A region registered over one connection therefore serves an inference
that arrives on another connection, in another worker."""

from __future__ import annotations

import logging
from typing import Any

from resnet_serve.server.ipc import messages as m
from resnet_serve.server.remote.link import EngineLink
from resnet_serve.server.shm.registry import SharedMemoryRegistry

log = logging.getLogger(__name__)


class RemoteRegions:
    """RegionControl (server/shm/control.py) through the engine."""

    def __init__(self, link: EngineLink) -> None:
        self._link = link

    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self._link.call(m.REGISTER, name, key, offset, byte_size)

    async def unregister(self, name: str | None = None) -> None:
        await self._link.call(m.UNREGISTER, name)

    async def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        await self._link.call(m.REGISTER_CUDA, name, raw_handle, device_id, byte_size)

    async def unregister_cuda(self, name: str | None = None) -> None:
        await self._link.call(m.UNREGISTER_CUDA, name)


def mirror(registry: SharedMemoryRegistry, link: EngineLink) -> None:
    """Apply the engine's REGIONS messages to this worker's registry."""

    def apply(op: str, args: tuple[Any, ...]) -> None:
        try:
            if op == m.REGISTER:
                registry.register(*args)
            elif op == m.UNREGISTER:
                registry.unregister(*args)
            elif op == m.REGISTER_CUDA:
                registry.register_cuda(*args)
            elif op == m.UNREGISTER_CUDA:
                registry.unregister_cuda(*args)
        except (
            Exception
        ) as exc:  # the engine mapped it; this worker could not: requests naming it are refused
            log.error(
                "shared memory region %r: the engine registered it, this worker cannot map it: %s",
                args[0],
                exc,
            )

    link.on(m.REGIONS, apply)
