"""What every servicer on the gRPC server shares: config, models, metrics and the preprocessing pool.

`server.app` builds one `ServerContext` and hands it to each API it registers (our image API, KServe v2:
`kserve.service.register(server, ctx)`, which returns the full name of the service it added, for
reflection and health).
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field

from resnet_serve.server.config import ServerConfig
from resnet_serve.server.inflight import InFlight
from resnet_serve.server.models.manager import ModelManager
from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.shm.control import LocalRegions, RegionControl
from resnet_serve.server.shm.registry import SharedMemoryRegistry


@dataclass
class ServerContext:
    config: ServerConfig
    manager: ModelManager
    metrics: ServerMetrics
    pool: Executor  # image decoding and other CPU work that must stay off the event loop
    shutting_down: bool = False
    # Unary RPCs are counted by an interceptor; a streaming RPC wraps each item it works on in
    # `with ctx.in_flight:` so that shutdown waits for it.
    in_flight: InFlight = field(default_factory=InFlight)
    # Triton's shared-memory extension: the regions clients registered (released in InferenceServer.stop).
    shared_memory: SharedMemoryRegistry = field(default_factory=SharedMemoryRegistry)
    # Registering and unregistering regions: on `shared_memory` itself, or (a worker process) via the engine.
    region_control: RegionControl | None = None

    @property
    def regions(self) -> RegionControl:
        if self.region_control is None:
            self.region_control = LocalRegions(self.shared_memory)
        return self.region_control

    def live(self) -> bool:
        """The process is up and answering (also while it drains)."""
        return True

    def ready(self) -> bool:
        """Accepting requests, and (with strict readiness, the default) every model meant to be served has a
        ready version (see all_ready)."""
        return not self.shutting_down and self.manager.all_ready(self.config.strict_readiness)
