"""The TensorRT backend's checks that need no GPU: sidecar handling, refusal of a mismatched engine before
TensorRT sees it, and the split of batches into profile-sized runs."""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import sys
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resnet_serve.formats.errors import SidecarError
from resnet_serve.formats.metadata import LABELS_KEY, PRECISION_KEY
from resnet_serve.formats.sidecar import EngineSidecar, check_compatible, load_checked, read_sidecar
from resnet_serve.runtime import tensorrt as trt_backend
from resnet_serve.runtime.base import BackendError
from resnet_serve.runtime.tensorrt import Chunk, TensorRTBackend, plan_chunks, require_tensorrt

TRT = "10.13.0.35"
H100 = ("NVIDIA H100 80GB HBM3", "9.0")


def write_engine(tmp_path: Path, data: bytes = b"serialized plan", **changes: object) -> Path:
    """An engine file and the sidecar `build-engine` would write for it (built on an H100, TensorRT 10.13)."""
    plan = tmp_path / "model.plan"
    plan.write_bytes(data)
    sidecar = EngineSidecar(
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
        metadata={LABELS_KEY: '["cat", "dog"]', PRECISION_KEY: "fp16"},
    )
    plan.with_name("model.plan.json").write_text(replace(sidecar, **changes).to_json())  # type: ignore[arg-type]
    return plan


def test_sidecar_written_by_build_engine_reads_back(tmp_path: Path) -> None:
    sidecar = read_sidecar(write_engine(tmp_path))
    assert sidecar.tensorrt_version == TRT
    assert (sidecar.min_shape, sidecar.max_shape) == ((1, 3, 224, 224), (128, 3, 224, 224))
    assert sidecar.metadata[LABELS_KEY] == '["cat", "dog"]'
    assert sidecar.source_onnx == "models/resnet50.onnx"


def test_matching_engine_loads_its_bytes(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    sidecar, data = load_checked(plan, tensorrt_version=TRT, compute_capability="9.0", gpu_name=H100[0])
    assert data == b"serialized plan" and sidecar.precision == "fp16"


def test_other_tensorrt_version_is_refused_with_a_rebuild_command(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    with pytest.raises(SidecarError) as err:
        load_checked(plan, tensorrt_version="11.2.0.1", compute_capability="9.0", gpu_name=H100[0])
    message = str(err.value)
    assert "TensorRT 10.13.0.35" in message and "TensorRT 11.2.0.1" in message
    assert f"resnet-serve build-engine models/resnet50.onnx --out {plan}" in message


def test_other_gpu_architecture_is_refused(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    with pytest.raises(SidecarError, match=r"compute capability 9\.0.*NVIDIA A10G.*8\.6.*rebuild"):
        load_checked(plan, tensorrt_version=TRT, compute_capability="8.6", gpu_name="NVIDIA A10G")


def test_same_architecture_other_model_is_accepted(tmp_path: Path) -> None:
    # TensorRT runs a plan on any GPU of the same compute capability (it only warns): H100 PCIe vs SXM.
    plan = write_engine(tmp_path)
    load_checked(plan, tensorrt_version=TRT, compute_capability="9.0", gpu_name="NVIDIA H100 PCIe")


def test_engine_replaced_after_its_sidecar_is_refused(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    plan.write_bytes(b"another build")
    with pytest.raises(SidecarError, match="does not describe"):
        load_checked(plan, tensorrt_version=TRT, compute_capability="9.0", gpu_name=H100[0])


def test_missing_sidecar_asks_for_a_rebuild(tmp_path: Path) -> None:
    plan = tmp_path / "bare.plan"
    plan.write_bytes(b"x")
    with pytest.raises(SidecarError, match=r"no sidecar bare\.plan\.json.*build-engine"):
        read_sidecar(plan)


@pytest.mark.parametrize(
    "content",
    ["not json", json.dumps({"format": "other/1"}), json.dumps({"format": "resnet-serve-engine/1"}), "[]"],
)
def test_foreign_or_incomplete_sidecar_is_refused(tmp_path: Path, content: str) -> None:
    plan = write_engine(tmp_path)
    plan.with_name("model.plan.json").write_text(content)
    with pytest.raises(SidecarError, match=r"model\.plan\.json"):
        read_sidecar(plan)


def test_backend_refuses_cleanly_without_tensorrt(tmp_path: Path) -> None:
    try:
        require_tensorrt()
        pytest.skip("TensorRT is installed; the GPU tests cover loading")
    except BackendError:
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
    with pytest.raises(SidecarError, match=r"NVIDIA H100 80GB HBM3.*NVIDIA L4"):
        check_compatible(
            sidecar,
            engine=tmp_path / "model.plan",
            tensorrt_version=TRT,
            compute_capability="8.9",
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


# ---- the buffer and stream logic, against a fake TensorRT and CUDA runtime ----
# TensorRT and a GPU are absent here; these fakes follow the real APIs' call shapes (tuples of (error,
# value) from cuda-python, name-based tensors in TensorRT 10/11) so the backend's own arithmetic —
# buffer sizes, pointer copies, padding, splitting, freeing — runs for real. The GPU tests cover the rest.


class FakeCudart:
    class cudaMemcpyKind:  # cuda-python's names
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.live: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.copies: list[int] = []

    def _alloc(self, nbytes: int) -> tuple[int, int]:
        buf = ctypes.create_string_buffer(nbytes)
        self.live[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def _free(self, ptr: int) -> tuple[int]:
        del self.live[ptr]
        return (0,)

    cudaMalloc = cudaMallocHost = _alloc
    cudaFree = cudaFreeHost = _free

    def cudaSetDevice(self, device: int) -> tuple[int]:
        return (0,)

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, Any]:
        return 0, types.SimpleNamespace(name=b"NVIDIA H100 80GB HBM3\x00\x00", major=9, minor=0)

    def cudaStreamCreate(self) -> tuple[int, int]:
        return 0, 77

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: int, stream: int) -> tuple[int]:
        assert stream == 77
        ctypes.memmove(dst, src, count)
        self.copies.append(count)
        return (0,)

    def cudaGetErrorString(self, err: int) -> tuple[int, bytes]:
        return 0, b"fake error"


WEIGHTS = np.random.default_rng(5).normal(size=(3 * 2 * 2, 4)).astype(np.float32)


def fake_tensorrt(profile: tuple[int, int]) -> types.ModuleType:
    """An engine computing logits = flatten(input) @ WEIGHTS for batch sizes within `profile`."""
    lo, hi = profile
    trt = types.ModuleType("tensorrt")

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            if name != "input" or not lo <= shape[0] <= hi or tuple(shape[1:]) != (3, 2, 2):
                return False
            self.shapes["input"] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            n = self.shapes["input"][0]
            return self.shapes["input"] if name == "input" else (n, 4)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            n = self.shapes["input"][0]
            src = (ctypes.c_float * (n * 12)).from_address(self.addresses["input"])
            x = np.ctypeslib.as_array(src).reshape(n, 12)
            y = np.ascontiguousarray(x @ WEIGHTS, dtype=np.float32)
            ctypes.memmove(self.addresses["logits"], y.ctypes.data, y.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["input", "logits"][i]

        def get_tensor_mode(self, name: str) -> str:
            return "IN" if name == "input" else "OUT"

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return [(lo, 3, 2, 2), (hi, 3, 2, 2), (hi, 3, 2, 2)]

        def get_tensor_dtype(self, name: str) -> Any:
            return types.SimpleNamespace(name="FLOAT")

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            return Engine() if data == b"serialized plan" else None

    trt.__version__ = TRT  # type: ignore[attr-defined]
    trt.Runtime = Runtime  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            pass

    trt.Logger = Logger  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="IN", OUTPUT="OUT")  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Callable[[tuple[int, int]], FakeCudart]:
    def install(profile: tuple[int, int]) -> FakeCudart:
        cudart = FakeCudart()
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(profile))
        monkeypatch.setattr(trt_backend, "_import_cudart", lambda: cudart)
        return cudart

    return install


def profile_sidecar(lo: int, hi: int) -> dict[str, list[int]]:
    return {"min": [lo, 3, 2, 2], "opt": [hi, 3, 2, 2], "max": [hi, 3, 2, 2]}


def test_oversized_and_undersized_batches_run_through_pinned_buffers(
    tmp_path: Path, fake_gpu: Callable[[tuple[int, int]], FakeCudart]
) -> None:
    cudart = fake_gpu((4, 16))
    # The sidecar says 1..128 (the default build); the engine's own profile, 4..16, is what counts.
    backend = TensorRTBackend(write_engine(tmp_path))
    assert backend.info.max_batch_size == 16 and backend.info.device == "cuda:0"
    assert [(s.name, s.shape) for s in backend.info.inputs] == [("input", (-1, 3, 2, 2))]
    assert [(s.name, s.shape) for s in backend.info.outputs] == [("logits", (-1, 4))]
    assert backend.info.metadata[LABELS_KEY] == '["cat", "dog"]'
    for n in (1, 3, 16, 37):  # padded to the minimum 4; exact; split 16 + 16 + 5
        x = np.random.default_rng(n).normal(size=(n, 3, 2, 2)).astype(np.float32)
        out = backend.infer({"input": x})["logits"]
        np.testing.assert_allclose(out, x.reshape(n, 12) @ WEIGHTS, rtol=1e-5, atol=1e-5)
    assert max(cudart.copies) == 16 * 12 * 4  # never more than the max batch in flight
    backend.close()
    assert cudart.live == {}  # every host and device buffer freed


def test_inputs_with_the_wrong_shape_or_name_are_refused(
    tmp_path: Path, fake_gpu: Callable[[tuple[int, int]], FakeCudart]
) -> None:
    fake_gpu((1, 8))
    backend = TensorRTBackend(write_engine(tmp_path, profile=profile_sidecar(1, 8)))
    with pytest.raises(BackendError, match=r"shape \(N, 3, 2, 2\)"):
        backend.infer({"input": np.zeros((2, 3, 4, 4), np.float32)})
    with pytest.raises(BackendError, match="expected inputs"):
        backend.infer({"image": np.zeros((2, 3, 2, 2), np.float32)})
    backend.close()


def test_engine_from_another_gpu_is_refused_before_deserializing(
    tmp_path: Path, fake_gpu: Callable[[tuple[int, int]], FakeCudart], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gpu((1, 8))
    plan = write_engine(tmp_path, profile=profile_sidecar(1, 8), compute_capability="8.0", gpu_name="A100")
    runtime = sys.modules["tensorrt"].Runtime  # type: ignore[attr-defined]
    monkeypatch.setattr(runtime, "deserialize_cuda_engine", lambda *_: pytest.fail("deserialized"))
    with pytest.raises(BackendError, match=r"built for A100 \(compute capability 8\.0\).*rebuild"):
        TensorRTBackend(plan)


def test_unreadable_plan_asks_for_a_rebuild(
    tmp_path: Path, fake_gpu: Callable[[tuple[int, int]], FakeCudart]
) -> None:
    fake_gpu((1, 8))
    plan = write_engine(tmp_path, data=b"corrupt plan", profile=profile_sidecar(1, 8))
    with pytest.raises(BackendError, match=r"could not deserialize.*rebuild"):
        TensorRTBackend(plan)
