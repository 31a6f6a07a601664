"""Parity of every stage of a model against its PyTorch original, on the same held-out images.

A stage is the folded PyTorch model, an ONNX file in ONNX Runtime (FP32, FP16 or INT8, told apart by their
precision metadata), the same file in OpenVINO at an inference precision (fp32 or bf16: `--openvino`), or a
TensorRT engine; each gets the max absolute and relative error of its logits
(max |x − ref| / max |ref|), its top-1 agreement with PyTorch and its accuracy where the images are labelled,
checked against the tolerance of its precision. The command, its flags and examples: cli/commands/verify.py
(`resnet-serve verify`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from resnet_serve.export.errors import ExportError
from resnet_serve.export.onnx_export import (
    ort_logits,
    ort_session,
    read_metadata,
    torch_logits,
)
from resnet_serve.export.samples import evaluation_batch
from resnet_serve.export.sources import Source
from resnet_serve.formats.metadata import ModelMetadata
from resnet_serve.formats.parity import Tolerances, relative_error

CHUNK = 32
Runner = Callable[[NDArray[np.float32]], NDArray[np.float32]]


@dataclass
class StageResult:
    stage: str
    file: str | None
    precision: str
    max_abs_error: float | None
    rel_error: float | None
    top1_agreement: float | None
    accuracy: float | None
    ok: bool
    reason: str  # the tolerance it was held to, or why it failed / was skipped


def _chunked(run: Runner, x: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.concatenate([run(x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)])


def _accuracy(logits: NDArray[np.float32], labels: NDArray[np.int64] | None) -> float | None:
    return None if labels is None else float(np.mean(logits.argmax(1) == labels))


def judge(
    stage: str,
    file: str | None,
    precision: str,
    logits: NDArray[np.float32],
    ref: NDArray[np.float32],
    labels: NDArray[np.int64] | None,
    tol: Tolerances,
) -> StageResult:
    """Compare one stage's logits with the reference and hold them to the tolerance for their precision."""
    max_abs = float(np.max(np.abs(logits.astype(np.float64) - ref)))
    rel = relative_error(logits, ref)
    agreement = float(np.mean(logits.argmax(1) == ref.argmax(1)))
    acc, ref_acc = _accuracy(logits, labels), _accuracy(ref, labels)
    if precision.startswith("int8"):
        drop = (ref_acc - acc) if acc is not None and ref_acc is not None else None
        ok = agreement >= tol.int8_agreement and (drop is None or drop <= tol.int8_acc_drop + 1e-12)
        reason = f"top-1 agreement ≥ {tol.int8_agreement:.1%}" + (
            f", accuracy drop ≤ {tol.int8_acc_drop * 100:.2g} pt (drop {drop * 100:.2f} pt)"
            if drop is not None
            else " (no labels: accuracy not checked)"
        )
    elif precision == "bf16":
        ok = rel <= tol.bf16_rel and agreement >= tol.bf16_agreement
        reason = f"relative error ≤ {tol.bf16_rel:.0e}, top-1 agreement ≥ {tol.bf16_agreement:.1%}"
    else:
        limit = tol.fp16_rel if precision == "fp16" else tol.fp32_rel
        ok = rel <= limit
        reason = f"relative error ≤ {limit:.0e}"
    return StageResult(stage, file, precision, max_abs, rel, agreement, acc, ok, reason)


def _engine_runner(path: Path) -> Runner | None:
    """The TensorRT stage's runner, or None where TensorRT is not installed (the stage is then skipped)."""
    from resnet_serve.export import engine
    from resnet_serve.runtime.base import BackendError
    from resnet_serve.runtime.tensorrt import require_tensorrt

    try:
        require_tensorrt()
    except BackendError:
        return None
    return lambda x: engine.engine_logits(path, x)


def _skipped(stage: str, path: Path, precision: str, why: str) -> StageResult:
    return StageResult(stage, str(path), precision, None, None, None, None, True, f"skipped: {why}")


def _openvino_stage(
    path: Path,
    meta: ModelMetadata,
    inference_precision: str,
    x: NDArray[np.float32],
    ref: NDArray[np.float32],
    labels: NDArray[np.int64] | None,
    tol: Tolerances,
) -> StageResult:
    """The file in OpenVINO at an explicit inference precision; skipped, saying why, where OpenVINO is not
    installed or the CPU cannot compute in that precision (OpenVINO would silently run fp32 instead)."""
    stage = f"openvino {meta.precision} @{inference_precision}"
    try:
        from resnet_serve.runtime import openvino
    except ImportError:
        return _skipped(
            stage, path, inference_precision, "openvino not installed (pip install '.[openvino]')"
        )
    if inference_precision not in openvino.supported_precisions():
        caps = ", ".join(openvino.cpu_capabilities())
        return _skipped(
            stage,
            path,
            inference_precision,
            f"this CPU has no {inference_precision.upper()} (OpenVINO: {caps})",
        )
    backend = openvino.CompiledOpenVino(
        path, openvino.OpenVinoOptions(precision=inference_precision)
    ).backend()
    name = backend.info.inputs[0].name
    logits = _chunked(lambda b: backend.infer({name: b})[backend.info.outputs[0].name], x)
    # INT8 files keep their INT8 rule whatever the precision of the layers OpenVINO leaves in float.
    rule = meta.precision if meta.precision.startswith("int8") else inference_precision
    return judge(stage, str(path), rule, logits, ref, labels, tol)


def _check_same_source(meta: ModelMetadata, source: Source | None, path: Path) -> None:
    if source is not None and meta.source_sha256 != source.meta.source_sha256:
        raise ExportError(
            f"{path} was exported from another source (sha256 {meta.source_sha256[:12]}…, "
            f"not {source.meta.source_sha256[:12]}…): export it again from this checkpoint"
        )


def verify(
    source: Source | None,
    onnx_files: list[Path],
    engines: list[Path],
    images_dir: Path | None,
    limit: int,
    tol: Tolerances,
    openvino_precisions: tuple[str, ...] = (),
) -> tuple[list[StageResult], int]:
    """Run every stage on the same images; returns the results and how many images were used."""
    metas = [(p, read_metadata(p)) for p in onnx_files]
    for p, m in metas:
        _check_same_source(m, source, p)
    if source is None and not metas:
        raise ExportError("nothing to verify: give --checkpoint (or --arch/--weights) and/or --onnx files")
    base = source.meta if source is not None else metas[0][1]
    dataset = source.dataset if source is not None else None
    x, labels = evaluation_batch(base.preprocess, dataset, images_dir, limit)
    if labels is None and source is None and images_dir is None:
        from resnet_serve.export.samples import is_digits

        if is_digits(base.labels, base.preprocess):
            x, labels = evaluation_batch(base.preprocess, "digits", None, limit)

    results: list[StageResult] = []
    if source is not None:
        from resnet_serve.models.fold import FoldError, fold_batchnorm

        ref = _chunked(lambda b: torch_logits(source.model, b), x)
        results.append(judge("pytorch", None, "fp32", ref, ref, labels, tol))
        try:
            folded = fold_batchnorm(source.model)
        except FoldError as exc:
            raise ExportError(str(exc)) from None
        results.append(
            judge(
                "pytorch folded",
                None,
                "fp32",
                _chunked(lambda b: torch_logits(folded, b), x),
                ref,
                labels,
                tol,
            )
        )
    else:
        first = ort_session(str(metas[0][0]))
        ref = _chunked(lambda b: ort_logits(first, b), x)
    for path, meta in metas:
        session = ort_session(str(path))
        logits = _chunked(lambda b, s=session: ort_logits(s, b), x)  # type: ignore[misc]
        results.append(
            judge(f"onnxruntime {meta.precision}", str(path), meta.precision, logits, ref, labels, tol)
        )
        for inference_precision in openvino_precisions:
            results.append(_openvino_stage(path, meta, inference_precision, x, ref, labels, tol))
    for path in engines:
        runner = _engine_runner(path)
        if runner is None:
            results.append(
                StageResult(
                    "tensorrt",
                    str(path),
                    "?",
                    None,
                    None,
                    None,
                    None,
                    True,
                    "skipped: TensorRT not available here",
                )
            )
            continue
        results.append(
            judge(
                "tensorrt",
                str(path),
                "engine",
                _chunked(runner, x),
                ref,
                labels,
                Tolerances(fp32_rel=tol.fp16_rel, int8_agreement=tol.int8_agreement),
            )
        )
    return results, len(x)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: list[StageResult], n: int) -> None:
    print(f"{n} images; reference: {results[0].stage if results else '-'}")
    print(f"{'stage':<30}{'max abs':>10}{'rel err':>10}{'top-1 agr':>11}{'accuracy':>10}  result")
    for r in results:
        verdict = "ok" if r.ok else "FAIL"
        print(
            f"{r.stage:<30}{_fmt(r.max_abs_error, '.2e'):>10}{_fmt(r.rel_error, '.2e'):>10}"
            f"{_fmt(None if r.top1_agreement is None else r.top1_agreement * 100, '.2f'):>10}%"
            f"{_fmt(None if r.accuracy is None else r.accuracy * 100, '.2f'):>9}%  {verdict} ({r.reason})"
        )
