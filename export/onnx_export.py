"""Export a model source (our checkpoint or torchvision-format weights) to one self-contained ONNX file.

`export_source` folds BatchNorm (models/fold.py), exports with input `input` (batch, C, H, W) float32 and
output `logits` (batch, classes), a dynamic batch dimension and our metadata (formats/metadata.py), and
accepts the result only if it passes onnx's full checker, holds no BatchNormalization node and matches PyTorch
on real images in ONNX Runtime at batch 1 and at the full batch. The command, its flags and examples:
cli/commands/export.py (`resnet-serve export`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from torch import nn

from resnet_serve.export.errors import ExportError
from resnet_serve.export.sources import Source
from resnet_serve.formats.errors import MetadataError
from resnet_serve.formats.metadata import ModelMetadata, from_props, props_of, write
from resnet_serve.formats.parity import relative_error
from resnet_serve.models.fold import FoldError, fold_batchnorm

# Opset 18: QDQ with per-channel axes (≥13) and ReduceMean with axes as an input (18) are all we need; it is
# the newest opset that TensorRT 8.6+, ONNX Runtime ≥ 1.14 and onnxruntime.quantization all fully support,
# and the dynamo exporter translates to it natively. See docs/export.md.
OPSET = 18
DEFAULT_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def read_metadata(path: str | Path) -> ModelMetadata:
    """Our metadata (formats/metadata.py) from an ONNX file, its graph loaded without the external weights."""
    p = Path(path)
    if not p.is_file():
        raise MetadataError(f"no such ONNX file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...: all mean "not an ONNX model"
        raise MetadataError(f"{p} is not a readable ONNX model ({type(exc).__name__})") from None
    return from_props(props_of(model), str(p))


def torch_logits(model: nn.Module, x: NDArray[np.float32]) -> NDArray[np.float32]:
    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    return np.asarray(out.detach().numpy(), dtype=np.float32)


def to_onnx(model: nn.Module, example: torch.Tensor, opset: int = OPSET) -> onnx.ModelProto:
    """Trace `model` with the dynamo exporter into an in-memory ModelProto (weights inline, dynamic batch).

    The TorchScript exporter (dynamo=False) is deprecated in this torch; the dynamo exporter is kept in
    memory (f=None) so external data never arises and the file is written once, atomically, by us.
    """
    if example.shape[0] < 2:
        raise ValueError("export with a batch of at least 2, else torch.export specialises the batch to 1")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # A failed down-conversion (opset < 18) is logged with a traceback and the model left as it was; the
    # opset check below turns that into our one-line error instead.
    logging.getLogger("onnxscript.version_converter").setLevel(logging.CRITICAL)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model,
                (example,),
                None,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; the first line says which op failed
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"ONNX export failed: {first}") from exc
    assert program is not None
    proto = program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ExportError(
            f"torch cannot export this model at opset {opset} (it gave opset {got}): "
            f"use --opset {OPSET} or newer"
        )
    return proto


def check_graph(model: onnx.ModelProto, folded: bool) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = (str(exc).strip().splitlines() or ["invalid model"])[0]
        raise ExportError(f"exported model fails the ONNX checker: {first}") from None
    if folded:
        bn = [n.name or n.op_type for n in model.graph.node if n.op_type == "BatchNormalization"]
        if bn:
            raise ExportError(f"BatchNorm folding left {len(bn)} BatchNormalization node(s), e.g. {bn[0]}")


def ort_session(model: onnx.ModelProto | bytes | str, threads: int = 0) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(payload, opts, providers=["CPUExecutionProvider"])


def ort_logits(session: object, x: NDArray[np.float32]) -> NDArray[np.float32]:
    out = session.run([OUTPUT_NAME], {INPUT_NAME: x})  # type: ignore[attr-defined]
    return np.asarray(out[0], dtype=np.float32)


def export_source(
    source: Source,
    inputs: NDArray[np.float32],
    fold: bool = True,
    opset: int = OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    log: bool = True,
) -> tuple[onnx.ModelProto, float]:
    """Fold, export, check and compare; returns the model (metadata set) and the ORT-vs-PyTorch rel error.

    The reference is the original, unfolded model: the check covers folding and export together.
    """
    say = print if log else (lambda *_a, **_k: None)
    model = source.model
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if fold:
        try:
            model = fold_batchnorm(source.model)
        except FoldError as exc:
            raise ExportError(str(exc)) from None
        say(f"  folded {n_bn} BatchNorm layer(s) into the convolutions before them")
    example = torch.from_numpy(inputs[: max(2, min(len(inputs), 4))])
    if example.shape[0] < 2:
        example = torch.cat([example, example])
    proto = to_onnx(model, example, opset)
    write(proto, source.meta)
    proto.doc_string = f"resnet-serve export of {source.meta.arch} from sha256 {source.meta.source_sha256}"
    check_graph(proto, folded=fold)
    session = ort_session(proto)
    reference = torch_logits(source.model, inputs)
    full = ort_logits(session, inputs)
    single = ort_logits(session, inputs[:1])
    rel = max(relative_error(full, reference), relative_error(single, reference[:1]))
    say(
        f"  ONNX Runtime vs PyTorch on {len(inputs)} real image(s): relative error {rel:.2e} "
        f"(tolerance {tolerance:.0e}), top-1 agreement "
        f"{np.mean(full.argmax(1) == reference.argmax(1)) * 100:.1f} %"
    )
    if not rel <= tolerance:
        raise ExportError(
            f"ONNX Runtime logits differ from PyTorch: relative error {rel:.2e} > {tolerance:.0e}"
        )
    return proto, rel


def to_fp16_checked(
    fp32: onnx.ModelProto, source: Source, inputs: NDArray[np.float32]
) -> tuple[onnx.ModelProto, float]:
    from resnet_serve.export.fp16 import Fp16Error, to_fp16

    try:
        model = to_fp16(fp32)
    except (Fp16Error, onnx.checker.ValidationError) as exc:
        raise ExportError(f"FP16 conversion failed: {str(exc).splitlines()[0]}") from None
    rel = relative_error(ort_logits(ort_session(model), inputs), torch_logits(source.model, inputs))
    print(f"  FP16 ONNX Runtime vs PyTorch: relative error {rel:.2e} (tolerance {FP16_TOLERANCE:.0e})")
    if not rel <= FP16_TOLERANCE:
        raise ExportError(f"FP16 logits differ from PyTorch: relative error {rel:.2e} > {FP16_TOLERANCE:.0e}")
    return model, rel
