"""`build-engine` without TensorRT: argument checks, precision planning per TensorRT version, profile shapes,
FP16 ONNX conversion and the one-line refusal when TensorRT is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnet_serve.cli.main import main
from resnet_serve.export import engine
from resnet_serve.export.engine import BatchProfile, EngineError, network_plan, resolve_precision
from resnet_serve.export.fp16 import Fp16Error, to_fp16
from resnet_serve.formats.files import write_bytes_atomic
from resnet_serve.formats.metadata import LABELS_KEY, PRECISION_KEY
from resnet_serve.formats.sidecar import sidecar_path
from resnet_serve.runtime.base import BackendError
from resnet_serve.runtime.tensorrt import require_tensorrt


def tiny_classifier(
    precision: str = "fp32", classes: int = 10, chans: int = 1, size: int = 8
) -> onnx.ModelProto:
    """Conv → ReLU → global pool → Gemm with our I/O names, dynamic batch and metadata."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, chans, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 0.3, (classes, 4)).astype(np.float32), "fw"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", chans, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {LABELS_KEY: '["a", "b"]', PRECISION_KEY: precision}.items():
        model.metadata_props.add(key=key, value=value)
    return model


def tensorrt_installed() -> bool:
    try:
        require_tensorrt()
    except BackendError:
        return False
    return True


# ---- profile and precision planning ----


def test_profile_shapes_put_the_batch_first() -> None:
    shapes = BatchProfile(1, 32, 128).shapes((3, 224, 224))
    assert shapes == {"min": [1, 3, 224, 224], "opt": [32, 3, 224, 224], "max": [128, 3, 224, 224]}


@pytest.mark.parametrize(("lo", "opt", "hi"), [(0, 1, 1), (4, 2, 8), (1, 16, 8), (-1, 1, 1)])
def test_profile_rejects_disordered_or_empty_batches(lo: int, opt: int, hi: int) -> None:
    with pytest.raises(EngineError, match="batch"):
        BatchProfile(lo, opt, hi)


@pytest.mark.parametrize("version", ["10.13.0.35", "11.4.1"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_strongly_typed_whenever_tensorrt_offers_it(version: str, precision: str) -> None:
    plan = network_plan(version, precision, has_strongly_typed=True)
    assert plan.strongly_typed and plan.builder_flags == ()


def test_fp32_engines_turn_tf32_off_unless_asked() -> None:
    assert network_plan("10.13.0", "fp32", has_strongly_typed=True).clear_flags == ("TF32",)
    assert network_plan("10.13.0", "fp32", has_strongly_typed=True, tf32=True).clear_flags == ()
    assert network_plan("10.13.0", "fp16", has_strongly_typed=True).clear_flags == ()


@pytest.mark.parametrize(
    ("precision", "flags"), [("fp32", ()), ("fp16", ("FP16",)), ("int8", ("INT8", "FP16"))]
)
def test_weak_typing_uses_builder_flags_on_tensorrt_10(precision: str, flags: tuple[str, ...]) -> None:
    plan = network_plan("10.8.0.43", precision, has_strongly_typed=True, weak_typing=True)
    assert not plan.strongly_typed and plan.builder_flags == flags
    # A TensorRT 10 build without the strongly typed flag falls back to the same flags on its own.
    assert network_plan("10.0.1", precision, has_strongly_typed=False).builder_flags == flags


def test_weak_typing_is_refused_on_tensorrt_11() -> None:
    with pytest.raises(EngineError, match="strongly typed networks only"):
        network_plan("11.0.0", "fp16", has_strongly_typed=True, weak_typing=True)


def test_tensorrt_older_than_10_is_refused() -> None:
    with pytest.raises(EngineError, match="TensorRT 10 or newer"):
        network_plan("8.6.1", "fp32", has_strongly_typed=False)


def test_version_parsing_tolerates_suffixes_and_rejects_garbage() -> None:
    assert engine.parse_version("10.13.0.35") == (10, 13, 0, 35)
    assert engine.parse_version("11.1.0rc2") == (11, 1, 0)
    with pytest.raises(EngineError):
        engine.parse_version("unknown")


@pytest.mark.parametrize(
    ("requested", "source", "expected"),
    [
        ("auto", "fp32", ("fp32", False)),
        ("auto", "fp16", ("fp16", False)),
        ("auto", "int8-qdq-trt", ("int8", False)),
        ("fp16", "fp32", ("fp16", True)),  # strongly typed: convert the graph to FP16 first
        ("fp32", "fp32", ("fp32", False)),
    ],
)
def test_precision_follows_the_onnx(requested: str, source: str, expected: tuple[str, bool]) -> None:
    assert resolve_precision(requested, source, strongly_typed=True) == expected


def test_weakly_typed_fp16_leaves_the_graph_fp32() -> None:
    assert resolve_precision("fp16", "fp32", strongly_typed=False) == ("fp16", False)


def test_int8_without_a_qdq_model_points_to_quantize() -> None:
    with pytest.raises(EngineError, match="resnet-serve quantize"):
        resolve_precision("int8", "fp32", strongly_typed=True)


def test_ort_flavoured_qdq_is_refused_for_tensorrt() -> None:
    with pytest.raises(EngineError, match=r"int8-qdq-ort.*quantize --variant trt"):
        resolve_precision("auto", "int8-qdq-ort", strongly_typed=True)


def test_lowering_precision_backwards_is_refused() -> None:
    with pytest.raises(EngineError, match="cannot build a fp32 engine from a fp16"):
        resolve_precision("fp32", "fp16", strongly_typed=True)


def test_model_input_reads_name_and_sample_shape() -> None:
    assert engine.model_input(tiny_classifier(chans=3, size=16)) == engine.ModelInput("input", (3, 16, 16))


def test_model_input_rejects_dynamic_image_size() -> None:
    model = tiny_classifier()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(EngineError, match="dynamic dim other than the batch"):
        engine.model_input(model)


# ---- the command ----


def _build_engine(*argv: str) -> int:
    return main(["build-engine", *argv])


def test_missing_tensorrt_is_one_line_and_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(tiny_classifier(), str(model))
    code = _build_engine(str(model), "--out", str(tmp_path / "m.plan"))
    err = capsys.readouterr().err
    if tensorrt_installed():
        pytest.skip("TensorRT is installed here; the GPU tests cover the build")
    assert code == 1
    assert (
        err.startswith("resnet-serve build-engine: error: TensorRT is not installed") and err.count("\n") == 1
    )
    assert not (tmp_path / "m.plan").exists()


def test_bad_arguments_fail_before_touching_tensorrt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(tiny_classifier(), str(model))
    assert _build_engine(str(model), "--out", "x.plan", "--min-batch", "8", "--max-batch", "4") == 1
    assert "min <= opt <= max" in capsys.readouterr().err
    assert _build_engine(str(tmp_path / "absent.onnx"), "--out", "x.plan") == 1
    assert "no such ONNX file" in capsys.readouterr().err


def test_sidecar_is_written_atomically_next_to_the_engine(tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    write_bytes_atomic(plan, b"engine")
    assert sidecar_path(plan) == tmp_path / "m.plan.json"
    assert plan.read_bytes() == b"engine"
    assert [p.name for p in tmp_path.iterdir()] == ["m.plan"]  # no temp file left behind


# ---- FP16 ONNX for strongly typed FP16 engines ----


def test_fp16_model_keeps_float32_io_and_metadata() -> None:
    converted = to_fp16(tiny_classifier())
    io = [*converted.graph.input, *converted.graph.output]
    assert {t.type.tensor_type.elem_type for t in io} == {TensorProto.FLOAT}
    assert {t.data_type for t in converted.graph.initializer} == {TensorProto.FLOAT16}
    meta = {p.key: p.value for p in converted.metadata_props}
    assert meta == {LABELS_KEY: '["a", "b"]', PRECISION_KEY: "fp16"}
    onnx.checker.check_model(converted)  # topologically sorted, unlike the raw converter output


def test_fp16_model_matches_fp32_within_half_precision() -> None:
    fp32 = tiny_classifier()
    x = np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
    cpu = ["CPUExecutionProvider"]
    ref = ort.InferenceSession(fp32.SerializeToString(), providers=cpu).run(None, {"input": x})
    out = ort.InferenceSession(to_fp16(fp32).SerializeToString(), providers=cpu).run(None, {"input": x})
    assert out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], ref[0], rtol=0, atol=2e-3 * float(np.abs(ref[0]).max()))


def test_fp16_conversion_leaves_the_input_model_alone() -> None:
    fp32 = tiny_classifier()
    before = fp32.SerializeToString()
    to_fp16(fp32)
    assert fp32.SerializeToString() == before


def test_fp16_refuses_a_model_that_is_not_fp32() -> None:
    with pytest.raises(Fp16Error, match="starts from an fp32 model"):
        to_fp16(tiny_classifier(precision="int8-qdq-trt"))


# ---- on a GPU node with TensorRT ----


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 2e-2)])
def test_built_engine_serves_like_onnx_runtime(tmp_path: Path, precision: str, tolerance: float) -> None:
    if not tensorrt_installed():
        pytest.skip("needs TensorRT")

    from resnet_serve.runtime.base import BackendError
    from resnet_serve.runtime.tensorrt import TensorRTBackend

    source = tmp_path / "tiny.onnx"
    onnx.save(tiny_classifier(chans=3, size=16), str(source))
    plan = tmp_path / f"tiny.{precision}.plan"
    cache = tmp_path / "timing.cache"
    request = engine.BuildRequest(
        source, plan, BatchProfile(1, 4, 8), precision=precision, timing_cache=cache
    )
    sidecar = engine.build(request, progress=False)
    assert sidecar.precision == precision and sidecar.strongly_typed and cache.stat().st_size > 0

    x = np.random.default_rng(7).normal(size=(19, 3, 16, 16)).astype(np.float32)  # 8 + 8 + 3
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"input": x})[0]
    backend = TensorRTBackend(plan)
    out = backend.infer({"input": x})["logits"]
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= tolerance * np.abs(ref).max()
    backend.close()

    side = sidecar_path(plan)
    fields = json.loads(side.read_text())
    side.write_text(json.dumps({**fields, "tensorrt_version": "0.0.1"}))
    with pytest.raises(BackendError, match="rebuild"):
        TensorRTBackend(plan)
