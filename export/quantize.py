"""Static INT8 post-training quantization to QDQ ONNX, calibrated on real images.

`quantize` calibrates activation ranges once (minmax, entropy or percentile) and makes each requested flavour:
"trt" (symmetric signed INT8, zero points 0: TensorRT's explicit quantization) and "ort" (U8S8: ONNX Runtime's
fastest CPU kernels), weights per output channel, logits left in float, our metadata kept with the precision
updated. `write_all` writes the flavours all or nothing. The command, its flags and examples:
cli/commands/quantize.py (`resnet-serve quantize`).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper
from tqdm import tqdm

from resnet_serve.export.errors import ExportError
from resnet_serve.formats.files import atomic_path
from resnet_serve.formats.metadata import ModelMetadata, from_props, props_of, write

METHODS = ("minmax", "entropy", "percentile")
VARIANTS = ("trt", "ort")
PRECISION = {"trt": "int8-qdq-trt", "ort": "int8-qdq-ort"}
CALIBRATION_BATCH = 8
# The calibrators keep every intermediate tensor of what one collect_data call sees (~40 MB per ResNet-50
# image); feeding them this many images per call bounds memory, and their range/histogram state carries over.
IMAGES_PER_COLLECT = 16


def _calibration_reader(data: NDArray[np.float32], input_name: str) -> object:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches: Iterator[NDArray[np.float32]] = iter(
                [data[i : i + CALIBRATION_BATCH] for i in range(0, len(data), CALIBRATION_BATCH)]
            )

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def _quant_settings(variant: str) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    if variant == "trt":
        return {
            "activation_type": QuantType.QInt8,
            "weight_type": QuantType.QInt8,
            # TensorRT: symmetric INT8 only (zero point 0), and it quantizes bias itself from float.
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        }
    return {
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True},
    }


def _strip_unused_domains(model: onnx.ModelProto) -> None:
    """quant_pre_process declares every ORT domain; an engine builder should see only what the graph uses."""
    used = {n.domain for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def check_trt_compatible(model: onnx.ModelProto) -> None:
    """Every Q/DQ is INT8 with zero point 0, as TensorRT's explicit quantization requires."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or node.input[2] not in inits:
            raise ExportError(f"{node.name}: Q/DQ without a constant zero point")
        zp = numpy_helper.to_array(inits[node.input[2]])
        if zp.dtype != np.int8 or np.any(zp != 0):
            raise ExportError(f"{node.name}: zero point {zp.dtype} not all 0; TensorRT needs symmetric INT8")


# TensorRT's entropy calibration: a 2048-bin histogram searched for the 128-level threshold with the least KL
# divergence. (ORT's own default of 128/128 bins leaves a single candidate: plain min/max.)
_HISTOGRAM = {
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


def _calibrate(pre: Path, data: NDArray[np.float32], method: str, cache: Path) -> None:
    """Collect activation ranges once (saved to `cache`), so every variant quantizes from the same ranges."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    input_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
    calibrator = create_calibrator(
        pre,
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(cache.with_name("augmented.onnx")),
        calibrate_method=calibrate,
        extra_options=_HISTOGRAM.get(method, {}),
    )
    chunks = [data[i : i + IMAGES_PER_COLLECT] for i in range(0, len(data), IMAGES_PER_COLLECT)]
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
        # disable=None: no bar when stderr is not a terminal (a pipe, a CI log gets no carriage returns)
        bar = tqdm(chunks, desc="calibrating", unit="chunk", leave=False, file=sys.stderr, disable=None)
        for chunk in bar:
            calibrator.collect_data(_calibration_reader(chunk, input_name))
        save_tensors_data(calibrator.compute_data(), cache)


def _quantize_variant(pre: Path, cache: Path, variant: str, method: str, out: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    settings = _quant_settings(variant)
    # Logits stay float: clipping them to a calibrated range (entropy clips hardest) changes the ranking.
    settings["extra_options"]["OpTypesToExcludeOutputQuantization"] = ["Gemm", "MatMul"]
    # Weights get 7 bits (|q| ≤ 64). ONNX Runtime fuses the QDQ graph into QLinearConv/QGemm, whose x86
    # kernels on CPUs without VNNI (AVX2 only, e.g. AMD Zen 3) multiply u8 activations by s8 weights with
    # vpmaddubsw: each pair of products is summed into a saturating int16, and 2·255·127 = 64770 overflows
    # 32767 (int8 activations are shifted to u8 first, so both variants hit it). Measured on the digits
    # resnet20 with 8-bit weights: 3.7 % of the first conv's outputs clipped, held-out top-1 69 % (trt) and
    # 92 % (ort) against 99.4 % in FP32 and in ORT's unfused (float) run of the same QDQ graph.
    # 2·255·64 = 32640 cannot saturate, so every CPU computes what the graph says; it costs one bit of weight
    # resolution (one held-out image of 360 there) and no speed.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(pre),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,  # 7-bit weights, see above
            calibrate_method=calibrate,
            calibration_cache_path=str(cache),
            **settings,
        )
    return onnx.load(str(out))


def quantize(
    fp32: onnx.ModelProto,
    meta: ModelMetadata,
    data: NDArray[np.float32],
    variants: tuple[str, ...] = ("ort",),
    method: str = "minmax",
) -> dict[str, onnx.ModelProto]:
    """INT8 QDQ models of `fp32` calibrated on preprocessed `data`, one per variant, metadata carried over."""
    from onnxruntime.quantization import quant_pre_process

    for variant in variants:
        if variant not in VARIANTS:
            raise ExportError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if method not in METHODS:
        raise ExportError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    models: dict[str, onnx.ModelProto] = {}
    with tempfile.TemporaryDirectory(prefix="resnet-serve-quant-") as tmp:
        src, pre, cache = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "ranges.json")
        onnx.save(fp32, str(src))
        # Shape inference (symbolic, for the dynamic batch) lets the quantizer see every tensor it must cover.
        quant_pre_process(str(src), str(pre), skip_optimization=False)
        _calibrate(pre, data, method, cache)
        for variant in variants:
            quantized = _quantize_variant(pre, cache, variant, method, Path(tmp, f"{variant}.onnx"))
            models[variant] = _finish(
                quantized, fp32, meta, variant, f"{method} calibration on {len(data)} images"
            )
    return models


def _finish(
    model: onnx.ModelProto, fp32: onnx.ModelProto, meta: ModelMetadata, variant: str, how: str
) -> onnx.ModelProto:
    _strip_unused_domains(model)
    write(
        model,
        ModelMetadata(
            meta.arch, meta.labels, meta.preprocess, meta.source_sha256, meta.versions, PRECISION[variant]
        ),
    )
    model.doc_string = f"{fp32.doc_string} | INT8 QDQ ({variant}, {how})"
    if variant == "trt":
        check_trt_compatible(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"quantized model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    return model


def load_fp32(path: Path) -> tuple[onnx.ModelProto, ModelMetadata]:
    if not path.is_file():
        raise ExportError(f"no such ONNX file: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends: not an ONNX file
        raise ExportError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    meta = from_props(props_of(model), str(path))
    if meta.precision != "fp32":
        raise ExportError(
            f"{path} is already {meta.precision}; quantize the FP32 model from `resnet-serve export`"
        )
    return model, meta


VARIANT_FIELD = "{variant}"  # in --out's file name: where each variant's name goes


def output_paths(out: Path, variant: str) -> dict[str, Path]:
    """Where each variant goes: --out itself for one variant, and --out with `{variant}` replaced by each
    variant's name (trt, ort) for both. Both with an --out that holds no `{variant}` is refused: two files
    cannot honour one name."""
    variants = VARIANTS if variant == "both" else (variant,)
    if len(variants) > 1 and VARIANT_FIELD not in out.name:
        example = out.with_name(f"{out.stem}-{VARIANT_FIELD}{out.suffix or '.onnx'}")
        raise ExportError(
            f"--variant both writes two models, one per variant: put {VARIANT_FIELD} in --out's file name, "
            f"e.g. --out {example} (writes {out.stem}-trt and {out.stem}-ort), or choose one --variant"
        )
    return {v: out.with_name(out.name.replace(VARIANT_FIELD, v)) for v in variants}


def write_all(models: dict[str, onnx.ModelProto], paths: dict[str, Path]) -> list[str]:
    """Write each variant's model to its path, all or nothing: every file is written beside its destination
    first and renamed only once all are written (a folder as destination, or a failed write such as a full
    disk, leaves neither). Returns one "PATH (precision, size)" line per file."""
    written = []
    with contextlib.ExitStack() as files:
        for variant, path in paths.items():
            payload = models[variant].SerializeToString()
            files.enter_context(atomic_path(path)).write_bytes(payload)
            written.append(f"{path} ({PRECISION[variant]}, {len(payload) / 1e6:.1f} MB)")
    return written
