"""INT8 on the digits model: top-1 drop ≤ 0.5 pt, TensorRT-compatible QDQ, metadata kept; `verify` gates it.

The model is quickly trained here (four epochs of AdamW with a one-cycle schedule bring resnet20 to ~99 % on
the held-out split): INT8 accuracy needs a model with real margins, not a half-trained one. It is cached in
pytest's cache between runs when the cache plugin is on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from support.cli import assert_one_line_error

from resnet_serve.cli.main import main
from resnet_serve.export.onnx_export import read_metadata
from resnet_serve.export.quantize import check_trt_compatible
from resnet_serve.export.samples import digits_held_out
from resnet_serve.formats.preprocess import normalize_array
from resnet_serve.models import registry
from resnet_serve.models.checkpoint import FORMAT, load_model, save_checkpoint
from resnet_serve.models.errors import ModelsError
from resnet_serve.training.data import load_digits_split

EPOCHS = 4
BATCH = 64


def train_digits(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    split = load_digits_split()
    pre = split.preprocess
    x = torch.from_numpy(normalize_array(split.train_pixels.numpy(), pre))
    y = split.train_labels
    model = registry.build("resnet20", num_classes=10, in_chans=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * -(-len(x) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
    save_checkpoint(
        path,
        {
            "format": FORMAT,
            "arch": "resnet20",
            "model_config": {"num_classes": 10, "in_chans": 1},
            "state_dict": model.state_dict(),
            "labels": split.classes,
            "preprocess": pre,
            "train_config": {"dataset": "digits"},
            "epoch": EPOCHS,
            "metrics": {},
        },
    )
    return path


def cached_digits_checkpoint(request: pytest.FixtureRequest, tmp: Path) -> Path:
    """The trained checkpoint from pytest's cache when it still loads, else freshly trained (~20 s idle)."""
    # `cache` is set by pytest's cacheprovider plugin; with `-p no:cacheprovider` the attribute is absent.
    cache: pytest.Cache | None = getattr(request.config, "cache", None)
    folder = cache.mkdir("resnet-serve-export-digits") if cache is not None else tmp
    path = folder / f"resnet20-e{EPOCHS}-torch{torch.__version__}.pt"
    if path.exists():
        try:
            load_model(path)
            return path
        except ModelsError:
            path.unlink()
    return train_digits(path)


@pytest.fixture(scope="module")
def digits_models(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("int8")
    ckpt = cached_digits_checkpoint(request, tmp)
    fp32 = tmp / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(fp32)]) == 0
    assert main(["quantize", str(fp32), "--variant", "both", "--out", str(tmp / "int8-{variant}.onnx")]) == 0
    return {"checkpoint": ckpt, "fp32": fp32, "trt": tmp / "int8-trt.onnx", "ort": tmp / "int8-ort.onnx"}


def _held_out_accuracy(path: Path) -> float:
    meta = read_metadata(path)
    x, labels = digits_held_out(meta.preprocess)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x})[0]
    return float(np.mean(logits.argmax(1) == labels))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["trt", "ort"])
def test_int8_loses_at_most_half_a_point_of_held_out_accuracy(
    digits_models: dict[str, Path], variant: str
) -> None:
    fp32_acc = _held_out_accuracy(digits_models["fp32"])
    assert fp32_acc >= 0.95  # a model worth quantizing; otherwise the drop below says little
    assert fp32_acc - _held_out_accuracy(digits_models[variant]) <= 0.005


@pytest.mark.slow
def test_trt_variant_is_symmetric_int8_and_ort_variant_uses_uint8_activations(
    digits_models: dict[str, Path],
) -> None:
    trt = onnx.load(str(digits_models["trt"]))
    check_trt_compatible(trt)  # raises on any non-INT8 or non-zero zero point
    assert any(n.op_type == "QuantizeLinear" for n in trt.graph.node)
    ort_model = onnx.load(str(digits_models["ort"]))
    inits = {i.name: numpy_helper.to_array(i) for i in ort_model.graph.initializer}
    q_zero_points = {inits[n.input[2]].dtype for n in ort_model.graph.node if n.op_type == "QuantizeLinear"}
    assert q_zero_points == {np.dtype(np.uint8)}


# ONNX Runtime's x86 INT8 kernels on CPUs without VNNI (AVX2 only) add each pair of u8·s8 products into a
# saturating int16 (vpmaddubsw); int8 activations are shifted to u8 first. 2·255·|w|max must fit in 32767.
INT16_MAX = 32767


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["trt", "ort"])
def test_int8_weights_leave_every_cpu_kernel_int16_headroom(
    digits_models: dict[str, Path], variant: str
) -> None:
    model = onnx.load(str(digits_models[variant]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = [
        inits[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
    ]
    assert weights  # every Conv and the Gemm
    worst = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert 2 * 255 * worst <= INT16_MAX


def _logits(path: Path, level: ort.GraphOptimizationLevel) -> np.ndarray:
    x, _ = digits_held_out(read_metadata(path).preprocess)
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"input": x})[0])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["trt", "ort"])
def test_int8_fused_kernels_compute_what_the_qdq_graph_says(
    digits_models: dict[str, Path], variant: str
) -> None:
    # Unfused, ORT runs the QDQ graph in float: the reference. Fused (QLinearConv, QGemm) it runs this CPU's
    # integer kernels; with 8-bit weights an AVX2 CPU agreed on 69 % (trt) / 92 % (ort) of the images.
    path = digits_models[variant]
    reference = _logits(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    fused = _logits(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert np.mean(fused.argmax(1) == reference.argmax(1)) >= 0.99
    assert np.abs(fused - reference).max() <= 0.1 * np.abs(reference).max()


@pytest.mark.slow
def test_quantized_models_keep_the_metadata_and_record_their_precision(
    digits_models: dict[str, Path],
) -> None:
    fp32 = read_metadata(digits_models["fp32"])
    for variant, precision in (("trt", "int8-qdq-trt"), ("ort", "int8-qdq-ort")):
        meta = read_metadata(digits_models[variant])
        assert meta.precision == precision
        assert (meta.arch, meta.labels, meta.preprocess, meta.source_sha256) == (
            fp32.arch,
            fp32.labels,
            fp32.preprocess,
            fp32.source_sha256,
        )


@pytest.mark.slow
def test_verify_reports_every_stage_and_passes_within_tolerance(
    digits_models: dict[str, Path], tmp_path: Path
) -> None:
    report = tmp_path / "verify.json"
    m = digits_models
    rc = main(
        [
            "verify",
            "--checkpoint",
            str(m["checkpoint"]),
            "--onnx",
            str(m["fp32"]),
            "--onnx",
            str(m["trt"]),
            "--onnx",
            str(m["ort"]),
            "--json",
            str(report),
        ]
    )
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["ok"] and data["images"] == 360
    stages = {s["stage"]: s for s in data["stages"]}
    assert set(stages) == {
        "pytorch",
        "pytorch folded",
        "onnxruntime fp32",
        "onnxruntime int8-qdq-trt",
        "onnxruntime int8-qdq-ort",
    }
    assert stages["onnxruntime fp32"]["rel_error"] <= 1e-4
    assert stages["pytorch folded"]["rel_error"] <= 1e-4


@pytest.mark.slow
def test_verify_exits_non_zero_when_a_stage_breaks_its_tolerance(
    digits_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # No INT8 model agrees with FP32 on more than 100 % of the images: the gate must trip.
    m = digits_models
    rc = main(
        ["verify", "--checkpoint", str(m["checkpoint"]), "--onnx", str(m["ort"]), "--int8-agreement", "1.01"]
    )
    assert rc == 1
    assert "FAILED: onnxruntime int8-qdq-ort" in capsys.readouterr().err


@pytest.mark.slow
def test_quantize_with_an_image_folder_holding_no_images_is_a_one_line_error(
    digits_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "q.onnx"
    rc = main(["quantize", str(digits_models["fp32"]), "--images", str(empty), "--out", str(out)])
    assert_one_line_error(capsys, rc, out, "no images")


@pytest.mark.slow
def test_quantize_both_writes_neither_file_when_one_cannot_be_written(
    digits_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "q-ort.onnx").mkdir()  # the second destination is a folder: its rename fails
    out = tmp_path / "q-{variant}.onnx"
    rc = main(["quantize", str(digits_models["fp32"]), "--variant", "both", "--out", str(out)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after calibration's progress bar
    assert rc != 0 and last.startswith("resnet-serve quantize: error:") and "q-ort.onnx" in last
    assert (tmp_path / "q-ort.onnx").is_dir() and not list((tmp_path / "q-ort.onnx").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q-ort.onnx"]  # no temporary files left either


@pytest.mark.slow
def test_quantize_both_leaves_neither_file_when_a_write_fails(
    digits_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resnet_serve.formats.files import atomic_path as real

    @contextlib.contextmanager
    def disk_full_for_the_second(path: Path) -> Iterator[Path]:
        if path.name.endswith("-ort.onnx"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        with real(path) as tmp:
            yield tmp

    monkeypatch.setattr("resnet_serve.export.quantize.atomic_path", disk_full_for_the_second)
    out = tmp_path / "q-{variant}.onnx"
    rc = main(["quantize", str(digits_models["fp32"]), "--variant", "both", "--out", str(out)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc != 0 and "No space left" in last
    assert list(tmp_path.iterdir()) == []


def test_quantize_both_honours_out_through_its_variant_field_or_refuses_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resnet_serve.export.quantize import output_paths

    assert output_paths(tmp_path / "m.int8.onnx", "ort") == {"ort": tmp_path / "m.int8.onnx"}
    assert output_paths(tmp_path / "m-{variant}.onnx", "both") == {
        "trt": tmp_path / "m-trt.onnx",
        "ort": tmp_path / "m-ort.onnx",
    }
    missing = tmp_path / "missing.onnx"  # not even read: the combination is refused first
    rc = main(["quantize", str(missing), "--variant", "both", "--out", str(tmp_path / "m.int8.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "\n" not in err
    assert err.startswith("resnet-serve quantize: error: --variant both writes two models")
    assert "m.int8-{variant}.onnx" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quantize_writes_no_carriage_returns_into_a_pipe(
    digits_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "q.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "resnet_serve", "quantize", str(digits_models["fp32"]), "--out", str(out),
         "--num-calibration", "64"],
        capture_output=True, text=False, timeout=600, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stderr and b"\r" not in done.stdout
    assert out.is_file()


def _foreign_onnx(path: Path) -> Path:
    """A valid ONNX model from 'another tool': no resnet_serve metadata."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_quantize_of_an_onnx_without_our_metadata_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q.onnx"
    rc = main(["quantize", str(_foreign_onnx(tmp_path / "other.onnx")), "--out", str(out)])
    assert_one_line_error(capsys, rc, out, "no resnet_serve metadata")


def test_quantize_and_verify_of_a_missing_file_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q.onnx"
    assert_one_line_error(
        capsys, main(["quantize", str(tmp_path / "nope.onnx"), "--out", str(out)]), out, "nope.onnx"
    )
    report = tmp_path / "v.json"
    assert_one_line_error(
        capsys,
        main(["verify", "--onnx", str(tmp_path / "nope.onnx"), "--json", str(report)]),
        report,
        "nope.onnx",
    )


def test_verify_of_an_onnx_without_our_metadata_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "v.json"
    rc = main(["verify", "--onnx", str(_foreign_onnx(tmp_path / "other.onnx")), "--json", str(report)])
    assert_one_line_error(capsys, rc, report, "no resnet_serve metadata")
