"""The models this server serves: loading, version policy, readiness, lookup, explicit load/unload.

Both APIs (our image API and KServe v2) go through one `ModelManager`:

* `get(name, version)` returns a ready `ServedModel` or raises ServeError: NOT_FOUND for a model or version
  that is not served, UNAVAILABLE while it is loading/unloading or the server is shutting down.
* `load(name)` / `unload(name)` (KServe RepositoryModelLoad/Unload) never drop in-flight requests: a
  reload makes the new versions ready before the old ones are retired, and a retired version's batcher
  finishes every queued request before its backends are closed.
* Every version is warmed up (a zero batch at each batch size it will see) before it is marked ready.

A model's source is an .onnx file (served as version "1"), a model directory packaged by `resnet-serve
package` (export/repository.py: config.json + numbered versions), or a bare directory of numbered versions
(`NAME/1/model.onnx`, ...); `--model-repository DIR` serves every model directory in DIR. A packaged model's
config.json settings override the server-wide model defaults; the server config's own [models.NAME] keys
override config.json.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_serve.formats.preprocess import ImageLimits, Preprocessor, PreprocessSpec
from resnet_serve.formats.repository import CONFIG_NAME, RepositoryError, read_model
from resnet_serve.runtime.base import Backend, BackendError, BackendInfo
from resnet_serve.runtime.factory import backend_for, create_backend
from resnet_serve.runtime.onnxruntime import default_threads
from resnet_serve.server.batching.batcher import BatchResult, DynamicBatcher
from resnet_serve.server.config import ConfigError, ModelConfig, ServerConfig, with_values
from resnet_serve.server.errors import ServeError, not_found, unavailable
from resnet_serve.server.observability.metrics import UNKNOWN_MODEL_LABEL, ModelMetrics, ServerMetrics

log = logging.getLogger(__name__)

UNLOADED = "unloaded"  # the reason of a version taken down on request (not a failure)
UNAVAILABLE_OUTCOME = "unavailable"  # the metrics outcome of a request refused here (server.errors.OUTCOMES)
LABELS_KEY = "resnet_serve.labels"
PREPROCESS_KEY = "resnet_serve.preprocess"
MODEL_FILES = ("model.onnx", "model.plan", "model.engine", "model.pt")


class ModelState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ServedModel:
    """One loaded version of a model: its backends behind a batcher, and what the APIs need to know."""

    name: str
    version: str
    path: Path
    config: ModelConfig
    info: BackendInfo
    labels: list[str]
    preprocessor: Preprocessor | None  # None: the model has no preprocess metadata (tensor API only)
    batcher: DynamicBatcher
    metrics: ModelMetrics
    backends: list[Backend]
    state: ModelState = ModelState.READY
    load_s: float = 0.0

    async def infer(self, inputs: dict[str, np.ndarray], timeout_s: float | None = None) -> BatchResult:
        """Queue a request on this version's batcher (see DynamicBatcher.submit for the errors)."""
        return await self.batcher.submit(inputs, timeout_s)


@dataclass(frozen=True)
class VersionStatus:
    name: str
    version: str
    state: ModelState
    reason: str = ""


@dataclass
class _Entry:
    """A model name: its config and its versions by version string."""

    config: ModelConfig
    versions: dict[str, ServedModel] = field(default_factory=dict)
    status: dict[str, VersionStatus] = field(default_factory=dict)
    unloaded: bool = False  # taken down on request: not meant to be served until loaded again


def version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def discover_versions(path: Path) -> dict[str, Path]:
    """The numbered versions under a model source: a file is version "1"; a directory has NAME/<n>/model.*."""
    if path.is_file():
        return {"1": path}
    if not path.is_dir():
        raise BackendError(f"model path does not exist: {path}")
    found: dict[str, Path] = {}
    for child in path.iterdir():
        if child.is_dir() and child.name.isdigit():
            for file_name in MODEL_FILES:
                if (child / file_name).is_file():
                    found[str(int(child.name))] = child / file_name
                    break
    if not found:
        raise BackendError(
            f"{path} holds no numbered version directories with a model file ({MODEL_FILES[0]})"
        )
    return found


@dataclass(frozen=True)
class ModelSource:
    """What a model's path holds: its version files, and settings from a packaged config.json if any."""

    versions: dict[str, Path]
    config: ModelConfig  # the server's settings merged with config.json's
    labels: list[str] = field(default_factory=list)
    preprocess: dict[str, Any] | None = None


def read_source(config: ModelConfig) -> ModelSource:
    """Read a model's path: a file, a packaged model directory, or a directory of numbered versions."""
    path = Path(config.path)
    if not (path.is_dir() and (path / CONFIG_NAME).is_file()):
        return ModelSource(discover_versions(path), config)
    try:
        packaged = read_model(path)
        values: dict[str, Any] = {
            "backend": packaged.backend,
            "instances": packaged.instance_count,
            "max_batch_size": max(1, packaged.max_batch_size),
            "preferred_batch_sizes": tuple(packaged.dynamic_batching.preferred_batch_sizes),
            "max_queue_delay_ms": packaged.dynamic_batching.max_queue_delay_us / 1000.0,
        }
        merged = with_values(config, {k: v for k, v in values.items() if k not in config.explicit})
    except (RepositoryError, ConfigError) as exc:
        raise BackendError(str(exc)) from None
    versions = {str(v.version): packaged.version_path(v) for v in packaged.versions}
    return ModelSource(versions, merged, list(packaged.labels), dict(packaged.preprocess))


def select_versions(available: dict[str, Path], config: ModelConfig) -> dict[str, Path]:
    """Apply the version policy: latest (the highest number), all, or the specific versions listed."""
    ordered = sorted(available, key=version_key)
    if config.version_policy == "all":
        chosen = ordered
    elif config.version_policy == "specific":
        wanted = [str(v) for v in config.versions]
        missing = [v for v in wanted if v not in available]
        if missing:
            raise BackendError(f"version(s) {', '.join(missing)} not found (available: {', '.join(ordered)})")
        chosen = wanted
    else:
        chosen = ordered[-1:]
    return {v: available[v] for v in chosen}


class ModelManager:
    """Owns every ServedModel; all methods are called on the event loop."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.limits = ImageLimits(config.max_image_bytes, config.max_image_pixels, config.jpeg_draft)
        self._entries: dict[str, _Entry] = {}
        self._accepting = True
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------------------------------------- lookup

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def default_model(self) -> str:
        """The model a request that names none gets: the configured one, else the first configured."""
        if self.config.default_model:
            return self.config.default_model
        return next(iter(self._entries), "")

    def get(self, name: str, version: str = "", *, count: bool = True) -> ServedModel:
        """The ready model version to send a request to (empty name: the default model, empty version: the
        highest ready version). Raises ServeError NOT_FOUND or UNAVAILABLE.

        A refusal is counted in the metrics as a finished request (`not_found` under the `_unknown` labels,
        `unavailable` under the model version it was meant for); `count=False` is for lookups that are not
        inference requests (readiness, metadata)."""
        name = name or self.default_model
        entry = self._entries.get(name)
        if not self._accepting:
            if count:
                self._count_refusal(name, entry, version)
            raise unavailable("server is shutting down; not accepting new requests")
        if entry is None:
            if count:
                self.metrics.unknown_model(name)
            served = ", ".join(sorted(self._entries)) or "none"
            raise not_found(f"model {name!r} is not served (served models: {served})")
        if version:
            model = entry.versions.get(version)
            if model is None:
                status = entry.status.get(version)
                if count:
                    self._count_refusal(name, entry, version)
                if status is not None:
                    raise unavailable(f"model {name!r} version {version} is {status.state}")
                known = ", ".join(sorted(entry.status, key=version_key)) or "none"
                raise not_found(f"model {name!r} has no version {version!r} (versions: {known})")
            return model
        ready = [v for v in entry.versions.values() if v.state is ModelState.READY]
        if not ready:
            if count:
                self._count_refusal(name, entry, version)
            raise unavailable(f"model {name!r} has no ready version")
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
        self.metrics.model(name, version).request_done(UNAVAILABLE_OUTCOME, 0.0)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.get(name, version, count=False).state is ModelState.READY
        except ServeError:
            return False

    def all_ready(self) -> bool:
        """Every model that is meant to be served has a ready version, as Triton's readiness: a failed load
        makes the server unready (docs/kserve.md, ServerReady), so a load balancer that checks readiness does
        not send traffic a half-working server cannot answer; a model unloaded on request does not, because
        nothing is meant to serve it."""
        if not self._accepting or not self._entries:
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

    def names(self) -> list[str]:
        return list(self._entries)

    def versions(self, name: str) -> list[ServedModel]:
        """The loaded versions of a model, lowest first (NOT_FOUND when the model is not served)."""
        entry = self._entries.get(name)
        if entry is None:
            raise not_found(f"model {name!r} is not served")
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
            and ((p / CONFIG_NAME).is_file() or any(c.name.isdigit() for c in p.iterdir()))
        )

    # ---------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load every configured model and every repository model; a failure aborts start-up."""
        for model_config in self.config.models:
            await self.load(model_config.name, model_config)
        for name in self.repository_models():
            if name not in self._entries:
                await self.load(name)

    def _config_for(self, name: str) -> ModelConfig:
        for model_config in self.config.models:
            if model_config.name == name:
                return model_config
        if name in self._entries:
            return self._entries[name].config
        repo = self.config.model_repository
        # Only a directory directly in the repository, as repository_models lists them: a client's name must
        # not reach the repository itself ("") or anything outside it ("..", "../x", "a/b").
        in_repository = bool(name) and name == Path(name).name and not name.startswith(".")
        if repo and in_repository and (Path(repo) / name).is_dir():
            return dataclasses.replace(self.config.model_defaults, name=name, path=str(Path(repo) / name))
        raise not_found(f"model {name!r} is neither configured nor in the model repository")

    async def load(self, name: str, config: ModelConfig | None = None) -> None:
        """Load (or reload) a model's versions per its version policy; ready when this returns.

        Versions no longer selected are retired after the new ones are ready. Raises ServeError NOT_FOUND
        for an unknown model, INTERNAL-free: a load failure raises ServeError UNAVAILABLE with the reason.
        """
        if not self._accepting:
            raise unavailable("server is shutting down")
        config = config or self._config_for(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self._entries.setdefault(name, _Entry(config))
            entry.config = config
            entry.unloaded = False  # meant to be served again: a failure from here on makes it unready
            try:
                source = read_source(config)
                config = source.config
                wanted = select_versions(source.versions, config)
            except BackendError as exc:
                raise unavailable(f"cannot load model {name!r}: {exc}") from None
            for version in wanted:
                entry.status[version] = VersionStatus(name, version, ModelState.LOADING)
            loaded: dict[str, ServedModel] = {}
            try:
                for version, path in wanted.items():
                    loaded[version] = await asyncio.to_thread(self._build, config, version, path, source)
            except (BackendError, OSError, ValueError) as exc:
                for model in loaded.values():
                    await self._retire(model, still_served=model.version in entry.versions)
                for version in wanted:
                    # A failed reload leaves the versions already serving as they were.
                    state = ModelState.READY if version in entry.versions else ModelState.UNAVAILABLE
                    entry.status[version] = VersionStatus(
                        name, version, state, "" if state is ModelState.READY else str(exc)
                    )
                self._notify()
                raise unavailable(f"cannot load model {name!r}: {exc}") from None
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
        """Stop serving a model; its queued and running requests still complete. NOT_FOUND if not loaded."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self._entries.get(name)
            if entry is None or not entry.versions:
                raise not_found(f"model {name!r} is not loaded")
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
            log.info("model %s unloaded", name)
            self._notify()

    def stop_accepting(self) -> None:
        """From now on `get` answers UNAVAILABLE; requests already queued still complete."""
        self._accepting = False

    async def close(self, grace_s: float) -> None:
        """Finish queued requests (up to grace_s) and release every backend."""
        self._accepting = False
        models = [m for entry in self._entries.values() for m in entry.versions.values()]
        for model in models:
            model.state = ModelState.UNLOADING
            model.metrics.set_ready(False)
            model.batcher.close()
        end = time.monotonic() + grace_s
        for model in models:
            left = max(0.0, end - time.monotonic())
            if not await asyncio.to_thread(model.batcher.join, left):
                log.warning(
                    "model %s version %s did not drain within the grace period", model.name, model.version
                )
            for backend in model.backends:
                backend.close()

    async def _retire(self, model: ServedModel, still_served: bool = False) -> None:
        # A reloaded version shares its metrics with the replacement, which is already ready.
        model.state = ModelState.UNLOADING
        if not still_served:
            model.metrics.set_ready(False)
        model.batcher.close()
        await asyncio.to_thread(model.batcher.join)
        for backend in model.backends:
            backend.close()

    # ------------------------------------------------------------------------------------------ building

    def _build(self, config: ModelConfig, version: str, path: Path, source: ModelSource) -> ServedModel:
        """Create the instances, warm them up and start the batcher (runs in a worker thread)."""
        start = time.perf_counter()
        backend_name = backend_for(path, config.backend)
        threads = config.intra_op_threads or max(1, default_threads() // config.instances)
        backends: list[Backend] = []
        try:
            for _ in range(config.instances):
                backends.append(
                    create_backend(path, backend_name, config.device, threads, config.intra_op_spinning)
                )
            info = backends[0].info
            labels, preprocessor = self._describe(config.name, info, source)
            metrics = self.metrics.model(config.name, version)
            batcher = DynamicBatcher(config.name, version, backends, config.batching, metrics)
            if config.warmup:
                sizes = sorted({1, *config.batching.preferred_batch_sizes, batcher.max_batch_size})
                for backend in backends:
                    backend.warmup(sizes)
        except Exception:
            for backend in backends:
                backend.close()
            raise
        load_s = time.perf_counter() - start
        metrics.set_load_time(load_s)
        log.info(
            "model %s version %s ready: %s on %s, %d instance(s) x %d thread(s), max batch %d, %.2f s",
            config.name,
            version,
            path,
            info.device,
            len(backends),
            threads,
            batcher.max_batch_size,
            load_s,
        )
        return ServedModel(
            name=config.name,
            version=version,
            path=path,
            config=config,
            info=info,
            labels=labels,
            preprocessor=preprocessor,
            batcher=batcher,
            metrics=metrics,
            backends=backends,
            load_s=load_s,
        )

    def _describe(
        self, name: str, info: BackendInfo, source: ModelSource
    ) -> tuple[list[str], Preprocessor | None]:
        # The model file's own metadata first; a packaged config.json fills in for files that carry none
        # (TensorRT plans).
        classes = info.outputs[0].shape[-1] if info.outputs and info.outputs[0].shape else -1
        labels: list[str] = []
        raw_labels = info.metadata.get(LABELS_KEY)
        if raw_labels:
            try:
                labels = [str(x) for x in json.loads(raw_labels)]
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"model {name!r}: {LABELS_KEY} is not a JSON list ({exc})") from None
        if classes > 0 and labels and len(labels) != classes:
            raise ValueError(f"model {name!r} has {classes} outputs but {len(labels)} labels")
        labels = labels or source.labels
        if not labels and classes > 0:
            labels = [str(i) for i in range(classes)]
        preprocessor = None
        raw = info.metadata.get(PREPROCESS_KEY)
        if raw or source.preprocess:
            spec = PreprocessSpec.from_json(raw) if raw else PreprocessSpec.from_dict(source.preprocess or {})
            expected = (spec.channels, spec.crop, spec.crop)
            actual = info.inputs[0].shape[1:] if info.inputs else ()
            if len(actual) == 3 and any(a not in (-1, e) for a, e in zip(actual, expected, strict=True)):
                raise ValueError(
                    f"model {name!r}: preprocess gives {list(expected)} but the input is {list(actual)}"
                )
            preprocessor = Preprocessor(spec, self.limits)
        return labels, preprocessor
