"""Every Python example in docs/client.md runs, as written, against live servers.

Two servers serve the docs' `digits` model, every port free (0) on 127.0.0.1: a plaintext one for the docs'
`localhost:8001`, and one with mutual TLS and a bearer token for `localhost:8443`. Each ```python block runs
in its own interpreter in a directory holding what the docs name (digit.png, images/, ca.pem, client.pem,
client.key, token), with the docs' addresses replaced by the live ones; a block fails the test when it
raises (the examples assert what they promise).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.tiny_model import write_digits_onnx
from tls_certs import make_pki, mutual_tls_args

from resnet_serve.server.launch import NotReady, serve_command, stop, wait_ready

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "client.md"
PLAIN, SECURE = "localhost:8001", "localhost:8443"  # the addresses the docs use


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@dataclass(frozen=True)
class Live:
    work: Path
    plain: str
    secure: str


def _serve(work: Path, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    log_path, ready_file = work / f"{name}.log", work / f"{name}.ready.json"
    args = serve_command(
        "--model", f"digits={work / 'model' / 'digits.onnx'}", "--host", "127.0.0.1", "--grpc-port", "0",
        "--http-port", "0", "--metrics-port", "0", "--intra-op-threads", "1", "--preprocess-threads", "1",
        "--ready-file", str(ready_file), *extra,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        return process, wait_ready(process, ready_file, 60, log=log_path).grpc_target
    except NotReady:
        stop(process)
        raise


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    work = tmp_path_factory.mktemp("client-docs")
    write_digits_onnx(work / "model" / "digits.onnx")
    rng = np.random.default_rng(3)
    (work / "images").mkdir()
    for i in range(4):
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(work / "images" / f"{i}.png")
    shutil.copy(work / "images" / "0.png", work / "digit.png")
    pki = make_pki(work / "pki")
    for source, name in ((pki.ca, "ca.pem"), (pki.client_cert, "client.pem"), (pki.client_key, "client.key")):
        shutil.copy(source, work / name)
    (work / "token").write_text("a-token-of-at-least-16-characters\n")
    (work / "token").chmod(0o600)
    plain, plain_address = _serve(work, "plain")
    try:
        tls_args = mutual_tls_args(pki, work / "server-certs")
        secure, secure_address = _serve(work, "secure", *tls_args, "--auth-token-file", str(work / "token"))
    except BaseException:
        stop(plain)
        raise
    try:
        yield Live(work, plain_address, secure_address)
    finally:
        stop(secure)
        stop(plain)


def test_the_page_shows_every_part_of_the_client_api() -> None:
    text = "".join(python_blocks())
    for name in (
        "Client(",
        "AsyncClient(",
        ".classify(",
        ".classify_batch(",
        ".classify_stream(",
        ".list_models(",
        ".wait_until_ready(",
        "RetryPolicy(",
        "TLSConfig(",
        "ClassifyError",
        "encode_image(",
        "token=",
    ):
        assert name in text, name
    assert SECURE in text and PLAIN in text


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.split("\n\n", 1)[-1].strip()[:40])
def test_each_python_example_runs_against_a_live_server(live: Live, block: str) -> None:
    script = block.replace(PLAIN, live.plain).replace(SECURE, live.secure)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=live.work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.stdout.strip(), "every example prints what it got"
