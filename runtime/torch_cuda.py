"""PyTorch CUDA backend: serves a training checkpoint directly, for GPU nodes without TensorRT.

The checkpoint's model is BatchNorm-folded (models.fold), cast to FP16 or BF16 and laid out channels_last
(tensor cores want NHWC). Each batch size is padded up to a power-of-two bucket, and each bucket gets a
CUDA graph captured on first use, so a batch is one graph replay instead of ~150 kernel launches from
Python; all graphs share one memory pool because they never run concurrently. Host↔device copies go
through pinned buffers on the backend's own stream.

torch is imported only inside this module (and only when a backend is created): the rest of `server`
never imports it. On a CPU (tests, the GPU check's dry run) it runs the same code path in FP32 without
graphs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnet_serve.formats.metadata import ARCH_KEY, LABELS_KEY, PRECISION_KEY, PREPROCESS_KEY, SOURCE_KEY
from resnet_serve.runtime.base import Backend, BackendError, BackendInfo, TensorSpec
from resnet_serve.runtime.tensorrt import plan_chunks

if TYPE_CHECKING:
    import torch

PLATFORM = "pytorch_libtorch"
DTYPES = ("fp16", "bf16", "fp32")


@dataclass(frozen=True)
class TorchOptions:
    dtype: str = "fp16"
    channels_last: bool = True
    cuda_graphs: bool = True
    compile: bool = False  # torch.compile before graph capture: slower start, sometimes faster kernels
    max_batch_size: int = 128
    device: str = "cuda:0"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise BackendError(f"unknown dtype {self.dtype!r}; choose one of: {', '.join(DTYPES)}")
        if self.max_batch_size < 1:
            raise BackendError(f"max batch size must be at least 1, got {self.max_batch_size}")


def buckets(max_batch: int) -> list[int]:
    """Batch sizes that get their own CUDA graph: powers of two below max_batch, and max_batch itself.
    Padding to the next bucket wastes at most half a batch and bounds the graphs to log2(max)+1."""
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def bucket_for(n: int, sizes: list[int]) -> int:
    for size in sizes:
        if size >= n:
            return size
    raise BackendError(f"batch of {n} exceeds the largest bucket {sizes[-1]}")


def input_shape(meta: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of one sample, from the checkpoint's preprocessing contract."""
    pre = meta.get("preprocess") or {}
    try:
        chans = {"L": 1, "RGB": 3}[pre["color"]]
        crop = int(pre["crop"])
    except (KeyError, TypeError, ValueError):
        problem = "the checkpoint has no usable preprocess (color, crop); retrain or re-save it"
        raise BackendError(problem) from None
    return chans, crop, crop


def metadata_for(meta: dict[str, Any], dtype: str, source_sha256: str) -> dict[str, str]:
    """The same metadata keys an exported ONNX carries, so the server treats both alike."""
    return {
        LABELS_KEY: json.dumps(list(meta.get("labels", []))),
        PREPROCESS_KEY: json.dumps(meta.get("preprocess", {})),
        ARCH_KEY: str(meta.get("arch", "")),
        PRECISION_KEY: dtype,
        SOURCE_KEY: source_sha256,
    }


@dataclass
class _Graph:
    """One bucket's device input, and its captured graph with the output it writes (None when eager)."""

    static_in: torch.Tensor
    static_out: torch.Tensor | None = None
    graph: torch.cuda.CUDAGraph | None = None


class TorchCudaBackend(Backend):
    def __init__(self, checkpoint: str | Path, options: TorchOptions | None = None) -> None:
        import torch

        from resnet_serve.models.checkpoint import load_model
        from resnet_serve.models.errors import ModelsError
        from resnet_serve.models.fold import FoldError, fold_batchnorm

        self._opts = options or TorchOptions()
        self._torch = torch
        self._device = torch.device(self._opts.device)
        on_gpu = self._device.type == "cuda"
        if on_gpu and not torch.cuda.is_available():
            raise BackendError("the torch backend needs a CUDA GPU, and PyTorch sees none")
        if not on_gpu and self._opts.dtype != "fp32":
            problem = f"{self._opts.dtype} runs on a CUDA device only; use dtype fp32 on {self._device}"
            raise BackendError(problem)
        if on_gpu:
            # Process-wide switches: every bucket has a fixed shape, so let cuDNN time its algorithms (during
            # the warm-up runs before capture); and FP32 means FP32, not TF32, so it matches the reference.
            torch.backends.cudnn.benchmark = True
            if self._opts.dtype == "fp32":
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
        path = Path(checkpoint)
        try:
            model, meta = load_model(path)
            model = fold_batchnorm(model)
        except (ModelsError, FoldError) as err:
            raise BackendError(str(err)) from None
        self._sample = input_shape(meta)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self._opts.dtype]
        fmt = torch.channels_last if self._opts.channels_last else torch.contiguous_format
        self._dtype, self._format = dtype, fmt
        model = model.to(device=self._device, dtype=dtype).eval()
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]  # Module.to takes it; stubs lag
        self._model: Callable[[torch.Tensor], torch.Tensor] = model
        if self._opts.compile:
            self._model = torch.compile(model, mode="max-autotune-no-cudagraphs")
        self._use_graphs = on_gpu and self._opts.cuda_graphs
        self._buckets = buckets(self._opts.max_batch_size)
        self._graphs: dict[int, _Graph] = {}
        self._lock = threading.Lock()
        if on_gpu:
            self._stream = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
            self._pool = torch.cuda.graph_pool_handle()
        max_n = self._opts.max_batch_size
        self._host_in = torch.empty((max_n, *self._sample), dtype=torch.float32, pin_memory=on_gpu)
        with torch.no_grad():
            probe = self._model(torch.zeros((1, *self._sample), device=self._device, dtype=dtype))
        classes = int(probe.shape[1])
        self._host_out = torch.empty((max_n, classes), dtype=torch.float32, pin_memory=on_gpu)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        self.info = BackendInfo(
            platform=PLATFORM,
            inputs=[TensorSpec("input", np.dtype(np.float32), (-1, *self._sample))],
            outputs=[TensorSpec("logits", np.dtype(np.float32), (-1, classes))],
            max_batch_size=max_n,
            metadata=metadata_for(meta, self._opts.dtype, sha),
            device=str(self._device),
        )

    def _graph_for(self, size: int) -> _Graph:
        found = self._graphs.get(size)
        if found is not None:
            return found
        torch = self._torch
        static_in = torch.zeros((size, *self._sample), device=self._device, dtype=self._dtype)
        static_in = static_in.contiguous(memory_format=self._format)
        made = _Graph(static_in)
        if self._use_graphs:
            self._stream.wait_stream(torch.cuda.current_stream(self._device))
            with torch.no_grad():
                # Warm-up runs on the side stream first, as capture requires (cuDNN picks its kernels here).
                with torch.cuda.stream(self._stream):
                    for _ in range(3):
                        self._model(static_in)
                self._stream.synchronize()
                made.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(made.graph, pool=self._pool, stream=self._stream):
                    made.static_out = self._model(static_in).float()
        self._graphs[size] = made
        return made

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(inputs) != {"input"}:
            raise BackendError(f"expected the input 'input', got {sorted(inputs)}")
        x = np.asarray(inputs["input"], dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self._sample:
            want = ", ".join(map(str, self._sample))
            raise BackendError(f"input must have shape (N, {want}), got {x.shape}")
        parts = []
        with self._lock, self._on_device():
            for chunk in plan_chunks(x.shape[0], 1, self._opts.max_batch_size):
                parts.append(self._run(x[chunk.start : chunk.stop]))
        # One chunk (the usual case) is already its own copy: concatenating it would copy it again.
        return {"logits": parts[0] if len(parts) == 1 else np.concatenate(parts)}

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        # The current CUDA device is per thread, and the batcher calls from its own worker threads.
        if self._device.type == "cuda":
            return self._torch.cuda.device(self._device)
        return contextlib.nullcontext()

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = x.shape[0]
        size = bucket_for(n, self._buckets)
        host_in = self._host_in[:size]
        staging = host_in.numpy()  # a view of the (pinned) buffer: numpy fills it without a torch copy
        staging[:n] = x
        staging[n:] = 0
        g = self._graph_for(size)
        if self._device.type != "cuda":
            with torch.no_grad():
                g.static_in.copy_(host_in)
                self._host_out[:size].copy_(self._model(g.static_in).float())
            return self._host_out[:n].numpy().copy()
        with torch.cuda.stream(self._stream), torch.no_grad():
            g.static_in.copy_(host_in, non_blocking=True)
            if g.graph is not None and g.static_out is not None:
                g.graph.replay()
                out = g.static_out
            else:
                out = self._model(g.static_in).float()
            self._host_out[:size].copy_(out, non_blocking=True)
        self._stream.synchronize()
        return self._host_out[:n].numpy().copy()

    def close(self) -> None:
        self._graphs.clear()
        if self._device.type == "cuda":
            self._torch.cuda.synchronize(self._device)
            self._torch.cuda.empty_cache()


def create_backend(path: Path, device: str) -> TorchCudaBackend:
    """The factory hook (runtime/factory.py). On a GPU (`cuda`, `cuda:N`, or `auto` when one is
    visible): FP16, channels_last, CUDA graphs. `cpu` (the server's default device) runs FP32 on the CPU,
    which serves tests and dry runs; say `--device cuda` to serve on the GPU."""
    import torch

    from resnet_serve.runtime.providers import cuda_index

    name = device.strip().lower()
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return TorchCudaBackend(path, TorchOptions(dtype="fp32", device="cpu", cuda_graphs=False))
    return TorchCudaBackend(path, TorchOptions(device=f"cuda:{cuda_index(name)}"))
