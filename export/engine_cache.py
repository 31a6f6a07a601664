"""TensorRT engines for a whole model repository, built on the node that serves them and cached on a volume.

A plan runs only on the TensorRT version and GPU architecture that built it, so an image cannot ship one:
the GPU image's entrypoint (`resnet-serve entrypoint --build-engines`) builds them on first start. They go
to a derived model repository under the cache root, one per (TensorRT version, compute capability):

    <cache>/trt<version>-sm<cc>/timing.cache              TensorRT's timing cache, reused by every rebuild
    <cache>/trt<version>-sm<cc>/<model>/config.json       the source config.json, backend tensorrt
    <cache>/trt<version>-sm<cc>/<model>/<n>/model.plan    the latest version's engine, + model.plan.json

so a volume shared by nodes with different GPUs keeps one set per architecture, and a restart on the same
node finds its engines (an engine is rebuilt only when its source ONNX's sha256 or the precision changed).
The source repository is only read (it may be mounted read-only). Everything but the build itself is pure
Python, tested without TensorRT; the build runs through a callable (the entrypoint runs `resnet-serve
build-engine` in a child process, so the builder's GPU memory is gone before the server starts).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from resnet_serve.export.engine import BatchProfile, EngineError, gpu_identity
from resnet_serve.formats.errors import SidecarError
from resnet_serve.formats.files import sha256_file, write_json_atomic
from resnet_serve.formats.repository import (
    CONFIG_NAME,
    PLATFORMS,
    PackagedModel,
    read_repository,
)
from resnet_serve.formats.sidecar import read_sidecar
from resnet_serve.runtime.tensorrt import require_tensorrt

ENGINE_FILE = "model.plan"
TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class NodeGpu:
    """What an engine is tied to: the TensorRT version and the GPU's compute capability."""

    tensorrt_version: str
    compute_capability: str  # "9.0"
    gpu_name: str = ""

    @property
    def key(self) -> str:
        return f"trt{self.tensorrt_version}-sm{self.compute_capability.replace('.', '')}"


def node_gpu(device: int = 0) -> NodeGpu:
    """This node's TensorRT and GPU; an EngineError that says what is missing when either is absent."""
    require_tensorrt()
    import tensorrt as trt  # type: ignore[import-untyped]

    gpu = gpu_identity(device)
    return NodeGpu(str(trt.__version__), gpu.compute_capability, gpu.name)


@dataclass(frozen=True)
class EngineJob:
    """One engine to build: the latest version of one model."""

    model: str
    version: int
    onnx: Path
    engine: Path
    profile: BatchProfile
    precision: str  # as `build-engine --precision`: auto, fp32, fp16, int8
    timing_cache: Path


Builder = Callable[[EngineJob], None]


def profile_for(model: PackagedModel) -> BatchProfile:
    """Batch 1 up to the model's max_batch_size, tuned for its largest preferred batch size."""
    largest = max(1, model.max_batch_size)
    preferred = [b for b in model.dynamic_batching.preferred_batch_sizes if b <= largest]
    return BatchProfile(1, max(preferred, default=largest), largest)


def _is_current(engine: Path, source_sha256: str, precision: str) -> bool:
    if not engine.is_file():
        return False
    try:
        sidecar = read_sidecar(engine)
    except SidecarError:
        return False
    wanted = precision in ("auto", sidecar.precision)
    return wanted and sidecar.source_sha256 == source_sha256 and sha256_file(engine) == sidecar.engine_sha256


def plan(
    repository: Path, root: Path, precision: str = "auto"
) -> tuple[list[PackagedModel], list[EngineJob]]:
    """The repository's models, and the engines that `root` (one node key's directory) still lacks."""
    models = read_repository(repository)
    jobs = []
    for model in models:
        latest = model.latest()
        source = model.version_path(latest)
        if source.suffix != ".onnx":
            continue  # already an engine or a checkpoint: served as it is (see write_repository)
        engine = root / model.name / str(latest.version) / ENGINE_FILE
        if not _is_current(engine, latest.sha256, precision):
            jobs.append(
                EngineJob(
                    model.name,
                    latest.version,
                    source,
                    engine,
                    profile_for(model),
                    precision,
                    root / TIMING_CACHE,
                )
            )
    return models, jobs


def write_repository(models: list[PackagedModel], root: Path) -> Path:
    """Write `root` as a model repository serving each model's latest version: its engine where the source
    was ONNX, else (a link to) the source file. Returns `root`."""
    for model in models:
        latest = model.latest()
        source = model.version_path(latest)
        version_dir = root / model.name / str(latest.version)
        version_dir.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".onnx":
            engine = version_dir / ENGINE_FILE
            if not engine.is_file():
                raise EngineError(f"no engine for {model.name} version {latest.version} in {root}")
            entry = replace(latest, file=ENGINE_FILE, sha256=sha256_file(engine))
            entry = replace(entry, precision=read_sidecar(engine).precision)
            derived = replace(model, backend="tensorrt", platform=PLATFORMS["tensorrt"], versions=[entry])
        else:
            link = version_dir / latest.file
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(source.resolve())
            derived = replace(model, versions=[latest])
        write_json_atomic(root / model.name / CONFIG_NAME, derived.to_json())
    return root


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One builder per cache directory at a time (replicas starting together on one volume)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def prepare(
    repository: Path, cache: Path, node: NodeGpu, build: Builder, precision: str = "auto"
) -> tuple[Path, list[EngineJob]]:
    """Build what is missing for this node, write the derived repository; (its path, the jobs built)."""
    root = cache / node.key
    with _locked(root):
        models, jobs = plan(repository, root, precision)
        for job in jobs:
            job.engine.parent.mkdir(parents=True, exist_ok=True)
            build(job)
        write_repository(models, root)
    return root, jobs
