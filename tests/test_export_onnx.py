"""`resnet-serve export`: one self-contained, checked ONNX file with our metadata, or a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from support.cli import assert_one_line_error

from resnet_serve.cli.main import main
from resnet_serve.export.onnx_export import read_metadata
from resnet_serve.formats.metadata import LABELS_KEY
from resnet_serve.models import registry
from resnet_serve.models.checkpoint import save_checkpoint
from resnet_serve.training.data import DIGITS_PREPROCESS


def _digits_checkpoint(path: Path, arch: str = "resnet20", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = registry.build(arch, num_classes=10, in_chans=1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(
        path,
        {
            "format": "resnet-serve/1",
            "arch": arch,
            "model_config": {"num_classes": 10, "in_chans": 1},
            "state_dict": model.state_dict(),
            "labels": [str(d) for d in range(10)],
            "preprocess": {**DIGITS_PREPROCESS, "mean": [0.2], "std": [0.3]},
            "dataset": "digits",
            "epoch": 0,
            "metrics": {},
        },
    )
    return path


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("export")
    ckpt = _digits_checkpoint(tmp / "model.pt")
    out = tmp / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return ckpt, out


def test_export_writes_one_checked_file_with_named_dynamic_io(digits_onnx: tuple[Path, Path]) -> None:
    _, out = digits_onnx
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.pt"]  # no external data
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]


def test_export_metadata_describes_the_checkpoint(digits_onnx: tuple[Path, Path]) -> None:
    import hashlib

    ckpt, out = digits_onnx
    meta = read_metadata(out)
    assert meta.arch == "resnet20"
    assert meta.labels == [str(d) for d in range(10)]
    assert meta.preprocess["color"] == "L" and meta.preprocess["crop"] == 32
    assert meta.preprocess["mean"] == [0.2]
    assert meta.source_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta.precision == "fp32"
    assert {"torch", "onnx", "onnxruntime", "resnet-serve"} <= meta.versions.keys()
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props[LABELS_KEY]) == meta.labels


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_exported_digits_model_matches_pytorch_at_any_batch(
    digits_onnx: tuple[Path, Path], batch: int
) -> None:
    from resnet_serve.models.checkpoint import load_model

    ckpt, out = digits_onnx
    model, _ = load_model(ckpt)
    x = np.random.default_rng(batch).standard_normal((batch, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]
    assert got.shape == (batch, 10)
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4


def test_export_of_a_missing_checkpoint_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    rc = main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)])
    assert_one_line_error(capsys, rc, out, "nope.pt")


def test_export_of_a_checkpoint_for_another_arch_is_a_one_line_error(
    digits_onnx: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = digits_onnx
    out = tmp_path / "m.onnx"
    rc = main(["export", "--checkpoint", str(ckpt), "--arch", "resnet56", "--out", str(out)])
    assert_one_line_error(capsys, rc, out, "resnet20")


def test_export_of_weights_for_another_arch_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "r18.pth"
    torch.save(registry.build("resnet18", num_classes=4).state_dict(), weights)
    out = tmp_path / "m.onnx"
    rc = main(["export", "--arch", "resnet34", "--weights", str(weights), "--out", str(out)])
    assert_one_line_error(capsys, rc, out, "do not match --arch resnet34")


def test_export_of_a_file_that_is_not_a_state_dict_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "junk.pth"
    weights.write_bytes(b"not a zip file")
    out = tmp_path / "m.onnx"
    rc = main(["export", "--arch", "resnet18", "--weights", str(weights), "--out", str(out)])
    assert_one_line_error(capsys, rc, out, "junk.pth")


def test_export_at_an_opset_torch_cannot_reach_is_a_one_line_error(
    digits_onnx: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = digits_onnx
    out = tmp_path / "m.onnx"
    rc = main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--opset", "17", "--num-images", "2"])
    assert_one_line_error(capsys, rc, out, "opset 17")


def test_export_to_an_unwritable_path_is_a_one_line_error(
    digits_onnx: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = digits_onnx
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "m.onnx"  # its "folder" is a file
    rc = main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--num-images", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and str(out) in err
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_fp16_export_keeps_float32_io_and_records_its_precision(
    digits_onnx: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, _ = digits_onnx
    out = tmp_path / "fp16.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--precision", "fp16", "--out", str(out)]) == 0
    assert read_metadata(out).precision == "fp16"
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
