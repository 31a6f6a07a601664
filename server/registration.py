"""How services are added to the grpc.aio server: as generic handlers only, never as registered methods.

The code grpcio-tools generates (`add_<Service>Servicer_to_server`) adds each service twice: as a generic
handler and as "registered methods" (`Server.add_registered_method_handlers`). grpc.aio (since grpcio 1.63,
grpc/grpc#41796) keeps one pending request-call task per registered method, and its accept loop waits on all
of them with `asyncio.wait(..., FIRST_COMPLETED)` for every RPC it accepts: with this server's 27 methods
(KServe, the image API, health, reflection) each request cost 28 done-callbacks added and removed, 28
`iscoroutine` checks and their set, in the event loop's thread. grpc/grpc#43461 (open) describes the
regression. Generic handlers resolve the same methods by one dict lookup each, so nothing is lost: this
server's gRPC worker CPU per request fell ~20 µs (6 %) when the registered methods went
(docs/benchmarking.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc


class GenericOnly:
    """A grpc.aio server as the generated `add_*_to_server` functions see it: what they register as generic
    handlers reaches the server, their registered methods do not (the module's docstring says why)."""

    __slots__ = ("_server",)

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        return None  # every method is in the service's generic handler already
