"""lab/grpc_floor.py end to end on a tiny model: three real servers, each checked to run the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.tiny_model import write_tiny_onnx

from lab import grpc_floor

pytestmark = pytest.mark.slow


def test_floor_measures_bare_both_minimal_servers_and_resnet_serve(tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "floor.json"
    args = ["--model", str(model), "--rounds", "1", "--slices", "1", "--slice", "0.1", "--warmup", "0.1"]
    assert grpc_floor.main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rounds"]
    for target in ("bare", "minimal-aio", "minimal-sync", "resnet-serve"):
        assert row[f"{target}_ms"] > 0
    assert set(result["median_overhead_ms"]) == {"minimal-aio", "minimal-sync", "resnet-serve"}
