"""Folding and ONNX export of the seven torchvision ResNets keep their logits (fixture weight fill).

The fixture (tests/fixtures/torchvision-resnet) records torchvision's logits for an RNG-free weight fill and
input; folded PyTorch and ONNX Runtime must match the unfolded model (relative error ≤ 1e-4) and the golden
logits within the fixture's own tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from numpy.typing import NDArray

from resnet_serve.cli.main import main
from resnet_serve.export.onnx_export import to_onnx
from resnet_serve.formats.metadata import LABELS_KEY, PREPROCESS_KEY
from resnet_serve.formats.parity import relative_error
from resnet_serve.models import registry
from resnet_serve.models.fill import deterministic_fill, fixture_input
from resnet_serve.models.fold import fold_batchnorm

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision-resnet"
ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "resnext50_32x4d"]


def _golden(arch: str) -> NDArray[np.float64]:
    return np.asarray(json.loads((FIXTURES / f"{arch}.json").read_text())["logits"], dtype=np.float64)


def _within_fixture_tolerance(ours: NDArray[np.floating], ref: NDArray[np.floating]) -> bool:
    # The fixture README: max|ours − ref| ≤ 1e-4·max|ref| + 1e-5.
    return float(np.max(np.abs(ours - ref))) <= 1e-4 * float(np.max(np.abs(ref))) + 1e-5


def _filled(arch: str) -> torch.nn.Module:
    model = registry.build(arch, num_classes=1000)
    deterministic_fill(model)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_folded_and_onnx_runtime_logits_match_pytorch(arch: str) -> None:
    model = _filled(arch)
    x = fixture_input(2)
    with torch.inference_mode():
        ref = model(x).numpy()
        folded = fold_batchnorm(model)
        folded_logits = folded(x).numpy()
    assert relative_error(folded_logits, ref) <= 1e-4
    proto = to_onnx(folded, x)
    del folded
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"input": x.numpy()})[0]
    assert relative_error(onnx_logits, ref) <= 1e-4
    assert _within_fixture_tolerance(onnx_logits, _golden(arch))


@pytest.mark.slow
def test_export_of_torchvision_weights_matches_the_golden_logits(tmp_path: Path) -> None:
    weights = tmp_path / "resnet50-fixture.pth"
    torch.save(_filled("resnet50").state_dict(), weights)  # torchvision's .pth format: a bare state_dict
    out = tmp_path / "resnet50.onnx"
    assert (
        main(
            [
                "export",
                "--arch",
                "resnet50",
                "--weights",
                str(weights),
                "--num-classes",
                "1000",
                "--num-images",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": fixture_input(2).numpy()})[0]
    assert _within_fixture_tolerance(logits, _golden("resnet50"))
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    pre = json.loads(meta[PREPROCESS_KEY])
    assert (pre["color"], pre["resize"], pre["crop"]) == ("RGB", 256, 224)
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    assert json.loads(meta[LABELS_KEY])[:2] == ["class_0", "class_1"]
