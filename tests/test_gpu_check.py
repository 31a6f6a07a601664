"""The GPU check's judgement and report, without a GPU: parity verdicts, the ResNet-50 targets, the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lab.gpu_check.model import Model
from lab.gpu_check.parity import parity
from lab.gpu_check.report import table, targets
from lab.gpu_check.row import Row
from lab.gpu_check.settings import Settings, Skip
from lab.gpu_check.throughput import latency_stats

BATCHES = (1, 8, 32, 128)
CONCURRENCY = (1, 64)


def model(reference: np.ndarray, labels: np.ndarray | None) -> Model:
    m = Model("digits", Path("digits.pt"), np.zeros((len(reference), 1, 8, 8), np.float32), labels, None)
    m.reference, m.reference_name = reference, "onnxruntime-cpu fp32"
    return m


REF = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 2.5, 0.0]], np.float32)
LABELS = np.array([0, 1, 2, 0])


def test_fp32_passes_within_relative_error_1e_3_and_fails_beyond() -> None:
    close = Row("digits", "torch-cuda", "fp32")
    parity(close, model(REF, LABELS), REF + 3e-3)  # 3e-3 / max|ref| 4 = 7.5e-4
    assert close.parity == "pass" and close.rel_error == pytest.approx(7.5e-4, rel=1e-4)
    far = Row("digits", "torch-cuda", "fp32")
    parity(far, model(REF, LABELS), REF + 6e-3)
    assert far.parity == "FAIL"


def test_reduced_precision_is_judged_on_agreement_and_accuracy() -> None:
    same_top1 = Row("digits", "tensorrt", "int8")
    parity(same_top1, model(REF, LABELS), REF * 1.1)  # far in value, identical decisions
    assert same_top1.parity == "pass" and same_top1.top1_agreement == 1.0
    assert same_top1.accuracy == same_top1.reference_accuracy == 0.75
    flipped = REF.copy()
    flipped[0] = [0.0, 5.0, 0.0]  # the one correct answer turned wrong
    worse = Row("digits", "tensorrt", "int8")
    parity(worse, model(REF, LABELS), flipped)
    assert worse.parity == "FAIL" and worse.top1_agreement == 0.75 and worse.accuracy == 0.5


def test_without_labels_reduced_precision_is_reported_not_judged() -> None:
    row = Row("resnet50", "torch-cuda", "fp16")
    parity(row, model(REF, None), REF)
    assert row.parity == "info" and row.accuracy is None


def test_latency_stats() -> None:
    stats = latency_stats([0.01] * 99 + [0.11], images=800)
    assert stats["images_per_s"] == pytest.approx(800 / 1.1, rel=1e-3)
    assert stats["p50_ms"] == pytest.approx(10.0)
    assert 10.0 < stats["p99_ms"] <= 110.0 and stats["calls"] == 100


def torch_fp16(inproc: float, served: float | None) -> Row:
    row = Row("resnet50", "torch-cuda", "fp16")
    row.throughput = {"128": {"images_per_s": inproc, "p50_ms": 1.0, "p99_ms": 2.0}}
    if served is not None:
        row.served = {"64": {"images_per_s": served, "p50_ms": 5.0, "p99_ms": 9.0}}
    return row


def test_targets_pass_at_3000_images_and_60_percent_served() -> None:
    verdicts = targets([torch_fp16(3200, 2000)], BATCHES, CONCURRENCY)
    assert verdicts[0].endswith(": pass") and "3200 img/s" in verdicts[0]
    assert verdicts[1].endswith(": pass") and "62%" in verdicts[1]


def test_targets_fail_below_either_bar() -> None:
    slow, lagging = targets([torch_fp16(2500, 1900)], BATCHES, CONCURRENCY)
    assert slow.endswith(": FAIL") and lagging.endswith(": pass")  # 76 % of a slow backend
    verdicts = targets([torch_fp16(3500, 1800)], BATCHES, CONCURRENCY)
    assert verdicts[1].endswith(": FAIL")


def test_targets_say_why_they_were_not_measured() -> None:
    assert targets([], BATCHES, CONCURRENCY) == ["targets: not measured (no ResNet-50 PyTorch CUDA FP16 run)"]
    row = torch_fp16(3200, None)
    row.notes.append("served: the server exited (1): unknown backend 'torch'")
    assert "unknown backend 'torch'" in targets([row], BATCHES, CONCURRENCY)[1]


def test_table_has_a_column_per_batch_and_concurrency_and_dashes_for_gaps() -> None:
    skipped = Row("digits", "tensorrt", "fp16", parity="load failed: no TensorRT")
    text = table([torch_fp16(3200, 2000), skipped], BATCHES, CONCURRENCY)
    header, first, second = text.splitlines()
    for column in ("b1 img/s", "b128 img/s", "c1 img/s", "c64 img/s", "c64 p50/p99 ms"):
        assert column in header
    assert "3200" in first and "2000" in first and "5.00/9.00" in first
    assert "load failed: no TensorRT" in second and " - " in second


def test_time_budget_turns_into_a_skip() -> None:
    cfg = Settings(
        Path("out"),
        dry_run=True,
        budget_s=10,
        seconds_per_point=0.1,
        batches=(1,),
        served_seconds=1,
        served_concurrency=(1,),
        digits_bundle=None,
        resnet50=False,
    )
    cfg.require_time(5, "digits")
    with pytest.raises(Skip, match="time budget"):
        cfg.require_time(60, "resnet50")


def test_a_server_that_cannot_start_becomes_a_skip_with_its_last_words(tmp_path: Path) -> None:
    import subprocess
    import sys

    from lab.gpu_check.served import wait_ready

    log = tmp_path / "server.log"
    script = "print('starting'); print('error: unknown backend torch'); raise SystemExit(2)"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    proc.wait(timeout=60)
    with pytest.raises(Skip, match=r"server exited \(2\): error: unknown backend torch"):
        wait_ready(proc, "127.0.0.1:1", b"", timeout_s=30, log_path=log)
