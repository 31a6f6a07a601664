"""The gRPC server: our image API, KServe v2, health and reflection on one grpc.aio server, the same KServe
v2 API over HTTP/REST on the same event loop (server/http/), and Prometheus metrics on their own HTTP port.

Shutdown (SIGTERM/SIGINT, or `stop()`): health turns NOT_SERVING and every new request is refused with
UNAVAILABLE, requests already accepted complete within the grace period, then the batchers drain and the
backends are released.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from resnet_serve.formats.ready import Endpoint, Ready, ReadyModel, check_ready_path, write_ready
from resnet_serve.protos import classifier_pb2, classifier_pb2_grpc
from resnet_serve.runtime.cpus import default_threads
from resnet_serve.server.config import ServerConfig
from resnet_serve.server.context import ServerContext
from resnet_serve.server.drain import close_sockets, refuse_connections
from resnet_serve.server.http.app import HttpServer
from resnet_serve.server.http.tls import ssl_context
from resnet_serve.server.image.service import ImageClassifierService
from resnet_serve.server.inflight import InFlightInterceptor
from resnet_serve.server.kserve import service as kserve
from resnet_serve.server.models.manager import GRACE_OVER, ModelManager
from resnet_serve.server.models.poll import RepositoryPoller
from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.registration import GenericOnly
from resnet_serve.server.security import model_control
from resnet_serve.server.security.files import SecurityError
from resnet_serve.server.security_policy import SecurityPolicy
from resnet_serve.server.shm.control import RegionControl
from resnet_serve.server.shm.registry import SharedMemoryRegistry
from resnet_serve.server.transport import max_message_bytes

log = logging.getLogger(__name__)

IMAGE_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["ImageClassifier"].full_name
_MB = 1024 * 1024
# How long, after the last accepted request is answered, the server keeps refusing new ones before it closes
# the connections: time for the last answers to leave the process (loopback: well under 1 ms).
DRAIN_LINGER_S = 0.05
ANSWER_WAIT_S = 0.5  # at the end of the grace period, for the requests answered UNAVAILABLE to leave
ACCEPT_SETTLE_S = 0.01  # for gRPC to accept what connected just before the port stopped taking connections


class StartupError(RuntimeError):
    """The server could not start (port taken, model failed to load, ...); the message says why."""


class InferenceServer:
    """One running server. `await start()`, then `await wait_for_shutdown()` or `await stop()`."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServerMetrics | None = None,
        *,
        manager: ModelManager | None = None,
        registry: SharedMemoryRegistry | None = None,
        regions: RegionControl | None = None,
        worker: bool = False,
    ) -> None:
        """One process's server. A worker process of `serve --workers N` (server/processes/worker.py) passes
        the engine's models (`manager`), its mirror of the engine's shared-memory registry (`registry`,
        `regions`), and `worker`: its ports are shared with the other workers (SO_REUSEPORT) and the engine
        process has checked them, the engine polls the repository, and its SIGHUP reloads say nothing above
        debug (the engine said it for the server)."""
        self.config = config
        self.metrics = metrics or ServerMetrics(enabled=config.metrics, triton_names=config.triton_metrics)
        self.manager = manager if manager is not None else ModelManager(config, self.metrics)
        threads = config.preprocess_threads or default_threads()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="preprocess")
        self.ctx = ServerContext(
            config,
            self.manager,
            self.metrics,
            self.pool,
            shared_memory=registry if registry is not None else SharedMemoryRegistry(),
            region_control=regions,
        )
        self.worker = worker
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.services: list[str] = []
        self.grpc_port = 0
        self.http_port: int | None = None
        self._http: HttpServer | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self.security: SecurityPolicy | None = None
        self._stopped = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._health_lock = asyncio.Lock()
        self._poller: RepositoryPoller | None = None

    async def start(self) -> None:
        """Bind the ports, load the models, then serve. Fails fast (StartupError, one line saying what and
        where) on a port in use before any model loads, on a missing or empty repository, and on a model that
        fails to load unless exit_on_error is false."""
        config = self.config
        try:
            # Certificates and tokens first: a bad file stops the server before any port or model.
            self.security = SecurityPolicy(config, self.metrics)  # refusals counted in the metrics
        except SecurityError as exc:
            raise StartupError(str(exc)) from None
        if not self.worker:
            check_ready_file(config.ready_file)
        grpc_host, http_host, metrics_host = (config.listen_address(e) for e in ("grpc", "http", "metrics"))
        if config.allow_grpc and not self.worker:
            check_port_free(grpc_host, config.grpc_port, "grpc_port")
        if self._serves_http and not self.worker:
            check_port_free(http_host, config.http_port, "http_port")
        if self._serves_metrics:
            check_port_free(metrics_host, config.metrics_port, "metrics_port")
        server = grpc.aio.server(
            # Access first: a refused call is neither parsed nor counted in flight.
            interceptors=[*self.security.interceptors(), InFlightInterceptor(self.ctx.in_flight)],
            options=[
                *self.security.grpc_options(),  # message size, streams, keepalive enforcement
                ("grpc.so_reuseport", 1 if self.worker else 0),
                # Advertise a large stream window up front: a 224×224 FP32 tensor is 600 KB, and with the
                # default 64 KB window each request waited on flow-control round trips (-0.15 ms at c=1).
                ("grpc.http2.lookahead_bytes", 16 * _MB),
            ],
        )
        # KServe first: grpc asks the generic handlers in the order they were added, and most calls are
        # inference. No registered methods (server/registration.py says why).
        kserve_service = kserve.register(server, self.ctx)
        generic = GenericOnly(server)
        classifier_pb2_grpc.add_ImageClassifierServicer_to_server(  # type: ignore[no-untyped-call]
            ImageClassifierService(
                self.manager, self.pool, self.ctx.in_flight, max_message_bytes(self.config)
            ),
            generic,
        )
        self.services = [IMAGE_SERVICE, kserve_service]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, generic)
        # What reflection.enable_server_reflection does for a grpc.aio server, through `generic`.
        names = [*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names),  # type: ignore[attr-defined]  # in its __all__
            generic,
        )
        try:
            await self._load_models()
        except StartupError:
            await server.stop(0)
            raise
        # The port listens once the models are loaded, as Triton's does (and the worker processes'): a client
        # or probe during a long load is refused at once, where a port bound first accepted its connection
        # and left it unanswered until its deadline. Taken meanwhile, it fails here, after the load.
        address = f"{bracketed(grpc_host)}:{config.grpc_port}"
        if config.allow_grpc:  # --allow-grpc false: the gRPC server is built but never listens
            try:
                self.grpc_port = self.security.add_grpc_port(server, address)
            except RuntimeError as exc:
                await self.manager.close(0)
                raise StartupError(f"cannot listen on {address}: {exc}") from None
            if self.grpc_port == 0:
                await self.manager.close(0)
                raise StartupError(f"cannot listen on {address} (port in use?)")
        # Health says what readiness says from the first answer on: with exit_on_error false a model that
        # failed to load leaves the server NOT_SERVING (grpc's servicer starts with "" SERVING).
        self.manager.add_listener(self._readiness_changed)
        await self._sync_health()
        if config.allow_grpc:
            await server.start()
            self._server = server
        if self._serves_http:
            http = HttpServer(self.ctx, max_message_bytes(config), self.security.rules)
            tls = ssl_context(self.security.tls)  # the gRPC port's certificate (and its reload) here too
            try:
                self.http_port = await http.start(http_host, config.http_port, tls, self.worker)
            except OSError as exc:
                await server.stop(0)
                await self.manager.close(0)
                raise StartupError(f"cannot serve HTTP on {http_host}:{config.http_port}: {exc}") from None
            self._http = http
        if self._serves_metrics:
            try:
                self.metrics_port = self.metrics.start_http_server(metrics_host, config.metrics_port)
            except OSError as exc:
                await server.stop(0)
                await self.manager.close(0)
                if self._http is not None:
                    await self._http.stop()
                raise StartupError(
                    f"cannot serve metrics on {metrics_host}:{config.metrics_port}: {exc}"
                ) from None
        if model_control.polls(config.model_control_mode) and not self.worker:  # a worker: the engine polls
            self._poller = RepositoryPoller(self.manager, config.repository_poll_secs)
            self._poller.start()

    async def _load_models(self) -> None:
        await load_models(self.manager, self.config)

    def _readiness_changed(self) -> None:
        # Health follows readiness (a model loaded, unloaded or failing to load), so load balancers that
        # probe grpc.health.v1 stop sending traffic the server cannot answer.
        task = asyncio.get_running_loop().create_task(self._sync_health())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync_health(self) -> None:
        """Set every health service name ("" and each API) to what `ServerContext.ready()` says now: the
        same truth as ServerReady and /v2/health/ready. The status is read when the update runs, under a
        lock, so updates that race (a load finishing as a drain starts) end in the latest truth."""
        async with self._health_lock:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if self.ctx.ready()
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in ("", *self.services):
                await self.health.set(service, status)

    @property
    def _serves_http(self) -> bool:
        return self.config.allow_http and self.config.http_port >= 0

    @property
    def _serves_metrics(self) -> bool:
        return self.config.allow_metrics and self.config.metrics_port >= 0

    def summary(self) -> str:
        config = self.config
        grpc_host, http_host, metrics_host = (
            bracketed(config.listen_address(e)) for e in ("grpc", "http", "metrics")
        )
        models = ", ".join(f"{s.name} v{s.version} {s.state}" for s in self.manager.statuses()) or "none"
        metrics = (
            f"http://{metrics_host}:{self.metrics_port}/metrics" if self.metrics_port is not None else "off"
        )
        security = f" {self.security.describe()}" if self.security is not None else ""
        http = f"{http_host}:{self.http_port}" if self.http_port is not None else "off"
        grpc_at = f"{grpc_host}:{self.grpc_port}" if self._server is not None else "off"
        return f"ready: grpc={grpc_at} metrics={metrics} http={http}{security} models: {models}"

    def ready(self) -> Ready:
        """What the ready file says (formats/ready.py): where each endpoint listens, and the models."""
        grpc_port = self.grpc_port if self._server is not None else None
        return ready_record(self.config, self.manager, grpc_port, self.http_port, self.metrics_port)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        if self.security is not None:  # SIGHUP: new certificates and tokens, no connection dropped
            loop.add_signal_handler(signal.SIGHUP, self.security.reload, self.worker)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping is not None:
            # A second Ctrl-C means "now"; a repeated SIGTERM (some supervisors resend it) changes nothing.
            if sig == signal.SIGINT:
                log.warning("received SIGINT again: exiting without waiting for the drain")
                os._exit(1)
            return
        log.info("received %s: draining (grace period %.1f s)", sig.name, self.config.grace_period_s)
        self.request_stop()

    def request_stop(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.stop())

    async def wait_for_shutdown(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new requests, let accepted ones finish (up to the grace period), release everything.
        Returns at once when the server has already stopped."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_period_s if grace_s is None else grace_s
        self.ctx.shutting_down = True
        if self._poller is not None:
            await self._poller.stop()
        self.manager.stop_accepting()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._sync_health()  # NOT_SERVING: ready() is false from shutting_down on
        deadline = start + grace
        # Wait for the requests already accepted, not for every open RPC: health watches and idle streams
        # would hold grpc's own stop() for the whole grace period.
        while (self.ctx.in_flight.count > 0 or not self.manager.idle()) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.ctx.in_flight.count > 0 or not self.manager.idle():
            # The grace period is over: what still waits is answered UNAVAILABLE (clients retry that) before
            # the connections close, rather than cut off with them.
            abandoned = self.manager.abandon(GRACE_OVER)
            log.warning(
                "the grace period (%g s) ended with %d request(s) in flight: %d still waiting answered "
                "UNAVAILABLE",
                grace,
                self.ctx.in_flight.count,
                abandoned,
            )
            answered = loop.time() + ANSWER_WAIT_S
            while self.ctx.in_flight.count > 0 and loop.time() < answered:
                await asyncio.sleep(0.01)
        if self._http is not None:
            await self._http.stop()
        if self._server is not None:
            await self._end_drain(self._server, deadline)
        await self.manager.close(max(0.0, deadline - loop.time()))
        self.ctx.shared_memory.close()  # after the drain: no request uses a region any more
        self.metrics.stop_http_server()
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
        self._stopped.set()

    async def _end_drain(self, server: grpc.aio.Server, deadline: float) -> None:
        """Stop gRPC so that no request ends CANCELLED (server/drain.py): the last answers get
        `DRAIN_LINGER_S` to leave while new requests are still refused UNAVAILABLE; then the port stops
        taking connections and the open ones are closed (UNAVAILABLE for whatever is in transit, and a
        client that reconnects is refused), and only then does gRPC stop, with nothing left to cancel."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, min(DRAIN_LINGER_S, deadline - loop.time())))
        refuse_connections(self.grpc_port)
        # What completed its handshake just before is still in the accept queue: let gRPC accept it, so
        # that it is among the connections closed next (its requests are refused UNAVAILABLE meanwhile).
        await asyncio.sleep(ACCEPT_SETTLE_S)
        closed = close_sockets(self.grpc_port)
        log.debug("closed %d client connection(s) at the end of the drain", closed)
        await server.stop(min(1.0, max(0.0, deadline - loop.time())))


def ready_record(
    config: ServerConfig, manager: ModelManager, grpc: int | None, http: int | None, metrics: int | None
) -> Ready:
    """What the ready file says (formats/ready.py): each endpoint (None: off) and the models."""
    at = config.listen_address
    endpoints = {
        name: None if port is None else Endpoint(at(name), port)
        for name, port in (("grpc", grpc), ("http", http), ("metrics", metrics))
    }
    models = tuple(ReadyModel(s.name, s.version, str(s.state)) for s in manager.statuses())
    return Ready(os.getpid(), models=models, **endpoints)


async def load_models(manager: ModelManager, config: ServerConfig) -> None:
    """Load the configured and repository models; StartupError (everything released) when that fails."""
    try:
        await manager.start()
    except Exception as exc:
        await manager.close(0)
        raise StartupError(str(getattr(exc, "message", exc))) from None
    if config.default_model and config.default_model not in manager.names():
        await manager.close(0)
        served = ", ".join(manager.names())
        raise StartupError(
            f"default_model {config.default_model!r} is not one of the served models ({served})"
        )


def check_ready_file(path: str) -> None:
    """A ready file that could not be written is a StartupError before any model loads, not a failure once
    the server is ready."""
    if not path:
        return
    try:
        check_ready_path(path)
    except OSError as exc:
        raise StartupError(f"cannot write the ready file (--ready-file): {path}: {exc.strerror}") from None


def bracketed(host: str) -> str:
    """An IPv6 address in brackets, as it must be written before a port ("[::1]:8001")."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def check_port_free(host: str, port: int, option: str) -> None:
    """Refuse a fixed port that is taken before any model loads (minutes for a big model with warm-up), and
    in one line: grpc's own bind failure also prints a C-core error line to stderr."""
    if port <= 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc and http.server bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port} ({option}): {exc.strerror}") from None


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain, 1 when start-up fails."""
    server = InferenceServer(config)
    try:
        await server.start()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    server.install_signal_handlers()
    log.info(server.summary())
    ready_file = Path(config.ready_file) if config.ready_file else None
    if ready_file is not None:
        try:
            write_ready(ready_file, server.ready())
        except OSError as exc:
            log.error("cannot write the ready file (--ready-file): %s", exc)
            await server.stop()
            return 1
    freeze_startup_objects()
    try:
        await server.wait_for_shutdown()
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)  # a file left behind would say a stopped server is ready
    return 0


def freeze_startup_objects() -> None:
    """Move what start-up built (modules, protobuf descriptors, sessions' Python side: ~70 000 objects)
    out of the garbage collector's reach. They live as long as the process, yet every full collection
    walked them, and so did each of the collections the interpreter runs while it finalises: the process
    exited 0.3-0.7 s after "stopped" here (2-2.6 s on a busier machine, issue #24), ~0.1 s frozen
    (lab/exit_latency.py). Start-up's garbage is collected first, so nothing dead is kept."""
    gc.collect()
    gc.freeze()
