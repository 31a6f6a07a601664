"""Triton's system shared-memory extension over HTTP/REST: the real `tritonclient.http` and
`tritonclient.utils.shared_memory` against a real server process, with the answers of the plain path and the
same misuse errors as over gRPC (tests/test_kserve_shm.py), as HTTP statuses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from support.server import ServerProcess, start_server, stop_server
from support.tiny_model import write_tiny_onnx
from test_kserve_shm import OUT_ROW_BYTES, ROW_BYTES, SHAPE, batch, region
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

__all__ = ["region"]  # the client-side regions fixture, shared with the gRPC tests


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tiny = write_tiny_onnx(tmp_path_factory.mktemp("http-shm") / "tiny.onnx")
    process = start_server("--model", f"tiny={tiny}", "--max-batch-size", "8", "--http-port", "0")
    try:
        yield process
    finally:
        assert stop_server(process) == 0, "".join(process.log)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(f"127.0.0.1:{server.ready.http_port}")
    try:
        yield client
    finally:
        client.unregister_system_shared_memory()
        client.close()


def plain_logits(client: th.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    tensor = th.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out: np.ndarray = client.infer("tiny", [tensor]).as_numpy("logits")
    return out


def shm_input(name: str, rows: int, offset: int = 0, byte_size: int | None = None) -> th.InferInput:
    tensor = th.InferInput("input", [rows, *SHAPE], "FP32")
    tensor.set_shared_memory(name, rows * ROW_BYTES if byte_size is None else byte_size, offset)
    return tensor


def shm_output(name: str, rows: int, byte_size: int | None = None) -> th.InferRequestedOutput:
    output = th.InferRequestedOutput("logits")
    output.set_shared_memory(name, rows * OUT_ROW_BYTES if byte_size is None else byte_size)
    return output


def test_round_trip_over_http_gives_the_answers_of_the_plain_path(
    client: th.InferenceServerClient, region: Callable[[int], tuple[Any, str]]
) -> None:
    rows = 4
    x = batch(rows, seed=5)
    handle_in, key_in = region(rows * ROW_BYTES + 32)
    handle_out, key_out = region(rows * OUT_ROW_BYTES)
    shm.set_shared_memory_region(handle_in, [x], offset=32)
    client.register_system_shared_memory("in", key_in, rows * ROW_BYTES + 32)
    client.register_system_shared_memory("out", key_out, rows * OUT_ROW_BYTES)
    regions = {r["name"] for r in client.get_system_shared_memory_status()}
    assert regions == {"in", "out"}
    result = client.infer("tiny", [shm_input("in", rows, offset=32)], outputs=[shm_output("out", rows)])
    output = result.get_output("logits")
    assert output is not None and output["parameters"]["shared_memory_region"] == "out"
    # The answer is in the region, not the body (tritonclient reads it from the region, as with Triton).
    assert "data" not in output and "binary_data_size" not in output["parameters"]
    got = shm.get_contents_as_numpy(handle_out, np.float32, [rows, 10])
    np.testing.assert_array_equal(got, plain_logits(client, x))
    # Input in shared memory, output in the body.
    np.testing.assert_array_equal(
        client.infer("tiny", [shm_input("in", rows, offset=32)]).as_numpy("logits"), got
    )


def test_misuse_over_http_is_a_clear_400_and_the_server_stays_healthy(
    client: th.InferenceServerClient, region: Callable[[int], tuple[Any, str]]
) -> None:
    _, key = region(1024)
    client.register_system_shared_memory("r", key, 1024)
    cases = [
        ([shm_input("nope", 2)], None, "shared memory region 'nope' is not registered"),
        ([shm_input("r", 2, offset=1000)], None, "runs past the end of shared memory region 'r'"),
        ([shm_input("r", 2, byte_size=100)], None, "shared_memory_byte_size 100 does not match FP32"),
        ([shm_input("r", 2)], [shm_output("r", 2, byte_size=8)], "too small for FP32 [2, 10]"),
    ]
    for inputs, outputs, expected in cases:
        with pytest.raises(InferenceServerException) as info:
            client.infer("tiny", inputs, outputs=outputs)
        assert expected in str(info.value.message()), info.value.message()
        assert str(info.value.status()) == "400"
        assert client.is_server_ready() and plain_logits(client, batch(1)).shape == (1, 10)
    with pytest.raises(InferenceServerException) as info:
        client.register_system_shared_memory("r", key, 64)
    assert "already registered" in str(info.value.message())
    client.unregister_system_shared_memory("r")
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [shm_input("r", 2)])
    assert "not registered" in str(info.value.message())
