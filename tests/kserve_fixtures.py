"""A real `resnet-serve serve` process for the KServe v2 tests, driven by the real tritonclient.

The server runs as a subprocess (started the way users start it), serving a repository with the tiny
classifier of tests/support/tiny_model.py: `tiny` versions 1 and 2 (different weights, version policy
"all"), `spare` (for load/unload) and `half`, an FP16 model. Expected outputs come from running the same
ONNX files with ONNX Runtime in the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.tiny_model import TINY_LABELS, TINY_PREPROCESS, write_tiny_onnx

from resnet_serve.formats.metadata import LABELS_KEY, PRECISION_KEY, PREPROCESS_KEY
from resnet_serve.server.launch import start, stop

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0

__all__ = ["TINY_LABELS", "TINY_PREPROCESS", "KServeServer", "reference_logits", "start_server"]


@dataclass
class KServeServer:
    url: str
    metrics_url: str
    repository: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    http_url: str = ""  # host:port of the KServe v2 HTTP/REST API

    def model_file(self, name: str, version: str) -> Path:
        return self.repository / name / version / "model.onnx"

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the server's Prometheus exposition (0 when the series does not exist)."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def reference_logits(model_file: Path, x: np.ndarray) -> np.ndarray:
    """The model's output computed in-process with ONNX Runtime: the oracle the server must match."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    if session.get_inputs()[0].type == "tensor(float16)":
        x = x.astype(np.float16)
    out: np.ndarray = session.run(["logits"], {"input": x})[0]
    return out


def assert_top_k_strings(strings: Any, row: np.ndarray, k: int) -> None:
    """Triton's classification strings "score:index:label" for one row of logits, against the reference row.

    The scores come from the serving runtime's kernels, which differ from the reference's in the last float
    bits on some CPUs (2.835805 against 2.835806): numbers are compared with a tolerance, never as formatted
    strings, and the ranking is checked against the reference's values rather than its exact tie order."""
    texts = [s.decode() if isinstance(s, bytes) else str(s) for s in strings]
    parsed = [text.split(":", 2) for text in texts]
    assert all(len(fields) == 3 for fields in parsed), texts
    scores = [float(score) for score, _, _ in parsed]
    indices = [int(index) for _, index, _ in parsed]
    assert len(indices) == k and len(set(indices)) == k, texts
    assert [label for _, _, label in parsed] == [TINY_LABELS[i] for i in indices]
    assert scores == sorted(scores, reverse=True), texts
    np.testing.assert_allclose(scores, row[indices], rtol=1e-5, atol=1e-5)
    assert min(row[indices]) >= np.sort(row)[-k] - 1e-5, (texts, row)


def write_half_onnx(path: Path) -> Path:
    """An FP16-in, FP16-out classifier (N, 1, 8, 8) → (N, 10): casts around a float32 Gemm, so ORT's CPU
    kernels run it; it stands for the FP16 models `export` writes."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.2, (10, 64)).astype(np.float32)
    b = rng.normal(0, 0.1, (10,)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["input"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["x32"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], ["y32"], transB=1),
        helper.make_node("Cast", ["y32"], ["logits"], to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "half",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {
        LABELS_KEY: json.dumps(TINY_LABELS),
        PREPROCESS_KEY: json.dumps(TINY_PREPROCESS),
        PRECISION_KEY: "fp16",
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def start_server(tmp: Path, *extra: str) -> KServeServer:
    repository = tmp / "repository"
    write_tiny_onnx(repository / "tiny" / "1" / "model.onnx", seed=0)
    write_half_onnx(repository / "half" / "1" / "model.onnx")
    write_tiny_onnx(repository / "tiny" / "2" / "model.onnx", seed=1)
    write_tiny_onnx(repository / "spare" / "1" / "model.onnx", seed=2)
    log_path = tmp / "server.log"
    process, ready = start(
        "--model-repository", str(repository),
        "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--version-policy", "all",
        "--max-queue-delay-ms", "2", "--intra-op-threads", "1", "--preprocess-threads", "1",
        "--http-port", "0", *extra,
        ready_file=tmp / "ready.json", log=log_path, timeout_s=START_TIMEOUT_S,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert ready.metrics_url is not None and ready.http_port is not None
    return KServeServer(
        ready.grpc_target, ready.metrics_url, repository, process, log_path, f"127.0.0.1:{ready.http_port}"
    )


def stop_server(server: KServeServer) -> None:
    stop(server.process)


@pytest.fixture(scope="module")
def kserve_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServeServer]:
    # explicit: the repository tests load and unload `spare` (model control is off by default, as in Triton).
    server = start_server(tmp_path_factory.mktemp("kserve"), "--model-control-mode", "explicit")
    try:
        yield server
    finally:
        stop_server(server)
