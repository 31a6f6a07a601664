"""Where a model's versions come from: a model source on disk, its numbered versions, the version policy.

A model's source is an .onnx file (served as version "1"), a model directory packaged by `resnet-serve
package` (config.json + numbered versions), or a bare directory of numbered versions (`NAME/1/model.onnx`,
...). A packaged model's config.json settings override the server-wide model defaults; the server config's
own [models.NAME] keys override config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_serve.formats.repository import CONFIG_NAME, RepositoryError, read_model
from resnet_serve.runtime.base import BackendError
from resnet_serve.server.config import ConfigError, ModelSettings, with_values

MODEL_FILES = ("model.onnx", "model.plan", "model.engine", "model.pt")


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
    settings: ModelSettings  # the server's settings merged with config.json's
    labels: list[str] = field(default_factory=list)
    preprocess: dict[str, Any] | None = None


def read_source(settings: ModelSettings) -> ModelSource:
    """Read a model's path: a file, a packaged model directory, or a directory of numbered versions."""
    path = Path(settings.path)
    if not (path.is_dir() and (path / CONFIG_NAME).is_file()):
        return ModelSource(discover_versions(path), settings)
    try:
        packaged = read_model(path)
        values: dict[str, Any] = {
            "backend": packaged.backend,
            "instances": packaged.instance_count,
            "max_batch_size": max(1, packaged.max_batch_size),
            "preferred_batch_sizes": tuple(packaged.dynamic_batching.preferred_batch_sizes),
            "max_queue_delay_ms": packaged.dynamic_batching.max_queue_delay_us / 1000.0,
        }
        for key in ("inference_precision", "performance_mode", "intra_op_threads"):  # optional keys
            if getattr(packaged, key) is not None:
                values[key] = getattr(packaged, key)
        merged = with_values(settings, {k: v for k, v in values.items() if k not in settings.explicit})
    except (RepositoryError, ConfigError) as exc:
        raise BackendError(str(exc)) from None
    versions = {str(v.version): packaged.version_path(v) for v in packaged.versions}
    return ModelSource(versions, merged, list(packaged.labels), dict(packaged.preprocess))


def select_versions(available: dict[str, Path], settings: ModelSettings) -> dict[str, Path]:
    """Apply the version policy: latest (the highest number), all, or the specific versions listed."""
    ordered = sorted(available, key=version_key)
    if settings.version_policy == "all":
        chosen = ordered
    elif settings.version_policy == "specific":
        wanted = [str(v) for v in settings.versions]
        missing = [v for v in wanted if v not in available]
        if missing:
            raise BackendError(f"version(s) {', '.join(missing)} not found (available: {', '.join(ordered)})")
        chosen = wanted
    else:
        chosen = ordered[-1:]
    return {v: available[v] for v in chosen}
