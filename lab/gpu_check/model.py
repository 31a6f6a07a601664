"""A model under test: its checkpoint, its ONNX files by precision (made by export's exporter), the data it
is compared on, and the reference logits every backend is judged against."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Model:
    name: str
    checkpoint: Path
    inputs: np.ndarray  # preprocessed float32 (N, C, H, W)
    labels: np.ndarray | None  # held-out labels (digits) or None
    calibration: np.ndarray | None
    onnx: dict[str, Path] = field(default_factory=dict)
    reference: np.ndarray | None = None  # ORT CPU FP32 logits (or PyTorch CPU when ONNX export failed)
    reference_name: str = ""
    notes: list[str] = field(default_factory=list)


def export_onnx(model: Model, work: Path, want_int8: bool) -> None:
    """FP32 ONNX through `resnet-serve export`'s exporter, its FP16 twin, and the TensorRT INT8 QDQ model
    when TensorRT will use it. An export that fails (no onnxscript, say) raises ExportError: the caller
    skips the ONNX backends with that reason."""
    from resnet_serve.export.fp16 import to_fp16
    from resnet_serve.export.onnx_export import export_source
    from resnet_serve.export.sources import from_checkpoint
    from resnet_serve.formats.files import write_bytes_atomic

    proto, _ = export_source(from_checkpoint(model.checkpoint), model.inputs[:8], log=False)
    path = work / f"{model.name}.onnx"
    write_bytes_atomic(path, proto.SerializeToString())
    model.onnx["fp32"] = path
    fp16 = work / f"{model.name}.fp16.onnx"
    write_bytes_atomic(fp16, to_fp16(proto).SerializeToString())
    model.onnx["fp16"] = fp16
    if want_int8 and model.calibration is not None:
        from resnet_serve.export.quantize import quantize
        from resnet_serve.formats.metadata import from_props, props_of

        int8 = quantize(proto, from_props(props_of(proto)), model.calibration, ("trt",))["trt"]
        model.onnx["int8"] = work / f"{model.name}.int8.onnx"
        write_bytes_atomic(model.onnx["int8"], int8.SerializeToString())


def set_reference(model: Model) -> None:
    if "fp32" in model.onnx:
        from resnet_serve.runtime.onnxruntime import OrtBackend, OrtOptions

        ref = OrtBackend(model.onnx["fp32"], OrtOptions(device="cpu"))
        model.reference = ref.infer({"input": model.inputs})["logits"]
        model.reference_name = "onnxruntime-cpu fp32"
    else:
        from resnet_serve.export.onnx_export import torch_logits
        from resnet_serve.models.checkpoint import load_model

        module, _ = load_model(model.checkpoint)
        model.reference = torch_logits(module, model.inputs)
        model.reference_name = "pytorch-cpu fp32"
