"""The OpenVINO backend: one compiled model per model version, one InferRequest per execution instance.

OpenVINO reads our ONNX files directly (FP32, and the INT8 QDQ files `resnet-serve quantize` writes, which it
runs with its own INT8 kernels). Everything that decides speed and numbers is set explicitly, never left to
OpenVINO's defaults, and read back from the compiled model:

* the inference precision (`INFERENCE_PRECISION_HINT`): fp32 unless the model's settings ask for bf16.
  OpenVINO's own default is bf16 on CPUs with AVX512_BF16 or AMX, which changes answers (max rel. error
  4.6e-3 on ResNet-50, issue #17); a precision the CPU cannot run is refused at load time, because OpenVINO
  silently computes in f32 when told bf16 on a CPU without BF16 (measured on AMD Zen 3: the compiled model
  reads back f32);
* the performance mode (`PERFORMANCE_HINT`): latency or throughput;
* streams and threads: one stream per execution instance (`NUM_STREAMS` = instances) so each batcher worker's
  InferRequest runs on its own stream, and `INFERENCE_NUM_THREADS` = instances × threads per instance;
* the compiled-model cache (`CACHE_DIR`): a restart imports the compiled blob instead of compiling again
  (`LOADED_FROM_CACHE` reads back which happened).

The compiled model's actual precision, devices, streams and threads go into `BackendInfo.metadata` under
resnet_serve.* keys, so a model served in bf16 says so in its KServe ModelConfig parameters.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from resnet_serve.formats.metadata import (
    EXECUTION_DEVICES_KEY,
    INFERENCE_PRECISION_KEY,
    LOADED_FROM_CACHE_KEY,
    NUM_STREAMS_KEY,
    NUM_THREADS_KEY,
    PERFORMANCE_MODE_KEY,
)
from resnet_serve.formats.repository import INFERENCE_PRECISIONS as PRECISIONS
from resnet_serve.formats.repository import PERFORMANCE_MODES
from resnet_serve.runtime.base import Backend, BackendError, BackendInfo, TensorSpec

PLATFORM = "openvino"  # Triton's OpenVINO backend reports its backend name as the platform
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
_OUR_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
# OPTIMIZATION_CAPABILITIES entry a precision needs on the CPU plugin
_CAPABILITY = {"fp32": "FP32", "bf16": "BF16"}

_TYPES: dict[str, np.dtype[np.generic]] = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "f64": np.dtype(np.float64),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "boolean": np.dtype(np.bool_),
}

# One Core per process: it owns the plugins and their thread pools; creating it costs ~0.1 s.
_core: ov.Core | None = None
_core_lock = threading.Lock()


def core() -> ov.Core:
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


@dataclass(frozen=True)
class OpenVinoOptions:
    precision: str = "fp32"  # PRECISIONS
    performance_mode: str = "latency"  # PERFORMANCE_MODES
    streams: int = 1  # NUM_STREAMS: the model's execution instances
    threads: int = 0  # INFERENCE_NUM_THREADS for the whole compiled model (0: OpenVINO's choice)
    cache_dir: str = ""  # CACHE_DIR for compiled models ("": no cache)
    device: str = "cpu"


def cpu_capabilities() -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES, e.g. ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]."""
    return [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def supported_precisions() -> tuple[str, ...]:
    """The inference precisions this machine's CPU runs natively (what `tune` may try)."""
    caps = cpu_capabilities()
    return tuple(p for p in PRECISIONS if _CAPABILITY[p] in caps)


def check_options(options: OpenVinoOptions) -> None:
    """Refuse settings OpenVINO would ignore or misread, before anything is compiled."""
    if options.precision not in PRECISIONS:
        raise BackendError(
            f"OpenVINO inference precision {options.precision!r} is not one of {', '.join(PRECISIONS)}"
        )
    if options.performance_mode not in PERFORMANCE_MODES:
        raise BackendError(
            f"OpenVINO performance mode {options.performance_mode!r} is not one of "
            f"{', '.join(PERFORMANCE_MODES)}"
        )
    if options.device not in ("cpu", "auto"):  # auto: the best device there is, which is the CPU here
        raise BackendError(f"the OpenVINO backend runs on the CPU only, not on device {options.device!r}")
    if options.streams < 1 or options.threads < 0:
        raise BackendError("OpenVINO needs at least one stream and a thread count ≥ 0")
    caps = cpu_capabilities()
    if _CAPABILITY[options.precision] not in caps:
        raise BackendError(
            f"inference precision {options.precision} needs a CPU with {_CAPABILITY[options.precision]} "
            f"(AVX512_BF16 or AMX); this one offers {', '.join(caps)}: OpenVINO would silently compute in "
            f'fp32. Serve it with inference_precision = "fp32"'
        )


def _config(options: OpenVinoOptions) -> dict[str, Any]:
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": _OV_PRECISION[options.precision],
        "PERFORMANCE_HINT": options.performance_mode.upper(),
        "NUM_STREAMS": str(options.streams),
        "INFERENCE_NUM_THREADS": options.threads,
    }
    if options.cache_dir:
        config["CACHE_DIR"] = options.cache_dir
    return config


class CompiledOpenVino:
    """One model file compiled for the CPU; hands out one InferRequest per execution instance."""

    def __init__(self, path: str | Path, options: OpenVinoOptions | None = None) -> None:
        options = options or OpenVinoOptions()
        path = Path(path)
        if not path.is_file():
            raise BackendError(f"no such ONNX model file: {path}")
        check_options(options)
        if options.cache_dir:
            try:
                Path(options.cache_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(
                    f"cannot create the OpenVINO cache directory ({exc}): set openvino_cache_dir to a "
                    'writable directory, or to "" to compile at every load'
                ) from None
        try:
            # read_model for the file's metadata_props (OpenVINO keeps them as rt_info["framework"]);
            # compiling from the path lets a cache hit skip the graph transformations.
            model = core().read_model(str(path))
            props = _framework_props(model)
            for port in [*model.inputs, *model.outputs]:
                _refuse_strings(port, path)
            self._compiled = core().compile_model(str(path), "CPU", _config(options))
        except BackendError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            raise BackendError(f"OpenVINO cannot load {path}: {_one_line(exc)}") from None
        self.path = path
        self.options = options
        self.info = self._describe(props)

    def _read(self, name: str) -> Any:
        return self._compiled.get_property(name)

    @property
    def inference_precision(self) -> str:
        """What the compiled model computes in, read back (not what was asked): "fp32" or "bf16"."""
        value = self._read("INFERENCE_PRECISION_HINT")  # an ov.Type, e.g. <Type: 'float32'>
        name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        return _OUR_PRECISION.get(name, name)

    @property
    def loaded_from_cache(self) -> bool:
        return bool(self._read("LOADED_FROM_CACHE"))

    def _describe(self, props: dict[str, str]) -> BackendInfo:
        actual = self.inference_precision
        if actual != self.options.precision:
            raise BackendError(
                f"{self.path}: OpenVINO compiled in {actual} although {self.options.precision} was asked for"
            )
        inputs = [self._spec(port) for port in self._compiled.inputs]
        outputs = [self._spec(port) for port in self._compiled.outputs]
        batching = all(spec.shape and spec.shape[0] == -1 for spec in inputs)
        devices = ",".join(str(d) for d in self._read("EXECUTION_DEVICES"))
        runtime = {
            INFERENCE_PRECISION_KEY: actual,
            EXECUTION_DEVICES_KEY: devices,
            PERFORMANCE_MODE_KEY: self.options.performance_mode,
            NUM_STREAMS_KEY: str(self._read("NUM_STREAMS")),
            NUM_THREADS_KEY: str(self._read("INFERENCE_NUM_THREADS")),
            LOADED_FROM_CACHE_KEY: str(self.loaded_from_cache).lower(),
        }
        return BackendInfo(
            platform=PLATFORM,
            inputs=inputs,
            outputs=outputs,
            max_batch_size=1024 if batching else 0,
            metadata={**props, **runtime},
            device="cpu",
        )

    def _spec(self, port: Any) -> TensorSpec:
        name = port.get_any_name()
        type_name = port.get_element_type().get_type_name()
        dtype = _TYPES.get(type_name)
        if dtype is None:
            raise BackendError(f"{self.path}: tensor {name!r} has unsupported type {type_name}")
        shape = port.get_partial_shape()
        dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
        return TensorSpec(name=name, dtype=dtype, shape=dims)

    def backend(self) -> OpenVinoBackend:
        return OpenVinoBackend(self)

    def create_request(self) -> Any:
        return self._compiled.create_infer_request()


class OpenVinoBackend(Backend):
    """One execution instance: an InferRequest of a shared compiled model, used by one worker thread."""

    def __init__(self, compiled: CompiledOpenVino) -> None:
        self.info = compiled.info
        self._compiled: CompiledOpenVino | None = compiled
        self._request = compiled.create_request()
        self._output_names = [spec.name for spec in compiled.info.outputs]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check(inputs)
        try:
            # share_inputs=False copies the batch into the request's own tensors, so the request keeps no
            # reference to the batcher's reused buffer (the Backend contract): 0.2 ms for a ResNet-50 batch
            # of 8 (4.8 MB) against ~220 ms of INT8 compute on 2 cores, below the noise of share_inputs=True
            # (measured). share_outputs=False: the answers must outlive the next infer.
            results = self._request.infer(inputs, share_inputs=False, share_outputs=False)
        except Exception as exc:
            raise BackendError(f"OpenVINO inference failed: {_one_line(exc)}") from None
        return {name: results[name] for name in self._output_names}

    def _check(self, inputs: dict[str, np.ndarray]) -> None:
        # OpenVINO 2026.4's CPU plugin runs an input whose static dims differ from the model's (e.g. 9×9 for
        # 8×8) and corrupts memory doing so (a later segfault, measured): refuse it first. ~1 µs per batch.
        for spec in self.info.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise BackendError(f"input {spec.name!r} is missing")
            fits = array.ndim == len(spec.shape) and all(
                want in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
            )
            if not fits or array.dtype != spec.dtype:
                raise BackendError(
                    f"input {spec.name!r} is {array.dtype}{list(array.shape)}, the model takes "
                    f"{spec.dtype}{list(spec.shape)}"
                )

    def close(self) -> None:
        self._request = None
        self._compiled = None


def create_backends(path: Path, options: OpenVinoOptions, count: int) -> list[Backend]:
    """`count` execution instances of the model at `path`: one compile (NUM_STREAMS = count), one InferRequest
    each."""
    compiled = CompiledOpenVino(path, options)
    return [compiled.backend() for _ in range(count)]


def _framework_props(model: Any) -> dict[str, str]:
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    framework = info["framework"]
    return {str(key): framework[key].astype(str) for key in framework}


def _refuse_strings(port: Any, path: Path) -> None:
    """A string (BYTES) input or output: OpenVINO's ONNX reader has string tensors, but not the ops that use
    them here, so such a model is refused at load with the backend that serves it."""
    if port.get_element_type().get_type_name() == "string":
        raise BackendError(
            f"{path}: tensor {port.get_any_name()!r} is a string (BYTES) tensor, which the OpenVINO backend "
            "does not serve; serve this model with backend onnxruntime"
        )


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # OpenVINO's messages start with "Exception from src/...cpp:NN:" lines; the cause is the last line.
    return lines[-1] if lines else type(exc).__name__
