"""Building one model version to serve: its runtime instances (with config.pbtxt applied), its labels and
image preprocessing, its batcher and metrics, warmed up (server/models/warmup.py) and ready to answer.
`ModelManager` (server/models/manager.py) decides which versions to build, when, and what to retire."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from resnet_serve.formats.metadata import (
    INFERENCE_PRECISION_KEY,
    LOADED_FROM_CACHE_KEY,
    PREPROCESS_KEY,
    labels_of,
)
from resnet_serve.formats.preprocess import ImageLimits, Preprocessor, PreprocessSpec
from resnet_serve.runtime.base import Backend, BackendInfo
from resnet_serve.runtime.cpus import default_threads
from resnet_serve.runtime.factory import InstanceOptions, backend_for, create_backends
from resnet_serve.server.batching.batcher import DynamicBatcher
from resnet_serve.server.config import ModelSettings, ServerConfig, image_formats
from resnet_serve.server.decode import gpu as image_decoders
from resnet_serve.server.decode.budget import DecodeBudget
from resnet_serve.server.models import warmup
from resnet_serve.server.models.configured import configure
from resnet_serve.server.models.served import ServedModel
from resnet_serve.server.models.sources import ModelSource, check_tensors
from resnet_serve.server.observability.metrics import ServerMetrics

log = logging.getLogger(__name__)


class ModelBuilder:
    """Builds ServedModels with the server's image limits and decode budget (shared by every model)."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.limits = ImageLimits(
            config.max_image_bytes,
            config.max_image_pixels,
            config.jpeg_draft,
            image_formats(config),
            config.image_decoder,
        )
        self.decode_budget = DecodeBudget.of_mib(config.max_decode_memory_mib)

    def build(self, settings: ModelSettings, version: str, path: Path, source: ModelSource) -> ServedModel:
        """Create the instances, warm them up and start the batcher (runs in a worker thread)."""
        start = time.perf_counter()
        backend_name = backend_for(path, settings.backend)
        threads = settings.intra_op_threads or max(1, default_threads() // settings.instances)
        backends: list[Backend] = []
        options = InstanceOptions(
            device=settings.device,
            intra_op_threads=threads,
            spinning=settings.intra_op_spinning,
            inference_precision=settings.inference_precision,
            performance_mode=settings.performance_mode,
            cache_dir=os.path.expanduser(self.config.openvino_cache_dir),  # "" stays "": no cache
        )
        try:
            backends = create_backends(path, backend_name, settings.instances, options)
            if source.triton is not None:
                check_tensors(source.triton, backends[0].info)
                backends = configure(backends, source.triton, source.no_batch_dim)
            info = backends[0].info
            labels, preprocessor = self._describe(settings.name, info, source)
            metrics = self.metrics.model(settings.name, version)
            batcher = DynamicBatcher(settings.name, version, backends, settings.batching, metrics)
            if settings.warmup:
                self._warm_up(settings, backends, batcher, source)
        except Exception:
            for backend in backends:
                backend.close()
            raise
        load_s = time.perf_counter() - start
        metrics.set_load_time(load_s)
        log.info(
            "model %s version %s ready: %s on %s, %d instance(s) x %d thread(s), max batch %d, %.2f s",
            settings.name,
            version,
            path,
            _runs_on(backend_name, info),
            len(backends),
            threads,
            batcher.max_batch_size,
            load_s,
        )
        return ServedModel(
            name=settings.name,
            version=version,
            path=path,
            settings=settings,
            info=info,
            labels=labels,
            preprocessor=preprocessor,
            batcher=batcher,
            metrics=metrics,
            backends=backends,
            load_s=load_s,
            triton=source.triton,
        )

    @staticmethod
    def _warm_up(
        settings: ModelSettings, backends: list[Backend], batcher: DynamicBatcher, source: ModelSource
    ) -> None:
        """config.pbtxt's model_warmup where it has one, else the default warmup (server/models/warmup.py)."""
        info = backends[0].info
        if source.triton is not None and source.triton.warmup:
            runs = warmup.configured_runs(source.triton.warmup, info, settings.name)
            warmup.run(backends, runs, settings.name, required=True)
            return
        sizes = sorted({1, *settings.batching.preferred_batch_sizes, batcher.max_batch_size})
        runs, exact = warmup.default_runs(info, sizes)
        warmup.run(backends, runs, settings.name, required=exact)

    def _describe(
        self, name: str, info: BackendInfo, source: ModelSource
    ) -> tuple[list[str], Preprocessor | None]:
        # The model file's own metadata first; a packaged config.json fills in for files that carry none
        # (TensorRT plans).
        classes = info.outputs[0].shape[-1] if info.outputs and info.outputs[0].shape else -1
        labels = labels_of(info.metadata, f"model {name!r}")
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
            actual = info.inputs[0].shape[-3:] if info.inputs else ()  # C, H, W with or without a batch dim
            if len(actual) == 3 and any(a not in (-1, e) for a, e in zip(actual, expected, strict=True)):
                raise ValueError(
                    f"model {name!r}: preprocess gives {list(expected)} but the input is {list(actual)}"
                )
            image_decoders.require(self.limits.decoder)  # DecoderUnavailable (a ValueError): a load failure
            preprocessor = Preprocessor(spec, self.limits, self.decode_budget)
        return labels, preprocessor


def _runs_on(backend: str, info: BackendInfo) -> str:
    """The device for the ready log line, with the runtime and the precision it computes in where the
    backend reports them (OpenVINO: `cpu (openvino, fp32, compiled from cache)`)."""
    precision = info.metadata.get(INFERENCE_PRECISION_KEY)
    if precision is None:
        return info.device
    cached = ", compiled from cache" if info.metadata.get(LOADED_FROM_CACHE_KEY) == "true" else ""
    return f"{info.device} ({backend}, {precision}{cached})"
