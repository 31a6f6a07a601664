"""TensorRT backend: runs a serialized engine from `resnet-serve build-engine`, behind the common interface.

One execution context and one CUDA stream per backend instance; pinned host buffers and device buffers are
sized once for the profile's largest batch, so serving allocates nothing. A batch larger than the profile is
split into profile-sized runs; one smaller than the profile's minimum is zero-padded up to it.

An engine only deserializes on the TensorRT version and GPU architecture it was built for, and a mismatch
inside TensorRT is an opaque error at best. So the sidecar JSON that `build-engine` writes next to every
engine (formats/sidecar.py) is checked first, and a mismatch is refused with a message that says to rebuild.

tensorrt and cuda-python (`cuda.bindings.runtime`, no torch) are imported only when a backend is created,
so `server` imports fine on machines without them. Everything above `TensorRTBackend` is pure Python.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnet_serve.formats.errors import SidecarError
from resnet_serve.formats.sidecar import load_checked, read_sidecar
from resnet_serve.runtime.base import Backend, BackendError, BackendInfo, TensorSpec

PLATFORM = "tensorrt_plan"

if TYPE_CHECKING:
    # tensorrt-stubs 10.13 is unreadable to mypy as installed; docs/gpu.md shows the patched-stub check.
    import tensorrt as trt  # type: ignore[import-untyped]


@dataclass(frozen=True)
class Chunk:
    """One engine run: rows start..stop of the request, run at `run_size` rows (zero-padded past stop)."""

    start: int
    stop: int
    run_size: int


def plan_chunks(batch: int, min_batch: int, max_batch: int) -> list[Chunk]:
    """Split a batch into engine runs no larger than max_batch, padding any run below min_batch."""
    if batch < 1:
        raise BackendError(f"batch size must be at least 1, got {batch}")
    if not 1 <= min_batch <= max_batch:
        raise BackendError(f"invalid engine profile: min batch {min_batch}, max batch {max_batch}")
    chunks = []
    for start in range(0, batch, max_batch):
        stop = min(start + max_batch, batch)
        chunks.append(Chunk(start, stop, max(stop - start, min_batch)))
    return chunks


# ---- everything below needs TensorRT, cuda-python and a GPU ----


def require_tensorrt() -> None:
    """A BackendError unless TensorRT is importable: the one check for the engine build and the backend.
    tensorrt-stubs installs a `tensorrt` namespace package with no code in it, so a successful import alone
    does not mean TensorRT is there."""
    try:
        import tensorrt  # type: ignore[import-untyped]
    except ImportError:
        found = ""
    else:
        if hasattr(tensorrt, "Runtime"):
            return
        found = " (only its type stubs are)"
    raise BackendError(
        f"TensorRT is not installed{found}: building or serving engines needs TensorRT; "
        "pip install tensorrt on a GPU node"
    )


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart

        return cudart
    except ImportError:
        raise BackendError("the TensorRT backend needs cuda-python: pip install cuda-python") from None


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


_NUMPY_BY_TRT = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def _numpy_dtype(trt_name: str) -> np.dtype[Any]:
    """The numpy dtype for a TensorRT DataType name; BF16/FP8 I/O have no numpy twin and are refused."""
    try:
        return np.dtype(_NUMPY_BY_TRT[trt_name])
    except KeyError:
        problem = f"engine I/O of type {trt_name} is not supported; export with float32 I/O"
        raise BackendError(problem) from None


class _Cuda:
    """The few CUDA runtime calls the backend makes, with errors turned into BackendError."""

    def __init__(self, cudart: Any, device: int) -> None:
        self.rt = cudart
        self.device = device
        self.call("cudaSetDevice", device)

    def call(self, name: str, *args: Any) -> Any:
        result = getattr(self.rt, name)(*args)
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(err) != 0:
            _, text = self.rt.cudaGetErrorString(err)
            raise BackendError(f"CUDA {name} failed: {text.decode() if isinstance(text, bytes) else text}")
        return rest[0] if len(rest) == 1 else rest

    def identity(self) -> tuple[str, str]:
        prop = self.call("cudaGetDeviceProperties", self.device)
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"


@dataclass
class _Buffer:
    """One I/O tensor: a pinned host array and a device allocation, both sized for the max batch."""

    name: str
    dtype: np.dtype[Any]
    sample_shape: tuple[int, ...]
    host_ptr: int
    host: np.ndarray
    device_ptr: int

    @property
    def sample_bytes(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize


class TensorRTBackend(Backend):
    def __init__(self, engine_path: str | Path, *, device: int = 0) -> None:
        engine_path = Path(engine_path)
        try:
            read_sidecar(engine_path)  # a missing or foreign sidecar is reported before anything heavy loads
        except SidecarError as err:
            raise BackendError(str(err)) from None
        require_tensorrt()
        import tensorrt as trt  # type: ignore[import-untyped]

        self._cuda = _Cuda(_import_cudart(), device)
        gpu_name, cc = self._cuda.identity()
        try:
            sidecar, data = load_checked(
                engine_path, tensorrt_version=trt.__version__, compute_capability=cc, gpu_name=gpu_name
            )
        except SidecarError as err:
            raise BackendError(str(err)) from None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f"TensorRT could not deserialize {engine_path}; rebuild it with build-engine")
        self._engine: trt.ICudaEngine | None = engine
        context: trt.IExecutionContext | None = engine.create_execution_context()
        if context is None:
            raise BackendError(f"cannot create an execution context for {engine_path} (out of GPU memory?)")
        self._context: trt.IExecutionContext | None = context
        self._stream = self._cuda.call("cudaStreamCreate")
        self._lock = threading.Lock()
        self._min_batch = self._max_batch = 0  # the engine's own profile, read in _allocate
        self._buffers: list[_Buffer] = []  # every allocation, so close() frees even a half-built backend
        self._inputs: list[_Buffer] = []
        self._outputs: list[_Buffer] = []
        try:
            self._allocate(engine, context)
        except BaseException:
            self.close()
            raise
        self.info = BackendInfo(
            platform=PLATFORM,
            inputs=[TensorSpec(b.name, b.dtype, (-1, *b.sample_shape)) for b in self._inputs],
            outputs=[TensorSpec(b.name, b.dtype, (-1, *b.sample_shape)) for b in self._outputs],
            max_batch_size=self._max_batch,
            metadata=dict(sidecar.metadata),
            device=f"cuda:{device}",
        )

    def _allocate(self, engine: trt.ICudaEngine, ctx: trt.IExecutionContext) -> None:
        import tensorrt as trt  # type: ignore[import-untyped]

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            min_shape, _, max_shape = (_dims(d) for d in engine.get_tensor_profile_shape(name, 0))
            # The engine, not the sidecar, is the authority on what it accepts: buffers follow it.
            self._min_batch = max(self._min_batch, min_shape[0])
            self._max_batch = max_shape[0] if not self._max_batch else min(self._max_batch, max_shape[0])
            if not ctx.set_input_shape(name, max_shape):
                raise BackendError(f"engine rejected its own max shape {max_shape} for {name!r}")
        for name in names:
            shape = _dims(ctx.get_tensor_shape(name))  # resolved at the max batch set above
            sample = tuple(int(d) for d in shape[1:])
            if any(d < 0 for d in sample):
                raise BackendError(f"tensor {name!r} has a dynamic dim besides the batch: {shape}")
            dtype = _numpy_dtype(engine.get_tensor_dtype(name).name)
            buf = self._buffer(name, dtype, sample)
            if not ctx.set_tensor_address(name, buf.device_ptr):
                raise BackendError(f"cannot bind tensor {name!r}")
            (self._inputs if name in inputs else self._outputs).append(buf)

    def _buffer(self, name: str, dtype: np.dtype[Any], sample: tuple[int, ...]) -> _Buffer:
        count = self._max_batch * int(np.prod(sample, dtype=np.int64))
        nbytes = max(count * dtype.itemsize, 1)
        host_ptr = int(self._cuda.call("cudaMallocHost", nbytes))
        buf = _Buffer(name, dtype, sample, host_ptr, np.empty(0, dtype), 0)
        self._buffers.append(buf)
        ctype = np.ctypeslib.as_ctypes_type(dtype)
        flat = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctype)), shape=(count,))
        buf.host = flat.reshape(self._max_batch, *sample)
        buf.device_ptr = int(self._cuda.call("cudaMalloc", nbytes))
        return buf

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._check_inputs(inputs)
        batch = next(iter(arrays.values())).shape[0]
        pieces: dict[str, list[np.ndarray]] = {b.name: [] for b in self._outputs}
        with self._lock:
            self._cuda.call("cudaSetDevice", self._cuda.device)  # the device is per thread in CUDA
            for chunk in plan_chunks(batch, self._min_batch, self._max_batch):
                self._run(arrays, chunk)
                for buf in self._outputs:
                    pieces[buf.name].append(buf.host[: chunk.stop - chunk.start].copy())
        # One chunk (the usual case) is already its own copy: concatenating it would copy it again.
        return {name: p[0] if len(p) == 1 else np.concatenate(p) for name, p in pieces.items()}

    def _run(self, arrays: dict[str, np.ndarray], chunk: Chunk) -> None:
        rt, n, context = self._cuda.rt, chunk.stop - chunk.start, self._context
        if context is None:
            raise BackendError("the TensorRT backend is closed")
        for buf in self._inputs:
            buf.host[:n] = arrays[buf.name][chunk.start : chunk.stop]
            if chunk.run_size > n:
                buf.host[n : chunk.run_size] = 0
            self._cuda.call(
                "cudaMemcpyAsync",
                buf.device_ptr,
                buf.host_ptr,
                chunk.run_size * buf.sample_bytes,
                rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                self._stream,
            )
            if not context.set_input_shape(buf.name, (chunk.run_size, *buf.sample_shape)):
                raise BackendError(f"engine rejected batch size {chunk.run_size} for {buf.name!r}")
        if not context.execute_async_v3(int(self._stream)):
            raise BackendError("TensorRT failed to enqueue the batch")
        for buf in self._outputs:
            self._cuda.call(
                "cudaMemcpyAsync",
                buf.host_ptr,
                buf.device_ptr,
                chunk.run_size * buf.sample_bytes,
                rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                self._stream,
            )
        self._cuda.call("cudaStreamSynchronize", self._stream)

    def _check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {b.name for b in self._inputs}
        if set(inputs) != expected:
            raise BackendError(f"expected inputs {sorted(expected)}, got {sorted(inputs)}")
        arrays: dict[str, np.ndarray] = {}
        batches = set()
        for buf in self._inputs:
            array = np.asarray(inputs[buf.name], dtype=buf.dtype)
            if array.shape[1:] != buf.sample_shape:
                raise BackendError(
                    f"input {buf.name!r} must have shape (N, {', '.join(map(str, buf.sample_shape))}), "
                    f"got {array.shape}"
                )
            arrays[buf.name] = array
            batches.add(array.shape[0])
        if len(batches) != 1:
            raise BackendError(f"inputs disagree on the batch size: {sorted(batches)}")
        return arrays

    def close(self) -> None:
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        for buf in getattr(self, "_buffers", []):
            if buf.device_ptr:
                cuda.rt.cudaFree(buf.device_ptr)
            cuda.rt.cudaFreeHost(buf.host_ptr)
        self._buffers, self._inputs, self._outputs = [], [], []
        stream = getattr(self, "_stream", None)
        if stream is not None:
            cuda.rt.cudaStreamDestroy(stream)
            self._stream = None
        self._context = None
        self._engine = None


def create_backend(path: Path, device: str) -> TensorRTBackend:
    """The factory hook (runtime/factory.py): `device` is the server's setting, see cuda_index."""
    from resnet_serve.runtime.providers import cuda_index

    return TensorRTBackend(path, device=cuda_index(device))
