"""The ONNX Runtime backend: one InferenceSession per execution instance.

The session is tuned for serving: graph optimisation ALL, sequential execution, and an intra-op thread pool
sized to the cores this instance may use, because a pool larger than the cores only adds contention.
Intra-op threads do not spin-wait between parallel sections by default: in a server they share the cores
with the event loop, the gRPC threads and image decoding, and on a 2-core machine spinning doubled the
median batch-1 latency of ResNet-50 (106 → 56 ms without it, same machine, same minute; docs/server.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from resnet_serve.runtime.base import Backend, BackendError, BackendInfo, TensorSpec
from resnet_serve.runtime.cpus import default_threads

# ORT's type strings for the tensor element types our models use.
_ORT_TYPES: dict[str, np.dtype[np.generic]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),  # BYTES: object arrays of bytes (formats/bytes_tensor.py)
}


@dataclass(frozen=True)
class OrtOptions:
    device: str = "cpu"  # cpu | cuda | tensorrt | auto (runtime/providers.py)
    intra_op_threads: int = 0  # 0: all cores
    spinning: bool = False  # see OrtBackend
    trt_cache_dir: str | None = None


class OrtBackend(Backend):
    """Runs an .onnx file with ONNX Runtime; `infer` is safe to call from one worker thread at a time."""

    def __init__(self, path: str | Path, options: OrtOptions | None = None) -> None:
        options = options or OrtOptions()
        path = Path(path)
        if not path.is_file():
            raise BackendError(f"no such ONNX model file: {path}")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = options.intra_op_threads or default_threads()
        so.inter_op_num_threads = 1
        if not options.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3  # ORT's warnings (e.g. unused initialisers) are not the operator's concern
        providers = self._providers(options)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BackendError(f"ONNX Runtime cannot load {path}: {exc}") from None
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.info = self._describe(path, options)

    @staticmethod
    def _providers(options: OrtOptions) -> list[object]:
        try:
            from resnet_serve.runtime import providers
        except ImportError:  # pragma: no cover - providers.py is part of the package
            return ["CPUExecutionProvider"]
        return list(providers.ort_providers(options.device, trt_cache_dir=options.trt_cache_dir))

    def _describe(self, path: Path, options: OrtOptions) -> BackendInfo:
        inputs = [self._spec(i.name, i.type, i.shape, path) for i in self._session.get_inputs()]
        outputs = [self._spec(o.name, o.type, o.shape, path) for o in self._session.get_outputs()]
        batching = all(spec.shape and spec.shape[0] == -1 for spec in inputs)
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        used = self._session.get_providers()
        device = "cpu" if not used or used[0] == "CPUExecutionProvider" else "cuda"
        return BackendInfo(
            platform="onnxruntime_onnx",
            inputs=inputs,
            outputs=outputs,
            max_batch_size=1024 if batching else 0,
            metadata=meta,
            device=device,
        )

    @staticmethod
    def _spec(name: str, type_: str, shape: list[object], path: Path) -> TensorSpec:
        dtype = _ORT_TYPES.get(type_)
        if dtype is None:
            raise BackendError(f"{path}: tensor {name!r} has unsupported type {type_}")
        dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
        return TensorSpec(name=name, dtype=dtype, shape=dims)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: _to_ort(array) if array.dtype.hasobject else array for name, array in inputs.items()}
        results = self._session.run(self._output_names, feeds)
        return {
            name: _from_ort(out) if out.dtype.hasobject else out
            for name, out in zip(self._output_names, results, strict=True)
        }

    def close(self) -> None:
        self.__dict__.pop("_session", None)  # a second close (start-up's failure path) has nothing to do


def _to_ort(array: np.ndarray) -> np.ndarray:
    """A BYTES tensor (object array of bytes) as ORT's string tensor: its Python binding takes str elements,
    so each element is decoded as UTF-8, undecodable bytes kept as surrogates (`_from_ort` restores them)."""
    out = np.empty(array.shape, dtype=object)
    out.reshape(-1)[:] = [
        item.decode("utf-8", "surrogateescape") if isinstance(item, bytes) else item
        for item in array.reshape(-1).tolist()
    ]
    return out


def _from_ort(array: np.ndarray) -> np.ndarray:
    """ORT's string output (str elements) as a BYTES tensor of bytes."""
    out = np.empty(array.shape, dtype=object)
    out.reshape(-1)[:] = [
        item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
        for item in array.reshape(-1).tolist()
    ]
    return out
