"""The PyTorch backend: the same code path on the CPU (FP32, eager) for parity, batching and errors; on a
GPU (marked `gpu`) FP16/BF16 with CUDA graphs against the FP32 reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from resnet_serve.formats.metadata import LABELS_KEY, PRECISION_KEY, PREPROCESS_KEY  # noqa: E402
from resnet_serve.models.checkpoint import load_model, save_checkpoint  # noqa: E402
from resnet_serve.models.registry import build  # noqa: E402
from resnet_serve.runtime.base import BackendError  # noqa: E402
from resnet_serve.runtime.torch_cuda import (  # noqa: E402
    TorchCudaBackend,
    TorchOptions,
    bucket_for,
    buckets,
    create_backend,
    input_shape,
)

PREPROCESS = {
    "color": "L",
    "resize": 16,
    "crop": 16,
    "interpolation": "bilinear",
    "mean": [0.5],
    "std": [0.25],
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet20 digits checkpoint with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = build("resnet20", num_classes=10, in_chans=1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    save_checkpoint(
        path,
        {
            "format": "resnet-serve/1",
            "arch": "resnet20",
            "model_config": {"num_classes": 10, "in_chans": 1},
            "state_dict": model.state_dict(),
            "labels": [str(i) for i in range(10)],
            "preprocess": PREPROCESS,
        },
    )
    return path


def reference(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(x)).numpy()
    return out


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 16, 16)).astype(np.float32)


def test_buckets_are_powers_of_two_up_to_the_max() -> None:
    assert buckets(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert buckets(1) == [1]
    assert [bucket_for(n, buckets(100)) for n in (1, 3, 64, 65, 100)] == [1, 4, 64, 100, 100]


def test_input_shape_follows_the_preprocess_contract() -> None:
    assert input_shape({"preprocess": {"color": "RGB", "crop": 224}}) == (3, 224, 224)
    with pytest.raises(BackendError, match="preprocess"):
        input_shape({})


def test_cpu_backend_matches_the_checkpoint(checkpoint: Path) -> None:
    backend = TorchCudaBackend(checkpoint, TorchOptions(dtype="fp32", device="cpu", max_batch_size=8))
    x = images(5)
    out = backend.infer({"input": x})["logits"]
    assert out.shape == (5, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(checkpoint, x), rtol=1e-4, atol=1e-4)


def test_batches_beyond_the_max_are_split_and_reassembled_in_order(checkpoint: Path) -> None:
    backend = TorchCudaBackend(checkpoint, TorchOptions(dtype="fp32", device="cpu", max_batch_size=4))
    x = images(11, seed=2)
    out = backend.infer({"input": x})["logits"]
    np.testing.assert_allclose(out, reference(checkpoint, x), rtol=1e-4, atol=1e-4)


def test_info_carries_the_onnx_metadata_keys(checkpoint: Path) -> None:
    info = TorchCudaBackend(checkpoint, TorchOptions(dtype="fp32", device="cpu")).info
    assert info.platform == "pytorch_libtorch" and info.max_batch_size == 128
    assert [(s.name, s.shape) for s in info.inputs] == [("input", (-1, 1, 16, 16))]
    assert [(s.name, s.shape) for s in info.outputs] == [("logits", (-1, 10))]
    assert json.loads(info.metadata[LABELS_KEY]) == [str(i) for i in range(10)]
    assert json.loads(info.metadata[PREPROCESS_KEY]) == PREPROCESS
    assert info.metadata[PRECISION_KEY] == "fp32"


def test_wrong_input_is_a_backend_error(checkpoint: Path) -> None:
    backend = TorchCudaBackend(checkpoint, TorchOptions(dtype="fp32", device="cpu"))
    with pytest.raises(BackendError, match=r"shape \(N, 1, 16, 16\)"):
        backend.infer({"input": np.zeros((2, 3, 16, 16), np.float32)})
    with pytest.raises(BackendError, match="expected the input 'input'"):
        backend.infer({"x": np.zeros((2, 1, 16, 16), np.float32)})


def test_half_precision_on_cpu_is_refused(checkpoint: Path) -> None:
    with pytest.raises(BackendError, match="CUDA device only"):
        TorchCudaBackend(checkpoint, TorchOptions(dtype="fp16", device="cpu"))


def test_unknown_dtype_and_missing_checkpoint_are_clear(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="unknown dtype"):
        TorchOptions(dtype="int4")
    with pytest.raises(BackendError, match="not found"):
        TorchCudaBackend(tmp_path / "absent.pt", TorchOptions(dtype="fp32", device="cpu"))


def test_cuda_request_without_a_gpu_is_refused(checkpoint: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="sees none"):
        TorchCudaBackend(checkpoint)


def test_server_factory_follows_the_device_setting(checkpoint: Path) -> None:
    assert create_backend(checkpoint, "cpu").info.device == "cpu"
    if torch.cuda.is_available():
        assert create_backend(checkpoint, "cuda").info.metadata[PRECISION_KEY] == "fp16"
    else:
        assert create_backend(checkpoint, "auto").info.device == "cpu"
        with pytest.raises(BackendError, match="sees none"):
            create_backend(checkpoint, "cuda:0")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_gpu_half_precision_with_cuda_graphs_tracks_fp32(checkpoint: Path, dtype: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    backend = TorchCudaBackend(checkpoint, TorchOptions(dtype=dtype, max_batch_size=16))
    x = images(37, seed=3)  # 16 + 16 + 5: two full graphs and a padded bucket of 8
    out = backend.infer({"input": x})["logits"]
    ref = reference(checkpoint, x)
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9
    again = backend.infer({"input": x})["logits"]  # graph replays are deterministic
    np.testing.assert_array_equal(out, again)
    backend.close()


@pytest.mark.gpu
def test_gpu_graphs_and_eager_agree(checkpoint: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = images(6, seed=4)
    graphs = TorchCudaBackend(checkpoint, TorchOptions(dtype="fp32", max_batch_size=8))
    eager = TorchCudaBackend(checkpoint, TorchOptions(dtype="fp32", max_batch_size=8, cuda_graphs=False))
    np.testing.assert_allclose(
        graphs.infer({"input": x})["logits"], eager.infer({"input": x})["logits"], rtol=1e-3, atol=1e-3
    )
