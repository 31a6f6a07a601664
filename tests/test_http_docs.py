"""Every `curl` block in docs/kserve.md's HTTP/REST section runs, as written, against a live server.

The server serves a 32×32 grey classifier as `digits` (the docs' model), HTTP and metrics on free ports; the
blocks run in order with bash in one directory holding digit.png, with the docs' ports (8000, 8002)
replaced by the live ones. A block fails the test when any command in it fails (`set -e -o pipefail`, and
the docs' curl calls use --fail-with-body).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.tiny_model import write_digits_onnx

from resnet_serve.server.launch import serve_command, stop, wait_ready

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "kserve.md"


def curl_blocks() -> list[str]:
    section = DOC.read_text().split("\n## HTTP/REST\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [b for b in blocks if "curl " in b]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    """(working directory with digit.png, HTTP port, metrics port) of a running server."""
    work = tmp_path_factory.mktemp("http-docs")
    model = write_digits_onnx(work / "model" / "digits.onnx")
    pixels = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(work / "digit.png")
    log_path = work / "server.log"
    args = serve_command(
        "--model", f"digits={model}", "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0",
        "--http-port", "0", "--intra-op-threads", "1", "--preprocess-threads", "1",
        "--model-control-mode", "explicit", "--ready-file", str(work / "ready.json"),
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        ready = wait_ready(process, work / "ready.json", 60, log=log_path)
        assert ready.http_port is not None and ready.metrics_port is not None
        yield work, ready.http_port, ready.metrics_port
    finally:
        stop(process)


def test_the_docs_have_curl_examples_for_health_infer_binary_and_errors() -> None:
    text = "".join(curl_blocks())
    for needle in (
        "/v2/health/ready",
        "/infer",
        "Inference-Header-Content-Length",
        "/classify",
        "localhost:8002",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("block", curl_blocks(), ids=lambda b: b.strip().splitlines()[0][:50])
def test_each_curl_block_runs_against_a_live_server(live: tuple[Path, int, int], block: str) -> None:
    work, http_port, metrics_port = live
    script = block.replace("localhost:8000", f"127.0.0.1:{http_port}")
    script = script.replace("localhost:8002", f"127.0.0.1:{metrics_port}")
    # python3 in the docs: the interpreter running the tests, first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    if "/infer" in script:  # the top 3 classes, as Triton's classification strings
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        strings = answer["outputs"][0]["data"]
        assert len(strings) == 3 and all(s.count(":") == 2 for s in strings)
    if "localhost:8002" in block:
        assert done.stdout.strip().endswith("404")
