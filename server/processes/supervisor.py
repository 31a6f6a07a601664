"""The engine process of `serve --workers N`: it loads the models, owns the batchers, the runtimes, the one
shared-memory registry and /metrics, starts N worker processes on the shared ports, and supervises them.

Start-up: the ports are checked and held (SO_REUSEPORT, so the workers can bind them; port 0 is resolved
here, once, so every worker binds the same one), the models load, /metrics starts, then each worker is started
with a socketpair and an arena (server/ipc/) and the settings on its standard input; once every worker
listens, the holds are let go, the ready file is written and "ready:" is logged.

Supervision: a worker that exits while the server runs is started again (its requests in flight ended
UNAVAILABLE for their clients when its connections closed; the engine withdrew what it had queued). A worker
that keeps dying (more than `MAX_RESTARTS` times in `RESTART_WINDOW_S`, a replacement's death before it is
ready included) stops the server with status 1. The engine is this process: if it dies, each worker sees its
socket close, turns NOT_SERVING at once and exits (status 3), and the server's main process is gone for the
orchestrator to restart (docs/server.md, "Worker processes").

Signals: SIGTERM/SIGINT drain every worker (each stops accepting and answers what it accepted, while the
engine still runs), then the engine's batchers drain and it exits 0. SIGHUP is passed to every worker, which
reloads its certificates and tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from resnet_serve.formats.ready import Ready, write_ready
from resnet_serve.server.app import (
    StartupError,
    bracketed,
    check_port_free,
    check_ready_file,
    load_models,
    ready_record,
)
from resnet_serve.server.config import ServerConfig
from resnet_serve.server.engine.host import EngineHost, WorkerLink
from resnet_serve.server.ipc.arena import DEFAULT_ARENA_BYTES, MappedArena, new_memfd
from resnet_serve.server.ipc.places import QueuePlaces, new_places_fd
from resnet_serve.server.models.manager import ModelManager
from resnet_serve.server.models.poll import RepositoryPoller
from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.observability.totals import ServerMetricsState
from resnet_serve.server.security import model_control
from resnet_serve.server.security.files import SecurityError
from resnet_serve.server.security_policy import SecurityPolicy
from resnet_serve.server.shm.registry import SharedMemoryRegistry

log = logging.getLogger("resnet_serve.server")

WORKER_MODULE = "resnet_serve.server.processes.worker"
READY_TIMEOUT_S = 120.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
EXIT_WAIT_S = 5.0  # beyond the grace period, for a worker to exit after its drain
LINK_CLOSE_WAIT_S = 5.0  # for the engine to read what a dead worker sent before its place is reset


class Supervisor:
    """The engine process: models, batchers, /metrics, and the worker processes."""

    def __init__(self, config: ServerConfig, workers: int, log_level: str, log_format: str) -> None:
        self.config = config
        self.workers = workers
        self._log = (log_level, log_format)
        self.metrics = ServerMetrics(enabled=config.metrics, triton_names=config.triton_metrics)
        self.manager = ModelManager(config, self.metrics)
        self.registry = SharedMemoryRegistry()
        self._places_fd = new_places_fd(workers)
        self.places = QueuePlaces(self._places_fd, workers)
        self.host = EngineHost(self.manager, self.registry, self.metrics, self.places)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self.exit_status = 0
        self._holds: list[socket.socket] = []
        self._config_json = config.model_dump_json().encode()
        self._stopping: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._restarts: dict[int, list[float]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._poller: RepositoryPoller | None = None
        self._aborting = False  # start-up failed: the workers are being killed, not restarted
        self._serving = False  # start-up is over: a worker that exits from now on is started again
        self.security: SecurityPolicy | None = None

    # ------------------------------------------------------------------------------------------ start-up

    async def start(self) -> None:
        config = self.config
        self._loop = asyncio.get_running_loop()  # a /metrics scrape reaches the workers through it
        try:
            # Certificates and tokens first, as in one process: a bad file stops the server before any port,
            # model or worker (each worker loads its own copy, and reloads it on SIGHUP).
            self.security = SecurityPolicy(config, self.metrics)
        except SecurityError as exc:
            raise StartupError(str(exc)) from None
        check_ready_file(config.ready_file)
        try:
            if config.allow_grpc:
                self.grpc_port = self._hold(config.listen_address("grpc"), config.grpc_port, "grpc_port")
            if config.allow_http and config.http_port >= 0:
                self.http_port = self._hold(config.listen_address("http"), config.http_port, "http_port")
            if config.allow_metrics and config.metrics_port >= 0:  # served here, by the engine alone
                check_port_free(config.listen_address("metrics"), config.metrics_port, "metrics_port")
            await load_models(self.manager, config)
            if config.allow_metrics and config.metrics_port >= 0:
                self.metrics.set_peers(self._peer_metrics)
                self.metrics.add_processes(self._processes)
                host = config.listen_address("metrics")
                try:
                    self.metrics_port = self.metrics.start_http_server(host, config.metrics_port)
                except OSError as exc:
                    raise StartupError(
                        f"cannot serve metrics on {host}:{config.metrics_port}: {exc}"
                    ) from None
            links = [await self._spawn(i) for i in range(self.workers)]
            await self._wait_ready(links)
        except BaseException:
            await self._abort()
            raise
        finally:
            for hold in self._holds:
                hold.close()
            self._holds.clear()
        self._serving = True
        if model_control.polls(config.model_control_mode):
            self._poller = RepositoryPoller(self.manager, config.repository_poll_secs)
            self._poller.start()

    def _hold(self, host: str, port: int, option: str) -> int:
        """Bind host:port with SO_REUSEPORT, not listening, until the workers listen on it: a taken port fails
        here, before any model loads; port 0 becomes one free port that every worker binds. The port is
        first bound without SO_REUSEPORT: another server of the same user listening with it (another
        resnet-serve, started twice by mistake) would otherwise let this one join its port, and the kernel
        would split the clients between them."""
        check_port_free(host, port, option)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        hold = socket.socket(family, socket.SOCK_STREAM)
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            hold.bind((host, port))
        except OSError as exc:
            hold.close()
            raise StartupError(f"cannot listen on {host}:{port} ({option}): {exc.strerror}") from None
        self._holds.append(hold)
        bound: int = hold.getsockname()[1]
        return bound

    def _worker_config(self) -> bytes:
        update: dict[str, object] = {}
        if self.grpc_port is not None:
            update["grpc_port"] = self.grpc_port
        if self.http_port is not None:
            update["http_port"] = self.http_port
        return self.config.model_copy(update=update).model_dump_json().encode()

    async def _spawn(self, index: int) -> WorkerLink:
        self.places.reset(index)  # a new worker in this place holds no queue place yet
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = new_memfd(DEFAULT_ARENA_BYTES, f"resnet-serve-worker-{index}")
        try:
            arena = MappedArena(fd, DEFAULT_ARENA_BYTES)
            level, fmt = self._log
            argv = [child.fileno(), fd, DEFAULT_ARENA_BYTES, self._places_fd, self.workers, index, level, fmt]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                WORKER_MODULE,
                *map(str, argv),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(child.fileno(), fd, self._places_fd),
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
            os.close(fd)
        assert proc.stdin is not None
        proc.stdin.write(self._worker_config())  # may hold a token: never on a command line
        await proc.stdin.drain()
        proc.stdin.close()
        link = self.host.attach(index, parent, arena)
        link.pid = proc.pid
        self.procs[index] = proc
        watcher = asyncio.get_running_loop().create_task(self._watch(index, proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.debug("worker %d started (pid %d)", index, proc.pid)
        return link

    async def _wait_ready(self, links: list[WorkerLink]) -> None:
        async def one(link: WorkerLink) -> None:
            ready = asyncio.ensure_future(link.ready.wait())
            closed = asyncio.ensure_future(link.closed.wait())
            _, pending = await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if not link.ready.is_set():
                raise StartupError(f"worker {link.index} exited before it was ready (see its log above)")

        try:
            await asyncio.wait_for(asyncio.gather(*(one(link) for link in links)), READY_TIMEOUT_S)
        except TimeoutError:
            raise StartupError(f"the workers were not ready within {READY_TIMEOUT_S:.0f} s") from None

    async def _abort(self) -> None:
        self._aborting = True
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in self.procs.values():
            await proc.wait()
        self.metrics.stop_http_server()
        await self.manager.close(0)

    # --------------------------------------------------------------------------------------- supervision

    async def _watch(self, index: int, proc: asyncio.subprocess.Process) -> None:
        status = await proc.wait()
        if not self._serving or self._stopping is not None or self._aborting:
            return  # start-up (which fails on it) or the drain (which waits for it) answers for this exit
        if self.procs.get(index) is not proc:
            return
        await self._replace(index, f"(pid {proc.pid}) exited with status {status}")

    async def _replace(self, index: int, why: str) -> None:
        """Starts worker `index` again after it exited (`why`). Every exit counts, one that comes before the
        new worker is ready included (its own watcher sees it and comes back here); more than MAX_RESTARTS
        in RESTART_WINDOW_S stop the server with status 1."""
        while True:
            now = time.monotonic()
            recent = [t for t in self._restarts.get(index, []) if now - t < RESTART_WINDOW_S]
            recent.append(now)
            self._restarts[index] = recent
            if len(recent) > MAX_RESTARTS:
                log.error(
                    "worker %d %s, %d exits in %.0f s: stopping the server",
                    index,
                    why,
                    len(recent),
                    RESTART_WINDOW_S,
                )
                self.exit_status = 1
                self.request_stop()
                return
            log.warning("worker %d %s; starting it again", index, why)
            await asyncio.sleep(0.1 * (2 ** (len(recent) - 1)))
            old = self.host.links.get(index)
            if old is not None:  # its reader has taken its last requests off the socket: its counts stand
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(old.closed.wait(), LINK_CLOSE_WAIT_S)
            if self._stopping is not None:
                return
            try:
                link = await self._spawn(index)
            except OSError as exc:  # fork or exec failed (memory, process limits): counted like an exit
                why = f"could not be started ({exc})"
                continue
            break
        try:
            await self._wait_ready([link])
        except StartupError as exc:
            if self._stopping is not None or link.closed.is_set():
                return  # the drain began, or it exited before it was ready: its watcher counts that exit
            log.error("worker %d (pid %d): %s; killing it", index, link.pid, exc)
            with contextlib.suppress(ProcessLookupError):
                self.procs[index].kill()  # its watcher starts it again, counting this as an exit
            return
        log.info("worker %d is serving again (pid %d)", index, link.pid)

    def _processes(self) -> list[tuple[str, int]]:
        return [("engine", os.getpid()), *(("worker", p.pid) for p in self.procs.values())]

    def _peer_metrics(self) -> list[ServerMetricsState]:
        """The workers' metrics, for a scrape (called on the /metrics HTTP thread)."""
        future = asyncio.run_coroutine_threadsafe(self.host.pull_metrics(), self._loop)
        return future.result(timeout=5.0)

    # ------------------------------------------------------------------------------------------- running

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _reload(self) -> None:
        """SIGHUP: check the files here and say once what came of it, then every worker reloads its copy."""
        if self.security is not None:
            self.security.reload()
        self._forward(signal.SIGHUP)

    def _forward(self, sig: signal.Signals) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping is not None:
            if sig == signal.SIGINT:
                log.warning("received SIGINT again: exiting without waiting for the drain")
                self._forward(signal.SIGKILL)
                os._exit(1)
            return
        log.info(
            "received %s: draining %d worker(s) (grace period %.1f s)",
            sig.name,
            len(self.procs),
            self.config.grace_period_s,
        )
        self.request_stop()

    def request_stop(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.stop())

    async def wait_for_shutdown(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Drain the workers (each answers what it accepted, the engine still computing), then the engine."""
        grace = self.config.grace_period_s
        deadline = time.monotonic() + grace  # one grace period for the whole drain, workers and engine
        if self._poller is not None:
            await self._poller.stop()
        self._forward(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in self.procs.values()]
        if waits:
            _, late = await asyncio.wait(waits, timeout=grace + EXIT_WAIT_S)
            if late:
                log.warning("%d worker(s) did not exit after the drain; killing them", len(late))
                self._forward(signal.SIGKILL)
                await asyncio.wait(late)
        self.manager.stop_accepting()
        await self.manager.close(max(0.0, deadline - time.monotonic()))
        self.registry.close()
        self.metrics.stop_http_server()
        log.info("stopped")
        self._stopped.set()

    def summary(self) -> str:
        config = self.config
        grpc_at = (
            f"{bracketed(config.listen_address('grpc'))}:{self.grpc_port}"
            if self.grpc_port is not None
            else "off"
        )
        http = (
            f"{bracketed(config.listen_address('http'))}:{self.http_port}"
            if self.http_port is not None
            else "off"
        )
        metrics = (
            f"http://{bracketed(config.listen_address('metrics'))}:{self.metrics_port}/metrics"
            if self.metrics_port is not None
            else "off"
        )
        models = ", ".join(f"{s.name} v{s.version} {s.state}" for s in self.manager.statuses()) or "none"
        pids = ", ".join(str(p.pid) for p in self.procs.values())
        security = f" {self.security.describe()}" if self.security is not None else ""
        return (
            f"ready: grpc={grpc_at} metrics={metrics} http={http}{security} workers={len(self.procs)} "
            f"(pids {pids}) models: {models}"
        )

    def ready(self) -> Ready:
        return ready_record(self.config, self.manager, self.grpc_port, self.http_port, self.metrics_port)


async def serve_workers(config: ServerConfig, workers: int, log_level: str, log_format: str) -> int:
    """Run the engine and `workers` worker processes until SIGTERM/SIGINT; 0 after a clean drain."""
    supervisor = Supervisor(config, workers, log_level, log_format)
    try:
        await supervisor.start()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    supervisor.install_signal_handlers()
    log.info(supervisor.summary())
    ready_file = Path(config.ready_file) if config.ready_file else None
    if ready_file is not None:
        try:
            write_ready(ready_file, supervisor.ready())
        except OSError as exc:
            log.error("cannot write the ready file (--ready-file): %s", exc)
            supervisor.request_stop()  # a drain, as on SIGTERM: the workers it stops are not restarted
            await supervisor.wait_for_shutdown()
            return 1
    try:
        await supervisor.wait_for_shutdown()
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
    return supervisor.exit_status
