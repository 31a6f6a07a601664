"""Where an exported model comes from: one of our checkpoints, or a torchvision-format state_dict.

Both end as the same thing: an eval-mode nn.Module plus the metadata that will travel inside the ONNX file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_serve.export.errors import ExportError
from resnet_serve.export.samples import is_digits
from resnet_serve.formats.files import sha256_file
from resnet_serve.formats.metadata import ModelMetadata, tool_versions, validate_preprocess


@dataclass
class Source:
    """An eval-mode model and the metadata its exports carry."""

    model: nn.Module
    meta: ModelMetadata
    model_config: dict[str, Any]
    dataset: str | None  # "digits" when the checkpoint says so: selects the held-out images to compare on


def from_checkpoint(path: Path, arch: str | None = None) -> Source:
    from resnet_serve.models.checkpoint import load_model
    from resnet_serve.models.errors import ModelsError

    if not path.is_file():
        raise ExportError(f"no such checkpoint: {path}")
    try:
        model, meta = load_model(path, arch)
    except ModelsError as exc:
        raise ExportError(str(exc)) from None
    model.eval()
    labels = [str(x) for x in meta.get("labels") or []]
    config = dict(meta.get("model_config") or {})
    num_classes = config.get("num_classes")
    if not labels and num_classes:
        labels = [f"class_{i}" for i in range(int(num_classes))]
    return Source(
        model=model,
        meta=ModelMetadata(
            arch=str(meta["arch"]),
            labels=labels,
            preprocess=validate_preprocess(dict(meta["preprocess"])),
            source_sha256=sha256_file(path),
            versions=tool_versions(),
        ),
        model_config=config,
        dataset=_dataset_of(meta, labels),
    )


def _dataset_of(meta: dict[str, Any], labels: list[str]) -> str | None:
    """Which data set the checkpoint was trained on, to compare on its held-out split."""
    name = meta.get("dataset") or (meta.get("train_config") or {}).get("dataset")
    if isinstance(name, str):
        return name
    return "digits" if is_digits(labels, meta.get("preprocess") or {}) else None


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ExportError(f"no such weights file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a state_dict we can read"
        raise ExportError(f"{path} is not a readable PyTorch state_dict ({type(exc).__name__})") from None
    if isinstance(obj, dict) and obj.get("format", "").startswith("resnet-serve/"):
        raise ExportError(f"{path} is a resnet-serve checkpoint: pass it with --checkpoint instead")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # common wrapper: {"state_dict": ..., "epoch": ...}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def check_state_dict_fits(arch: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """One readable line when the weights belong to another architecture (strict loading lists hundreds)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} with other shapes (e.g. {k}: file {tuple(state[k].shape)}, "
            f"{arch} {tuple(expected[k].shape)})"
        )
    raise ExportError(f"weights do not match --arch {arch}: {'; '.join(parts)} tensors")


def from_torchvision(
    arch: str, weights: Path, num_classes: int | None, labels_file: Path | None, preprocess: dict[str, Any]
) -> Source:
    from resnet_serve.models import registry
    from resnet_serve.models.errors import ModelsError

    try:
        registry.check(arch)
    except ModelsError as exc:
        raise ExportError(str(exc)) from None
    state = _load_state_dict(weights)
    if num_classes is None:
        fc = state.get("fc.weight")
        if fc is None or fc.dim() != 2:
            raise ExportError(f"{weights} has no fc.weight to read the class count from; pass --num-classes")
        num_classes = int(fc.shape[0])
    preprocess = validate_preprocess(preprocess)
    config: dict[str, Any] = {"num_classes": num_classes}
    if preprocess["color"] == "L":
        config["in_chans"] = 1
    model = registry.build(arch, **config)
    check_state_dict_fits(arch, model, state)
    model.load_state_dict(state, strict=True)
    model.eval()
    labels = (
        _read_labels(labels_file, num_classes) if labels_file else [f"class_{i}" for i in range(num_classes)]
    )
    meta = ModelMetadata(
        arch=arch,
        labels=labels,
        preprocess=preprocess,
        source_sha256=sha256_file(weights),
        versions=tool_versions(),
    )
    return Source(model=model, meta=meta, model_config=config, dataset=None)


def _read_labels(path: Path, num_classes: int) -> list[str]:
    if not path.is_file():
        raise ExportError(f"no such labels file: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        labels = json.loads(text)
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) != num_classes:
        raise ExportError(f"{path} has {len(labels)} labels but the model has {num_classes} classes")
    return [str(x) for x in labels]
