"""The TensorRT backend's checks that need no GPU: sidecar handling, refusal of a mismatched engine before
TensorRT sees it, and the split of batches into profile-sized runs."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from export.engine import EngineError, Sidecar, require_tensorrt
from server.backends.base import BackendError
from server.backends.tensorrt import (
    Chunk,
    TensorRTBackend,
    check_compatible,
    load_checked,
    plan_chunks,
    read_sidecar,
)

TRT = "10.13.0.35"
H100 = ("NVIDIA H100 80GB HBM3", "9.0")


def write_engine(tmp_path: Path, data: bytes = b"serialized plan", **changes: object) -> Path:
    """An engine file and the sidecar `build-engine` would write for it (built on an H100, TensorRT 10.13)."""
    plan = tmp_path / "model.plan"
    plan.write_bytes(data)
    sidecar = Sidecar(
        tensorrt_version=TRT,
        gpu_name=H100[0],
        compute_capability=H100[1],
        precision="fp16",
        input_name="input",
        profile={"min": [1, 3, 224, 224], "opt": [32, 3, 224, 224], "max": [128, 3, 224, 224]},
        source_onnx="models/resnet50.onnx",
        source_sha256="0" * 64,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        built_at="2026-11-27T10:00:00+00:00",
        build_seconds=61.5,
        strongly_typed=True,
        builder_flags=[],
        workspace_bytes=4 << 30,
        metadata={"resnet_serve.labels": '["cat", "dog"]', "resnet_serve.precision": "fp16"},
    )
    plan.with_name("model.plan.json").write_text(replace(sidecar, **changes).to_json())  # type: ignore[arg-type]
    return plan


def test_sidecar_written_by_build_engine_reads_back(tmp_path: Path) -> None:
    sidecar = read_sidecar(write_engine(tmp_path))
    assert sidecar.tensorrt_version == TRT
    assert (sidecar.min_shape, sidecar.max_shape) == ((1, 3, 224, 224), (128, 3, 224, 224))
    assert sidecar.metadata["resnet_serve.labels"] == '["cat", "dog"]'
    assert sidecar.source_onnx == "models/resnet50.onnx"


def test_matching_engine_loads_its_bytes(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    sidecar, data = load_checked(plan, tensorrt_version=TRT, compute_capability="9.0", gpu_name=H100[0])
    assert data == b"serialized plan" and sidecar.precision == "fp16"


def test_other_tensorrt_version_is_refused_with_a_rebuild_command(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    with pytest.raises(BackendError) as err:
        load_checked(plan, tensorrt_version="11.2.0.1", compute_capability="9.0", gpu_name=H100[0])
    message = str(err.value)
    assert "TensorRT 10.13.0.35" in message and "TensorRT 11.2.0.1" in message
    assert f"resnet-serve build-engine models/resnet50.onnx --out {plan}" in message


def test_other_gpu_architecture_is_refused(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    with pytest.raises(BackendError, match=r"compute capability 9\.0.*NVIDIA A10G.*8\.6.*rebuild"):
        load_checked(plan, tensorrt_version=TRT, compute_capability="8.6", gpu_name="NVIDIA A10G")


def test_same_architecture_other_model_is_accepted(tmp_path: Path) -> None:
    # TensorRT runs a plan on any GPU of the same compute capability (it only warns): H100 PCIe vs SXM.
    plan = write_engine(tmp_path)
    load_checked(plan, tensorrt_version=TRT, compute_capability="9.0", gpu_name="NVIDIA H100 PCIe")


def test_engine_replaced_after_its_sidecar_is_refused(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    plan.write_bytes(b"another build")
    with pytest.raises(BackendError, match="does not describe"):
        load_checked(plan, tensorrt_version=TRT, compute_capability="9.0", gpu_name=H100[0])


def test_missing_sidecar_asks_for_a_rebuild(tmp_path: Path) -> None:
    plan = tmp_path / "bare.plan"
    plan.write_bytes(b"x")
    with pytest.raises(BackendError, match=r"no sidecar bare\.plan\.json.*build-engine"):
        read_sidecar(plan)


@pytest.mark.parametrize(
    "content",
    ["not json", json.dumps({"format": "other/1"}), json.dumps({"format": "resnet-serve-engine/1"}), "[]"],
)
def test_foreign_or_incomplete_sidecar_is_refused(tmp_path: Path, content: str) -> None:
    plan = write_engine(tmp_path)
    plan.with_name("model.plan.json").write_text(content)
    with pytest.raises(BackendError, match=r"model\.plan\.json"):
        read_sidecar(plan)


def test_backend_refuses_cleanly_without_tensorrt(tmp_path: Path) -> None:
    try:
        require_tensorrt()
        pytest.skip("TensorRT is installed; the GPU tests cover loading")
    except EngineError:
        pass
    with pytest.raises(BackendError, match="needs TensorRT"):
        TensorRTBackend(write_engine(tmp_path))


def test_backend_checks_the_sidecar_before_anything_else(tmp_path: Path) -> None:
    plan = tmp_path / "bare.plan"
    plan.write_bytes(b"x")
    with pytest.raises(BackendError, match="no sidecar"):
        TensorRTBackend(plan)


def test_check_compatible_names_both_gpus(tmp_path: Path) -> None:
    sidecar = read_sidecar(write_engine(tmp_path))
    with pytest.raises(BackendError, match=r"NVIDIA H100 80GB HBM3.*NVIDIA L4"):
        check_compatible(
            sidecar, engine=tmp_path / "model.plan", tensorrt_version=TRT, compute_capability="8.9",
            gpu_name="NVIDIA L4",
        )


# ---- batches larger than the profile ----


def test_oversized_batch_is_split_into_profile_sized_runs() -> None:
    assert plan_chunks(300, 1, 128) == [Chunk(0, 128, 128), Chunk(128, 256, 128), Chunk(256, 300, 44)]


def test_batch_below_the_profile_minimum_is_padded() -> None:
    assert plan_chunks(3, 8, 64) == [Chunk(0, 3, 8)]
    assert plan_chunks(70, 8, 64) == [Chunk(0, 64, 64), Chunk(64, 70, 8)]


@pytest.mark.parametrize(("batch", "lo", "hi"), [(0, 1, 8), (4, 0, 8), (4, 9, 8)])
def test_impossible_plans_are_errors(batch: int, lo: int, hi: int) -> None:
    with pytest.raises(BackendError):
        plan_chunks(batch, lo, hi)


@given(batch=st.integers(1, 1000), lo=st.integers(1, 16), extra=st.integers(0, 200))
def test_chunks_cover_every_row_once_within_the_profile(batch: int, lo: int, extra: int) -> None:
    hi = lo + extra
    chunks = plan_chunks(batch, lo, hi)
    assert chunks[0].start == 0 and chunks[-1].stop == batch
    assert all(a.stop == b.start for a, b in itertools.pairwise(chunks))
    assert all(lo <= c.run_size <= hi and c.run_size >= c.stop - c.start for c in chunks)
    assert len(chunks) == -(-batch // hi)
