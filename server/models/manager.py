"""The lifecycle of the models this server serves: loading, version policy, readiness, lookup, explicit
load/unload.

Both APIs (our image API and KServe v2) go through one `ModelManager`:

* `get(name, version)` returns a ready `ServedModel` or raises ServeError: NOT_FOUND for a model or version
  that is not served, UNAVAILABLE while it is loading/unloading or the server is shutting down.
* `load(name)` / `unload(name)` (KServe RepositoryModelLoad/Unload) never drop in-flight requests: a
  reload makes the new versions ready before the old ones are retired, and a retired version's batcher
  finishes every queued request before its backends are closed.
* Every version is built by server/models/builder.py's `ModelBuilder` (runtime instances, labels,
  preprocessing, batcher) and warmed up before it is marked ready.

Where versions come from is server/models/sources.py; `--model-repository DIR` serves every model directory
in DIR.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from resnet_serve.formats.repository import CONFIG_NAME, TRITON_CONFIG_NAME, RepositoryError
from resnet_serve.runtime.base import BackendError
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.errors import ServeError, echo, invalid_argument, not_found, unavailable
from resnet_serve.server.models.builder import ModelBuilder
from resnet_serve.server.models.overrides import NAME_MAX, LoadOverride, discard, materialize, refused
from resnet_serve.server.models.served import ModelState, ServedModel, VersionStatus
from resnet_serve.server.models.sources import (
    numbered,
    read_source,
    select_versions,
    version_key,
)
from resnet_serve.server.models.triton_config import read_config
from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.observability.model_metrics import UNKNOWN_MODEL_LABEL, ModelStatistics
from resnet_serve.server.outcomes import Outcome

log = logging.getLogger(__name__)

# What a request that arrives during the drain is answered, and one still waiting when the grace period
# ends (UNAVAILABLE: clients retry both).
NOT_ACCEPTING = "server is shutting down; not accepting new requests"
GRACE_OVER = "the server is shutting down: its grace period ended before this request was answered; retry"
STOP_WAIT_S = 0.2  # for an idle batcher worker to stop once told to

UNLOADED = "unloaded"  # the reason of a version taken down on request (not a failure)
# Triton's words for a lookup that finds no ready model (core's model_repository_manager.cc): clients match
# the prefix (docs/kserve.md, "Error messages").
UNKNOWN_MODEL = "Request for unknown model:"
MAX_VERSION_DIGITS = 18  # a version is an int64 to Triton; longer digit strings are not versions


def _is_version(version: str) -> bool:
    return numbered(version) and len(version) <= MAX_VERSION_DIGITS


def _not_a_version(version: str) -> ServeError:
    # The client's error, as Triton's GetModelVersionFromString reports it (TRITONSERVER_ERROR_INVALID_ARG).
    return invalid_argument(
        f"failed to get model version from specified version string {echo(version)}, "
        "version should be an integral value > 0"
    )


@dataclass
class _Entry:
    """A model name: its settings and its versions by version string."""

    settings: ModelSettings
    versions: dict[str, ServedModel] = field(default_factory=dict)
    status: dict[str, VersionStatus] = field(default_factory=dict)
    unloaded: bool = False  # taken down on request: not meant to be served until loaded again
    # The temporary model directory of the last load, when it had overrides (removed once no version uses it).
    override_dir: Path | None = None


class ModelManager:
    """Owns every ServedModel; all methods are called on the event loop."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self._builder = ModelBuilder(config, metrics)
        self._entries: dict[str, _Entry] = {}
        self._accepting = True
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[Callable[[], None]] = []
        self._closed = False

    # ------------------------------------------------------------------------------------------- lookup

    @property
    def default_model(self) -> str:
        """The model a request that names none gets: the configured one, else the first configured."""
        if self.config.default_model:
            return self.config.default_model
        return next(iter(self._entries), "")

    def get(self, name: str, version: str = "", *, count: bool = True, default: bool = True) -> ServedModel:
        """The ready model version to send a request to (empty name: the default model, unless `default` is
        False, as for the KServe protocol, where a model must be named; empty version: the highest ready
        version). Raises ServeError NOT_FOUND or UNAVAILABLE, or INVALID_ARGUMENT for a version that is not a
        number.

        A refusal is counted in the metrics as a finished request (`not_found` under the `_unknown` labels,
        `unavailable` under the model version it was meant for); `count=False` is for lookups that are not
        inference requests (readiness, metadata)."""
        if default:
            name = name or self.default_model
        entry = self._entries.get(name)
        if version:  # read first, as Triton reads it (GetModelVersionFromString) before it looks anything up
            if not _is_version(version):
                if count:
                    self._count_refusal(name, entry, version)
                raise _not_a_version(version)
            version = str(int(version))  # Triton reads the version as a number: "01" is version 1
        if not self._accepting:
            if count:
                self._count_refusal(name, entry, version)
            raise unavailable(NOT_ACCEPTING)
        if entry is None:
            if count:
                self.metrics.unknown_model(name)
            served = ", ".join(sorted(self._entries)) or "none"
            raise not_found(f"{UNKNOWN_MODEL} {echo(name)} is not found (served models: {served})")
        if version:
            model = entry.versions.get(version)
            if model is None:
                status = entry.status.get(version)
                if count:
                    self._count_refusal(name, entry, version)
                if status is not None:
                    raise unavailable(
                        f"{UNKNOWN_MODEL} {echo(name)} version {version} is not at ready state "
                        f"({status.state})"
                    )
                known = ", ".join(sorted(entry.status, key=version_key)) or "none"
                raise not_found(
                    f"{UNKNOWN_MODEL} {echo(name)} version {version} is not found (versions: {known})"
                )
            return model
        if len(entry.versions) == 1:  # the common case, without building a list on every request
            (only,) = entry.versions.values()
            if only.state is ModelState.READY:
                return only
        ready = [v for v in entry.versions.values() if v.state is ModelState.READY]
        if not ready:
            if count:
                self._count_refusal(name, entry, version)
            raise unavailable(f"{UNKNOWN_MODEL} {echo(name)} has no available versions")
        return max(ready, key=lambda m: version_key(m.version))

    def _count_refusal(self, name: str, entry: _Entry | None, version: str) -> None:
        """Count a request `get` refuses: under the version it was meant for when the server knows that
        version, else as `not_found` (a client's made-up name must not become a label value)."""
        if entry is None:
            self.metrics.unknown_model(name)
            return
        if version and version not in entry.status and version not in entry.versions:
            self.metrics.unknown_model(f"{name}/{version}")
            return
        if not version:
            # Where a request without a version would have gone: the highest ready version, else the
            # highest one the server knows (unloaded, failed); a model whose path held none has no version.
            ready = [v for v, m in entry.versions.items() if m.state is ModelState.READY]
            known = ready or [*entry.versions, *entry.status]
            version = max(known, key=version_key) if known else UNKNOWN_MODEL_LABEL
        self.metrics.model(name, version).request_done(Outcome.UNAVAILABLE, 0.0)

    def is_ready(self, name: str, version: str = "", *, default: bool = True) -> bool:
        """Whether the version (empty: any) is ready. An unknown model or version is not ready, as Triton
        answers it; a version that is not a number raises what `get` raises for it, as Triton's ModelReady
        returns GetModelVersionFromString's error (HTTP and gRPC). `default`: as `get`'s."""
        if version and not _is_version(version):
            raise _not_a_version(version)
        try:
            return self.get(name, version, count=False, default=default).state is ModelState.READY
        except ServeError:
            return False

    def all_ready(self, strict: bool = True) -> bool:
        """The server's readiness rule, the one truth behind ServerReady, /v2/health/ready and gRPC health
        (docs/server.md, "Readiness"). Not while shutting down. `strict` (Triton's --strict-readiness, its
        default): every model that is meant to be served has a ready version, so a failed load makes the
        server unready and a load balancer that checks readiness does not send traffic a half-working server
        cannot answer; a model unloaded on request does not count, because nothing is meant to serve it; a
        server with no model at all is unready. Not strict: ready while accepting, whatever the models."""
        if not self._accepting:
            return False
        if not strict:
            return True
        if not self._entries:
            return False
        return all(self.is_ready(name) for name, entry in self._entries.items() if not entry.unloaded)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) whenever a model's readiness may have changed."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def idle(self) -> bool:
        """No loaded version has queued or running work."""
        return all(m.batcher.idle for e in self._entries.values() for m in e.versions.values())

    async def statistics(self, models: list[ServedModel]) -> list[ModelStatistics]:
        """The cumulative statistics of these versions (in a worker process: the server's totals)."""
        return [model.metrics.statistics() for model in models]

    def names(self) -> list[str]:
        return list(self._entries)

    def versions(self, name: str) -> list[ServedModel]:
        """The loaded versions of a model, lowest first (NOT_FOUND when the model is not served)."""
        entry = self._entries.get(name)
        if entry is None:
            raise not_found(f"{UNKNOWN_MODEL} {echo(name)} is not found")
        return sorted(entry.versions.values(), key=lambda m: version_key(m.version))

    def statuses(self) -> list[VersionStatus]:
        """Every model version the server knows of, with its state (also failed and unloaded ones)."""
        out: list[VersionStatus] = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            out.extend(entry.status[v] for v in sorted(entry.status, key=version_key))
        return out

    def repository_models(self) -> list[str]:
        """Model names in the repository directory, loaded or not."""
        repo = self.config.model_repository
        if not repo:
            return []
        root = Path(repo)
        if not root.is_dir():
            return []
        return sorted(
            p.name
            for p in root.iterdir()
            if p.is_dir()
            and not p.name.startswith(".")
            and (
                (p / CONFIG_NAME).is_file()
                or (p / TRITON_CONFIG_NAME).is_file()
                or any(numbered(c.name) for c in p.iterdir())
            )
        )

    # ---------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load every configured model and every repository model. A missing model repository aborts
        start-up (RepositoryError), and so do an empty one and a model that fails to load (ServeError), unless
        `exit_on_error` is false: then each failure is one logged line and the server starts unready."""
        repo = self.config.model_repository
        names = self.repository_models()
        if repo and not Path(repo).is_dir():
            raise RepositoryError(f"model repository {repo} does not exist (--model-repository)")
        if repo and not names:
            message = f"model repository {repo} holds no models (no <model>/<version>/ directories)"
            if self.config.exit_on_error:
                raise RepositoryError(message)
            log.warning("%s; starting without its models (exit_on_error = false)", message)
        for settings in self.config.models:
            await self._start_one(settings.name, settings)
        for name in names:
            if name not in self._entries:
                await self._start_one(name)

    async def _start_one(self, name: str, settings: ModelSettings | None = None) -> None:
        try:
            await self.load(name, settings)
        except ServeError as exc:
            if self.config.exit_on_error:
                raise
            log.error("%s (exit_on_error = false: serving the other models, unready)", exc.message)

    def _settings_for(self, name: str) -> ModelSettings:
        for settings in self.config.models:
            if settings.name == name:
                return settings
        entry = self._entries.get(name)
        if entry is not None and entry.override_dir is None and entry.settings.path:
            # (A model loaded with overrides, or from a request's files alone, is looked for below.)
            return entry.settings
        repo = self.config.model_repository
        # Only a directory directly in the repository, as repository_models lists them (_plain_name).
        if repo and _plain_name(name) and (Path(repo) / name).is_dir():
            return self.config.model_defaults.model_copy(
                update={"name": name, "path": str(Path(repo) / name)}
            )
        raise not_found(
            f"failed to load {echo(name)}, failed to poll from model repository: the model is neither "
            "configured nor in the model repository"
        )

    async def load(
        self, name: str, settings: ModelSettings | None = None, override: LoadOverride | None = None
    ) -> None:
        """Load (or reload) a model (`_load`); ready when this returns.

        `override` (RepositoryModelLoad's `config` and `file:` parameters, server/models/overrides.py) loads
        from a temporary model directory instead of the repository's, until the next load without one; the
        directory is removed when the versions it holds are replaced or unloaded.
        """
        override_dir = None
        if override is not None:
            settings = settings or self._override_settings(name, override)
            repository_path = Path(settings.path) if settings.path else None
            override_dir = await asyncio.to_thread(materialize, name, override, repository_path)
            settings = settings.model_copy(update={"path": str(override_dir)})
        try:
            if override_dir is not None:  # the client's config, checked before the model is touched
                await asyncio.to_thread(self._check_override, name, override_dir)
            await self._load(name, settings)
        except ServeError as exc:
            discard(override_dir)
            if override_dir is None or exc.code != grpc.StatusCode.UNAVAILABLE or not self._accepting:
                raise
            # The model would not build from the request's own configuration or files: the request's fault
            # (INVALID_ARGUMENT, as a refused override is), said without the temporary directory.
            raise invalid_argument(exc.message.replace(str(override_dir), "the override")) from None
        except BaseException:
            discard(override_dir)
            raise
        # No await from here on: the bookkeeping is atomic with the load that just finished under the lock.
        entry = self._entries[name]
        previous, entry.override_dir = entry.override_dir, override_dir
        if previous is not None and previous != override_dir:
            discard(previous)

    @staticmethod
    def _check_override(name: str, override_dir: Path) -> None:
        """A config override that config.pbtxt's checks refuse is the client's error (INVALID_ARGUMENT), said
        without the temporary directory it was written to."""
        try:
            read_config(override_dir)
        except RepositoryError as exc:
            where = f"{override_dir / TRITON_CONFIG_NAME}"
            raise refused(name, str(exc).replace(where, "the config override")) from None

    def _override_settings(self, name: str, override: LoadOverride) -> ModelSettings:
        """The settings a load with overrides starts from: the model's own; for a model that comes from the
        request's files alone, the model defaults (its name must be one a repository directory could have)."""
        if not override.files:
            return self._settings_for(name)
        if not _plain_name(name):
            raise refused(
                name,
                f"a model loaded from file overrides needs a plain name (no '/', '..' or NUL; at most "
                f"{NAME_MAX} bytes)",
            )
        try:
            return self._settings_for(name)
        except ServeError:
            return self.config.model_defaults.model_copy(update={"name": name, "path": ""})

    async def _load(self, name: str, settings: ModelSettings | None = None) -> None:
        """Load (or reload) a model's versions per its version policy; ready when this returns.

        Versions no longer selected are retired after the new ones are ready. Raises ServeError NOT_FOUND
        for an unknown model, INTERNAL-free: a load failure raises ServeError UNAVAILABLE with the reason.
        """
        if not self._accepting:
            raise unavailable("server is shutting down")
        settings = settings or self._settings_for(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self._entries.setdefault(name, _Entry(settings))
            # A failed load keeps the settings of the versions still serving: an override's point at its
            # temporary directory, removed when the load fails, where the next plain load must not look.
            fresh = settings.model_copy(update={"path": ""})  # a new entry: the repository is looked in again
            kept = entry.settings if entry.settings is not settings else fresh
            entry.settings = settings
            entry.unloaded = False  # meant to be served again: a failure from here on makes it unready
            try:
                source = read_source(settings)
                settings = source.settings
                wanted = select_versions(source.versions, settings)
            except BackendError as exc:
                if not entry.versions:
                    # No version to label: the alert on `resnet_serve_model_ready == 0` must still see it.
                    self.metrics.model(name, UNKNOWN_MODEL_LABEL).set_ready(False)
                entry.settings = kept
                self._notify()
                raise unavailable(f"failed to load {echo(name)}, {exc}") from None
            self.metrics.forget(name, UNKNOWN_MODEL_LABEL)  # its versions are known now
            for version in wanted:
                entry.status[version] = VersionStatus(name, version, ModelState.LOADING)
            self._notify()  # the load has begun: LOADING in the index, and (worker processes) readiness
            loaded: dict[str, ServedModel] = {}
            try:
                for version, path in wanted.items():
                    loaded[version] = await asyncio.to_thread(
                        self._builder.build, settings, version, path, source
                    )
            except (BackendError, OSError, ValueError) as exc:
                for model in loaded.values():
                    await self._retire(model, still_served=model.version in entry.versions)
                for version in wanted:
                    # A failed reload leaves the versions already serving as they were.
                    state = ModelState.READY if version in entry.versions else ModelState.UNAVAILABLE
                    entry.status[version] = VersionStatus(
                        name, version, state, "" if state is ModelState.READY else str(exc)
                    )
                    if state is not ModelState.READY:  # a series at 0, so that an alert on it can fire
                        self.metrics.model(name, version).set_ready(False)
                entry.settings = kept
                self._notify()
                raise unavailable(f"failed to load {echo(name)}, {exc}") from None
            retired = [m for v, m in entry.versions.items() if v not in loaded or loaded[v] is not m]
            entry.versions = dict(loaded)
            for version, model in loaded.items():
                entry.status[version] = VersionStatus(name, version, ModelState.READY)
                model.metrics.set_ready(True)
            for model in retired:
                if model.version not in loaded:
                    entry.status[model.version] = VersionStatus(name, model.version, ModelState.UNLOADING)
            for model in retired:
                await self._retire(model, still_served=model.version in loaded)
                if model.version not in loaded:
                    entry.status[model.version] = VersionStatus(
                        name, model.version, ModelState.UNAVAILABLE, UNLOADED
                    )
            self._notify()

    async def unload(self, name: str) -> None:
        """Stop serving a model; its queued and running requests still complete. NOT_FOUND if not loaded. A
        model whose load failed is unloaded too, as Triton does it: nothing is meant to serve it any more, so
        strict readiness no longer waits for it."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self._entries.get(name)
            if entry is None or (not entry.versions and entry.unloaded):
                raise not_found(f"model {echo(name)} is not loaded")
            if not entry.versions:  # its last load failed
                entry.unloaded = True
                for version in entry.status:
                    entry.status[version] = VersionStatus(name, version, ModelState.UNAVAILABLE, UNLOADED)
                log.info("model %s unloaded (its load had failed)", name)
                self._notify()
                return
            models = list(entry.versions.values())
            entry.versions = {}
            entry.unloaded = True
            for model in models:
                entry.status[model.version] = VersionStatus(name, model.version, ModelState.UNLOADING)
            for model in models:
                await self._retire(model)
                entry.status[model.version] = VersionStatus(
                    name, model.version, ModelState.UNAVAILABLE, UNLOADED
                )
            discard(entry.override_dir)  # (kept in the entry: a plain load must look in the repository)
            log.info("model %s unloaded", name)
            self._notify()

    def stop_accepting(self) -> None:
        """From now on `get` answers UNAVAILABLE; requests already queued still complete."""
        self._accepting = False

    def abandon(self, message: str) -> int:
        """The end of a grace period: every request still queued ends UNAVAILABLE with `message`, uncomputed
        (batches already computing finish); returns how many."""
        self._accepting = False
        return sum(m.batcher.abandon(message) for e in self._entries.values() for m in e.versions.values())

    async def close(self, grace_s: float) -> None:
        """Finish queued requests (up to grace_s), answer those still queued then UNAVAILABLE, and release
        every backend whose batches have ended (one still computing is left to the process's exit). A second
        call (a failed start-up closes what it loaded, then its caller closes everything) does nothing."""
        self._accepting = False
        if self._closed:
            return
        self._closed = True
        models = [m for entry in self._entries.values() for m in entry.versions.values()]
        for model in models:
            model.state = ModelState.UNLOADING
            model.metrics.set_ready(False)
            model.batcher.close()
        end = time.monotonic() + grace_s
        for model in models:
            left = max(0.0, end - time.monotonic())
            drained = await asyncio.to_thread(model.batcher.join, left)
            if not drained:
                dropped = model.batcher.abandon(GRACE_OVER)
                # A worker told to stop while idle needs a moment to see it: only a batch keeps it longer.
                drained = await asyncio.to_thread(model.batcher.join, STOP_WAIT_S)
                if dropped or not drained:
                    log.warning(
                        "model %s version %s did not drain within the grace period: %d queued request(s) "
                        "answered UNAVAILABLE%s",
                        model.name,
                        model.version,
                        dropped,
                        "" if drained else ", a batch still computing",
                    )
            if drained:
                for backend in model.backends:
                    backend.close()
        for entry in self._entries.values():
            discard(entry.override_dir)
            entry.override_dir = None

    async def _retire(self, model: ServedModel, still_served: bool = False) -> None:
        # A reloaded version shares its metrics with the replacement, which is already ready.
        model.state = ModelState.UNLOADING
        if not still_served:
            model.metrics.set_ready(False)
        model.batcher.close()
        await asyncio.to_thread(model.batcher.join)
        for backend in model.backends:
            backend.close()


def _plain_name(name: str) -> bool:
    """A name that can only mean a directory directly in the repository: a client's name must not reach the
    repository itself ("") or anything outside it ("..", "../x", "a/b")."""
    plain = bool(name) and name == Path(name).name and not name.startswith(".") and "\x00" not in name
    return plain and len(name.encode("utf-8", "surrogatepass")) <= NAME_MAX  # longer: ENAMETOOLONG
