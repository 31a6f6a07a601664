"""The OpenVINO backend: the backend contract it shares with ONNX Runtime (parametrised over both), and
what is its own: an explicit precision read back from the compiled model (bf16 refused where the CPU lacks
it), instances as streams of one compiled model, the compiled-model cache surviving a restart, INT8 QDQ."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from support.runtimes import OPENVINO_MISSING, RUNTIMES, runtime_backends
from support.tiny_model import write_tiny_onnx

from resnet_serve.formats.metadata import (
    EXECUTION_DEVICES_KEY,
    INFERENCE_PRECISION_KEY,
    LABELS_KEY,
    LOADED_FROM_CACHE_KEY,
    NUM_STREAMS_KEY,
    NUM_THREADS_KEY,
    PERFORMANCE_MODE_KEY,
    PRECISION_KEY,
)
from resnet_serve.formats.repository import RepositoryError, parse_config
from resnet_serve.runtime.base import BackendError
from resnet_serve.runtime.factory import InstanceOptions, create_backends
from resnet_serve.server.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
needs_openvino = pytest.mark.skipif(
    OPENVINO_MISSING, reason="openvino not installed: pip install '.[openvino]'"
)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 8, 8)).astype(np.float32)


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = ort.InferenceSession(str(path)).run(["logits"], {"input": x})[0]
    return out


# ------------------------------------------------------------------------- the contract, on both runtimes


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_runtime_answers_what_onnx_runtime_answers_and_describes_the_model(
    tiny_onnx: Path, runtime: str
) -> None:
    (backend,) = runtime_backends(tiny_onnx, runtime)
    x = rows(5)
    got = backend.infer({"input": x})
    assert set(got) == {"logits"} and got["logits"].dtype == np.float32
    np.testing.assert_allclose(got["logits"], reference(tiny_onnx, x), rtol=1e-5, atol=1e-5)
    info = backend.info
    assert [(s.name, s.dtype, s.shape) for s in info.inputs] == [
        ("input", np.dtype(np.float32), (-1, 1, 8, 8))
    ]
    assert [(s.name, s.shape) for s in info.outputs] == [("logits", (-1, 10))]
    assert info.max_batch_size > 0 and info.device == "cpu"
    assert json.loads(info.metadata[LABELS_KEY])[0] == "class-0"  # the file's metadata_props
    assert info.metadata[PRECISION_KEY] == "fp32"
    backend.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_backend_keeps_no_reference_to_its_inputs_and_its_answers_outlive_the_next_batch(
    tiny_onnx: Path, runtime: str
) -> None:
    (backend,) = runtime_backends(tiny_onnx, runtime)
    x = rows(3, seed=1)
    watched = weakref.ref(x)
    first = backend.infer({"input": x})["logits"]
    kept = first.copy()
    x[:] = 0.0  # the batcher reuses its staging buffer for the next batch
    del x
    gc.collect()
    assert watched() is None, "the backend still holds the input array"
    backend.infer({"input": rows(3, seed=2)})
    np.testing.assert_array_equal(first, kept)  # not a view of the runtime's output buffer
    backend.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_load_failures_are_one_line_backend_errors_naming_the_file(tmp_path: Path, runtime: str) -> None:
    with pytest.raises(BackendError, match="no such ONNX model file"):
        runtime_backends(tmp_path / "absent.onnx", runtime)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model\xff" * 10)
    with pytest.raises(BackendError) as info:
        runtime_backends(garbage, runtime)
    assert str(garbage) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_batch_the_model_cannot_run_raises_and_the_instance_keeps_serving(
    tiny_onnx: Path, runtime: str
) -> None:
    # The batcher turns any exception from `infer` into INTERNAL for that batch (tests/test_batcher.py).
    (backend,) = runtime_backends(tiny_onnx, runtime)
    with pytest.raises(Exception):  # noqa: B017 - ORT raises its own types; OpenVINO's become BackendError
        backend.infer({"input": np.zeros((2, 1, 9, 9), np.float32)})
    np.testing.assert_allclose(
        backend.infer({"input": rows(2)})["logits"], reference(tiny_onnx, rows(2)), rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------------------------ OpenVINO's own


@needs_openvino
def test_the_precision_is_set_explicitly_and_read_back_from_the_compiled_model(tiny_onnx: Path) -> None:
    from resnet_serve.runtime import openvino

    (backend,) = runtime_backends(tiny_onnx, "openvino")
    meta = backend.info.metadata
    assert backend.info.platform == "openvino"
    assert meta[INFERENCE_PRECISION_KEY] == "fp32"  # never OpenVINO's own default (bf16 on BF16 CPUs)
    assert meta[EXECUTION_DEVICES_KEY] == "CPU"
    assert meta[PERFORMANCE_MODE_KEY] == "latency"
    assert openvino._config(openvino.OpenVinoOptions())["INFERENCE_PRECISION_HINT"] == "f32"


@needs_openvino
def test_bf16_runs_in_bf16_or_is_refused_where_the_cpu_has_no_bf16(tiny_onnx: Path) -> None:
    from resnet_serve.runtime import openvino

    options = InstanceOptions(intra_op_threads=1, inference_precision="bf16")
    if "bf16" in openvino.supported_precisions():
        (backend,) = create_backends(tiny_onnx, "openvino", 1, options)
        assert backend.info.metadata[INFERENCE_PRECISION_KEY] == "bf16"
        x = rows(4)
        got = backend.infer({"input": x})["logits"]
        np.testing.assert_allclose(got, reference(tiny_onnx, x), rtol=3e-2, atol=3e-2)
    else:
        # OpenVINO would accept the hint and silently compute in f32 (measured on AMD Zen 3): refused instead.
        with pytest.raises(BackendError, match=r"needs a CPU with BF16 .* silently compute in fp32"):
            create_backends(tiny_onnx, "openvino", 1, options)


@needs_openvino
@pytest.mark.parametrize(
    "caps",
    [["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"], ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]],
    ids=["intel-xeon-avx512-vnni", "amd-epyc-zen3-avx2"],
)
def test_bf16_is_refused_on_a_cpu_without_bf16_whatever_this_machine_has(
    tiny_onnx: Path, caps: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal branch of the test above runs on every machine: the CPU plugin's capability list of the
    CPUs without BF16 seen on this machine kind stands in for this machine's own."""
    from resnet_serve.runtime import openvino

    monkeypatch.setattr(openvino, "cpu_capabilities", lambda: list(caps))
    options = InstanceOptions(intra_op_threads=1, inference_precision="bf16")
    with pytest.raises(BackendError, match=r"needs a CPU with BF16 .* silently compute in fp32"):
        create_backends(tiny_onnx, "openvino", 1, options)


@needs_openvino
def test_instances_are_streams_of_one_compiled_model_running_concurrently(tiny_onnx: Path) -> None:

    backends = create_backends(tiny_onnx, "openvino", 2, InstanceOptions(intra_op_threads=1))
    assert len(backends) == 2
    assert backends[0].info.metadata[NUM_STREAMS_KEY] == "2"
    assert backends[0].info.metadata[NUM_THREADS_KEY] == "2"  # instances × threads per instance
    x = [rows(4, seed=i) for i in range(2)]
    answers: dict[int, list[np.ndarray]] = {0: [], 1: []}

    def work(i: int) -> None:
        for _ in range(20):
            answers[i].append(backends[i].infer({"input": x[i]})["logits"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i in range(2):
        assert len(answers[i]) == 20
        for got in answers[i]:
            np.testing.assert_allclose(got, reference(tiny_onnx, x[i]), rtol=1e-5, atol=1e-5)


_LOAD = """
import json, sys
from pathlib import Path
from resnet_serve.runtime.factory import InstanceOptions, create_backends
options = InstanceOptions(intra_op_threads=1, cache_dir=sys.argv[2])
(b,) = create_backends(Path(sys.argv[1]), "openvino", 1, options)
print(json.dumps(b.info.metadata))
"""


@needs_openvino
@pytest.mark.slow
def test_a_restarted_process_imports_the_compiled_model_from_the_cache(tmp_path: Path) -> None:

    model = write_tiny_onnx(tmp_path / "model.onnx")
    cache = tmp_path / "cache"

    def load() -> dict[str, str]:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD, str(model), str(cache)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        meta: dict[str, str] = json.loads(done.stdout)
        return meta

    assert load()[LOADED_FROM_CACHE_KEY] == "false"
    blobs = list(cache.glob("*.blob"))
    assert blobs, "nothing was written to the cache directory"
    assert load()[LOADED_FROM_CACHE_KEY] == "true"  # a new process: nothing in memory survived
    assert list(cache.glob("*.blob")) == blobs


@needs_openvino
def test_a_cache_directory_that_cannot_be_made_fails_the_load_saying_what_to_set(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    options = InstanceOptions(intra_op_threads=1, cache_dir=str(blocker / "cache"))
    with pytest.raises(BackendError, match="set openvino_cache_dir to a writable directory"):
        create_backends(tiny_onnx, "openvino", 1, options)


@needs_openvino
@pytest.mark.slow
def test_openvino_runs_the_int8_qdq_file_quantize_writes(tmp_path: Path) -> None:
    import onnx

    from resnet_serve.export.quantize import quantize
    from resnet_serve.formats.metadata import from_props

    fp32 = write_tiny_onnx(tmp_path / "fp32.onnx")
    proto = onnx.load(str(fp32))
    meta = from_props({p.key: p.value for p in proto.metadata_props}, str(fp32))
    int8 = quantize(proto, meta, rows(64, seed=3))["ort"]
    path = tmp_path / "int8.onnx"
    onnx.save(int8, str(path))
    (backend,) = runtime_backends(path, "openvino")
    assert backend.info.metadata[PRECISION_KEY] == "int8-qdq-ort"
    x = rows(32, seed=4)
    got = backend.infer({"input": x})["logits"]
    ort_int8 = reference(path, x)
    scale = float(np.abs(ort_int8).max())
    assert float(np.abs(got - ort_int8).max()) / scale < 0.05
    assert np.mean(got.argmax(1) == ort_int8.argmax(1)) >= 0.9


# ------------------------------------------------------------------------------- settings and their errors


def test_bf16_with_a_runtime_that_cannot_honour_it_is_refused(tiny_onnx: Path) -> None:
    with pytest.raises(BackendError, match="needs the openvino backend"):
        create_backends(tiny_onnx, "onnxruntime", 1, InstanceOptions(inference_precision="bf16"))


@needs_openvino
def test_openvino_refuses_a_gpu_device_and_an_unknown_mode(tiny_onnx: Path) -> None:
    with pytest.raises(BackendError, match="CPU only"):
        create_backends(tiny_onnx, "openvino", 1, InstanceOptions(device="cuda"))
    with pytest.raises(BackendError, match="performance mode"):
        create_backends(tiny_onnx, "openvino", 1, InstanceOptions(performance_mode="fastest"))


def test_without_openvino_installed_the_backend_is_a_one_line_error(
    tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "resnet_serve.runtime.openvino", None)  # import fails
    with pytest.raises(BackendError, match=r"openvino backend is not available.*\[openvino\]"):
        create_backends(tiny_onnx, "openvino", 1, InstanceOptions())


def test_server_options_choose_openvino_and_its_precision_per_model(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text(
        '[server]\nopenvino_cache_dir = "/var/cache/ov"\n'
        '[models.a]\npath = "a.onnx"\nbackend = "openvino"\ninference_precision = "bf16"\n'
        'performance_mode = "throughput"\n'
        '[models.b]\npath = "b.onnx"\n'
    )
    config = load_config({"config": str(toml)}, env={})
    a, b = config.models
    assert (a.backend, a.inference_precision, a.performance_mode) == ("openvino", "bf16", "throughput")
    assert (b.inference_precision, b.performance_mode) == ("fp32", "latency")  # never bf16 by default
    assert config.openvino_cache_dir == "/var/cache/ov"
    with pytest.raises(ConfigError, match="inference_precision must be one of fp32, bf16"):
        load_config({"model": ["m=m.onnx"], "inference_precision": "fp16"}, env={})
    with pytest.raises(ConfigError, match="performance_mode"):
        load_config({"model": ["m=m.onnx"]}, env={"RESNET_SERVE_PERFORMANCE_MODE": "fast"})


def _config_json(**extra: object) -> dict[str, object]:
    return {
        "format": "resnet-serve-repository/1",
        "name": "m",
        "backend": "openvino",
        "platform": "openvino",
        "max_batch_size": 8,
        "input": {"name": "input", "dtype": "float32", "shape": [1, 8, 8]},
        "output": {"name": "logits", "dtype": "float32", "shape": [10]},
        "labels": [],
        "preprocess": {},
        "dynamic_batching": {"preferred_batch_sizes": [], "max_queue_delay_us": 0},
        "instance_count": 2,
        "versions": [{"version": 1, "file": "model.onnx", "precision": "fp32", "sha256": "", "arch": "",
                      "source_sha256": ""}],
        **extra,
    }  # fmt: skip


def test_a_repository_config_selects_openvino_its_precision_mode_and_threads() -> None:
    plain = parse_config(_config_json(), "config.json")
    assert plain.backend == "openvino" and plain.inference_precision is None  # absent: the server's default
    assert "inference_precision" not in plain.to_json()
    tuned = parse_config(
        _config_json(inference_precision="bf16", performance_mode="throughput", intra_op_threads=1), "c.json"
    )
    assert (tuned.inference_precision, tuned.performance_mode, tuned.intra_op_threads) == (
        "bf16",
        "throughput",
        1,
    )
    assert parse_config(tuned.to_json(), "again") == tuned
    with pytest.raises(RepositoryError, match="inference_precision 'int4' is not one of fp32, bf16"):
        parse_config(_config_json(inference_precision="int4"), "c.json")
    with pytest.raises(RepositoryError, match="intra_op_threads must be ≥ 0"):
        parse_config(_config_json(intra_op_threads=-1), "c.json")


@needs_openvino
def test_a_model_with_string_tensors_is_refused_at_load_naming_the_backend_that_serves_it(
    tmp_path: Path,
) -> None:
    from triton_models import write_simple_string

    model = write_simple_string(tmp_path) / "1" / "model.onnx"
    with pytest.raises(BackendError, match=r"'INPUT0' is a string \(BYTES\) tensor.*backend onnxruntime"):
        create_backends(model, "openvino", 1, InstanceOptions())
    (served,) = create_backends(model, "onnxruntime", 1, InstanceOptions())  # the one that serves it
    assert [s.dtype.kind for s in served.info.inputs] == ["O", "O"]
