"""A worker process of `serve --workers N`: the gRPC and HTTP front ends on the ports it shares with the other
workers (SO_REUSEPORT), doing all of a request's own work (the protocol, parsing, access rules, admission,
decoding and preprocessing, encoding the answer) and sending its tensors to the engine (server/remote/).

Started by the engine (supervisor.py) as `python -m resnet_serve.server.processes.worker SOCKET_FD
ARENA_FD ARENA_BYTES DEPTHS_FD INDEX LOG_LEVEL LOG_FORMAT`, with the server's settings as JSON on standard
input: they may hold a token, which must never be on a command line. Exit status: 0 after a drain (SIGTERM),
3 when the engine went away (its readiness went NOT_SERVING at once; the orchestrator restarts the server).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import sys

from resnet_serve.server.observability.logging import configure_logging, quiet_grpc_core

log = logging.getLogger("resnet_serve.server.worker")

ENGINE_LOST_EXIT = 3
# How long a worker whose engine died keeps answering health NOT_SERVING (and requests UNAVAILABLE) before it
# exits, so that probes see the server unready rather than a refused connection.
ENGINE_LOST_LINGER_S = 1.0


async def run(
    sock_fd: int,
    arena_fd: int,
    arena_bytes: int,
    places_fd: int,
    workers: int,
    index: int,
    config_json: str,
) -> int:
    from resnet_serve.server.app import InferenceServer, StartupError, freeze_startup_objects
    from resnet_serve.server.config import ServerConfig
    from resnet_serve.server.ipc import messages as m
    from resnet_serve.server.ipc.arena import Arena
    from resnet_serve.server.ipc.places import QueuePlaces
    from resnet_serve.server.observability.metrics import ServerMetrics
    from resnet_serve.server.remote.link import EngineLink
    from resnet_serve.server.remote.manager import RemoteManager
    from resnet_serve.server.remote.regions import RemoteRegions, mirror
    from resnet_serve.server.shm.registry import SharedMemoryRegistry

    config = ServerConfig.model_validate_json(config_json)
    # The engine serves /metrics (the server's totals) and writes the ready file.
    config = config.model_copy(update={"metrics_port": -1, "ready_file": ""})
    link = EngineLink(Arena(arena_fd, arena_bytes))
    metrics = ServerMetrics(enabled=config.metrics, triton_names=config.triton_metrics)
    registry = SharedMemoryRegistry()
    mirror(registry, link)
    manager = RemoteManager(config, metrics, link, QueuePlaces(places_fd, workers, index))
    os.close(places_fd)  # mapped
    link.on(m.PULL_METRICS, lambda rid: link.send((m.METRICS, rid, metrics.export())))
    await link.open(socket.socket(fileno=sock_fd))
    server = InferenceServer(
        config, metrics, manager=manager, registry=registry, regions=RemoteRegions(link), worker=True
    )
    try:
        await server.start()
    except StartupError as exc:
        log.error("worker %d cannot start: %s", index, exc)
        return 1
    server.install_signal_handlers()
    lost = False

    def engine_lost() -> None:
        nonlocal lost
        lost = True
        log.error("worker %d: the engine process stopped; not serving, exiting", index)
        asyncio.get_running_loop().call_later(ENGINE_LOST_LINGER_S, server.request_stop)

    link.on_lost(engine_lost)
    link.send((m.READY, server.grpc_port, server.http_port or 0))
    log.debug("worker %d ready", index)
    freeze_startup_objects()
    await server.wait_for_shutdown()
    return ENGINE_LOST_EXIT if lost else 0


# glibc's malloc, left to itself, gave each 600 KB request's buffers back to the kernel and faulted them in
# again on the next request: ~120 page faults per request, a third of a worker's CPU on [1,3,224,224] FP32
# (perf stat, docs/benchmarking.md). A worker keeps freed memory for reuse up to this much instead.
MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024  # allocations below it come from the heap, whose memory is reused
MALLOC_TRIM_THRESHOLD = 256 * 1024 * 1024  # free memory kept at the top of the heap before it is returned
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Tune glibc's malloc for a worker's request buffers (nothing where the C library is another)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)


def main(argv: list[str]) -> int:
    keep_freed_memory()
    sock_fd, arena_fd, arena_bytes, places_fd, workers, index = (int(a) for a in argv[:6])
    configure_logging(argv[6], argv[7], worker=index)
    quiet_grpc_core()  # before grpc is imported
    config_json = sys.stdin.read()
    return asyncio.run(run(sock_fd, arena_fd, arena_bytes, places_fd, workers, index, config_json))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
