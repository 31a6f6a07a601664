"""`resnet-serve verify --openvino`: the same ONNX file in OpenVINO at an explicit inference precision, held
to that precision's tolerance; bf16 is measured where the CPU computes in it and reported as skipped, with
the reason, where it does not (never judged on the f32 that OpenVINO would silently run instead)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.runtimes import OPENVINO_MISSING

from resnet_serve.cli.main import main
from resnet_serve.export.verify import judge
from resnet_serve.formats.parity import Tolerances


def logits_pair(rel: float, flips: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reference of 100 rows with a clear winner each, and a copy off by `rel` of the scale with `flips`
    rows whose winner changes."""
    ref = np.zeros((100, 10), np.float32)
    ref[np.arange(100), np.arange(100) % 10] = 10.0
    got = ref + np.float32(rel * 10.0)
    for i in range(flips):
        got[i, (i + 1) % 10] = 20.0
    return got, ref


def test_bf16_is_held_to_its_relative_error_and_top1_agreement() -> None:
    tol = Tolerances()
    ok = judge("openvino fp32 @bf16", None, "bf16", *logits_pair(5e-3), None, tol)
    assert ok.ok and ok.rel_error == pytest.approx(5e-3, rel=1e-4) and ok.top1_agreement == 1.0
    assert "relative error ≤ 1e-02, top-1 agreement ≥ 99.0%" in ok.reason
    assert not judge("s", None, "bf16", *logits_pair(2e-2), None, tol).ok
    flipped = judge("s", None, "bf16", *logits_pair(0.0, flips=2), None, Tolerances(bf16_rel=10.0))
    assert flipped.top1_agreement == pytest.approx(0.98) and not flipped.ok


@pytest.mark.skipif(OPENVINO_MISSING, reason="openvino not installed: pip install '.[openvino]'")
def test_verify_runs_the_file_in_openvino_and_says_when_the_cpu_has_no_bf16(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    from resnet_serve.runtime import openvino

    report = tmp_path / "verify.json"
    rc = main(["verify", "--onnx", str(tiny_onnx), "--openvino", "fp32", "--openvino", "bf16",
               "--num-images", "8", "--json", str(report)])  # fmt: skip
    assert rc == 0
    stages = {s["stage"]: s for s in json.loads(report.read_text())["stages"]}
    assert set(stages) == {"onnxruntime fp32", "openvino fp32 @fp32", "openvino fp32 @bf16"}
    fp32 = stages["openvino fp32 @fp32"]
    assert fp32["ok"] and fp32["rel_error"] < 1e-5 and fp32["top1_agreement"] == 1.0
    bf16 = stages["openvino fp32 @bf16"]
    if "bf16" in openvino.supported_precisions():
        assert bf16["rel_error"] is not None and bf16["precision"] == "bf16"
    else:
        assert bf16["rel_error"] is None  # not measured on f32 passed off as bf16
        # The capability list is the CPU plugin's own, in its own order (an Intel Xeon lists WINOGRAD first):
        # the reason names exactly what this CPU offers, whatever that is.
        caps = ", ".join(openvino.cpu_capabilities())
        assert bf16["reason"] == f"skipped: this CPU has no BF16 (OpenVINO: {caps})"
        assert "BF16" not in caps


# What the CPU plugin reports on the CPUs without BF16 seen on this machine kind (environment notes).
CPUS_WITHOUT_BF16 = {
    "intel-xeon-avx512-vnni": ["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"],
    "amd-epyc-zen3-avx2": ["FP32", "INT8", "BIN", "EXPORT_IMPORT"],
}


@pytest.mark.skipif(OPENVINO_MISSING, reason="openvino not installed: pip install '.[openvino]'")
@pytest.mark.parametrize("cpu", sorted(CPUS_WITHOUT_BF16))
def test_verify_skips_bf16_naming_the_cpus_own_capabilities_on_a_cpu_without_it(
    cpu: str, tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The skip branch runs on every machine, whatever its own CPU offers (a BF16 CPU never reaches it)."""
    from resnet_serve.runtime import openvino

    caps = CPUS_WITHOUT_BF16[cpu]
    monkeypatch.setattr(openvino, "cpu_capabilities", lambda: list(caps))
    report = tmp_path / "verify.json"
    rc = main(["verify", "--onnx", str(tiny_onnx), "--openvino", "bf16",
               "--num-images", "8", "--json", str(report)])  # fmt: skip
    assert rc == 0
    stage = {s["stage"]: s for s in json.loads(report.read_text())["stages"]}["openvino fp32 @bf16"]
    assert stage["rel_error"] is None
    assert stage["reason"] == f"skipped: this CPU has no BF16 (OpenVINO: {', '.join(caps)})"


def test_openvino_stages_need_onnx_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["verify", "--openvino", "bf16", "--checkpoint", str(tmp_path / "none.pt")])
    assert rc != 0
    assert "--openvino runs the --onnx files" in capsys.readouterr().err
