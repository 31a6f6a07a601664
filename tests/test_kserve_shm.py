"""Triton's system shared-memory extension end to end: the real `tritonclient.grpc` and
`tritonclient.utils.shared_memory` against a real server process."""

from __future__ import annotations

import functools
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.utils.shared_memory as shm
from support.server import ServerProcess, scrape, start_server, stop_server
from support.tiny_model import write_tiny_onnx
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

SHAPE = (1, 8, 8)
ROW_BYTES = 4 * 8 * 8  # one FP32 [1, 8, 8] row
OUT_ROW_BYTES = 4 * 10  # one FP32 [10] row of logits


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("shm")
    tiny = write_tiny_onnx(tmp / "tiny.onnx")
    # 20-100 ms of compute per row, one row per batch: requests queue behind each other.
    slow = write_tiny_onnx(tmp / "slow.onnx", slow_layers=200)
    process = start_server(
        "--model", f"tiny={tiny}", "--model", f"slow={slow}", "--max-batch-size", "8",
        "--intra-op-threads", "1", "--preprocess-threads", "1",
    )  # fmt: skip
    try:
        yield process
    finally:
        assert stop_server(process) == 0, "".join(process.log)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[tc.InferenceServerClient]:
    client = tc.InferenceServerClient(server.target)
    try:
        yield client
    finally:
        client.unregister_system_shared_memory()  # every region this test left registered
        client.close()


@pytest.fixture
def region() -> Iterator[Callable[[int], tuple[Any, str]]]:
    """Creates client-side regions as a Triton user does: make(byte_size) → (handle, key)."""
    handles: list[Any] = []

    def make(byte_size: int) -> tuple[Any, str]:
        key = f"/resnet_serve_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key.lstrip("/"), key, byte_size)
        handles.append(handle)
        return handle, key

    yield make
    for handle in handles:
        shm.destroy_shared_memory_region(handle)


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, *SHAPE)).astype(np.float32)


def plain_logits(client: tc.InferenceServerClient, x: np.ndarray, model: str = "tiny") -> np.ndarray:
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out: np.ndarray = client.infer(model, [tensor]).as_numpy("logits")
    return out


def shm_input(name: str, rows: int, offset: int = 0, byte_size: int | None = None) -> tc.InferInput:
    tensor = tc.InferInput("input", [rows, *SHAPE], "FP32")
    tensor.set_shared_memory(name, rows * ROW_BYTES if byte_size is None else byte_size, offset)
    return tensor


def shm_output(
    name: str, rows: int, offset: int = 0, byte_size: int | None = None
) -> tc.InferRequestedOutput:
    output = tc.InferRequestedOutput("logits")
    output.set_shared_memory(name, rows * OUT_ROW_BYTES if byte_size is None else byte_size, offset)
    return output


def error_of(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def still_healthy(client: tc.InferenceServerClient) -> None:
    """The server answers a normal request correctly after a refused one."""
    assert client.is_server_ready()
    assert plain_logits(client, batch(2)).shape == (2, 10)


def maps(server: ServerProcess, key: str) -> bool:
    """Whether the server process maps the shared-memory object `key`."""
    return f"/dev/shm/{key.lstrip('/')}" in Path(f"/proc/{server.proc.pid}/maps").read_text()


def test_metadata_lists_system_shared_memory(client: tc.InferenceServerClient) -> None:
    assert "system_shared_memory" in client.get_server_metadata().extensions


def test_round_trip_in_shared_memory_gives_the_answers_of_the_plain_path(
    client: tc.InferenceServerClient, region: Callable[[int], tuple[Any, str]]
) -> None:
    rows = 5
    x = batch(rows, seed=3)
    handle_in, key_in = region(rows * ROW_BYTES + 64)
    handle_out, key_out = region(rows * OUT_ROW_BYTES)
    shm.set_shared_memory_region(handle_in, [x], offset=64)
    client.register_system_shared_memory("in", key_in, rows * ROW_BYTES + 64)
    client.register_system_shared_memory("out", key_out, rows * OUT_ROW_BYTES)
    result = client.infer("tiny", [shm_input("in", rows, offset=64)], outputs=[shm_output("out", rows)])
    output = result.get_output("logits")
    assert output.datatype == "FP32" and list(output.shape) == [rows, 10]
    assert output.parameters["shared_memory_region"].string_param == "out"
    assert output.parameters["shared_memory_byte_size"].int64_param == rows * OUT_ROW_BYTES
    assert result.get_response().raw_output_contents == [b""]  # the answer is in the region, not the message
    got = shm.get_contents_as_numpy(handle_out, np.float32, [rows, 10])
    np.testing.assert_array_equal(got, plain_logits(client, x))
    # Inputs in shared memory, outputs in the message; and the reverse.
    both = client.infer("tiny", [shm_input("in", rows, offset=64)]).as_numpy("logits")
    np.testing.assert_array_equal(both, got)
    tensor = tc.InferInput("input", [rows, *SHAPE], "FP32")
    tensor.set_data_from_numpy(x)
    client.infer("tiny", [tensor], outputs=[shm_output("out", rows)])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle_out, np.float32, [rows, 10]), got)


def test_status_lists_regions_and_unregister_releases_them(
    client: tc.InferenceServerClient, server: ServerProcess, region: Callable[[int], tuple[Any, str]]
) -> None:
    _, key = region(4096)
    client.register_system_shared_memory("a", key, 1024)
    client.register_system_shared_memory("b", key, 1024, offset=2048)
    status = client.get_system_shared_memory_status(as_json=True)
    assert sorted(
        (r["name"], r["key"], int(r.get("offset", 0)), int(r["byte_size"]))
        for r in status["regions"].values()
    ) == [("a", key, 0, 1024), ("b", key, 2048, 1024)]
    assert maps(server, key)
    client.unregister_system_shared_memory("a")
    assert list(client.get_system_shared_memory_status(as_json=True)["regions"]) == ["b"]
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    assert not maps(server, key)


def test_misuse_is_a_clear_error_and_the_server_stays_healthy(
    client: tc.InferenceServerClient, region: Callable[[int], tuple[Any, str]]
) -> None:
    rows = 2
    _, key = region(4096)
    status, message = error_of(lambda: client.register_system_shared_memory("x", "/no_such_key_here", 64))
    assert status == "StatusCode.NOT_FOUND" and "/no_such_key_here" in message
    status, message = error_of(lambda: client.register_system_shared_memory("x", key, 64, offset=4090))
    assert status == "StatusCode.INVALID_ARGUMENT" and "runs past the end" in message
    client.register_system_shared_memory("r", key, 1024)
    status, message = error_of(lambda: client.register_system_shared_memory("r", key, 64))
    assert status == "StatusCode.ALREADY_EXISTS" and "already registered" in message

    cases: list[tuple[list[tc.InferInput], list[tc.InferRequestedOutput] | None, str]] = [
        ([shm_input("nope", rows)], None, "shared memory region 'nope' is not registered"),
        (
            [shm_input("r", rows, offset=1000)],
            None,
            "runs past the end of shared memory region 'r' (1024 bytes)",
        ),
        ([shm_input("r", rows, byte_size=100)], None, "shared_memory_byte_size 100 does not match FP32"),
        (
            [shm_input("r", rows)],
            [shm_output("r", rows, offset=512, byte_size=8)],
            "too small for FP32 [2, 10]",
        ),
    ]
    for inputs, outputs, expected in cases:
        status, message = error_of(functools.partial(client.infer, "tiny", inputs, outputs=outputs))
        assert status == "StatusCode.INVALID_ARGUMENT" and expected in message, message
        still_healthy(client)
    status, message = error_of(lambda: client.get_system_shared_memory_status("nope"))
    assert status == "StatusCode.NOT_FOUND"


def test_a_region_unregistered_mid_flight_serves_its_request_then_refuses_the_next(
    client: tc.InferenceServerClient, server: ServerProcess, region: Callable[[int], tuple[Any, str]]
) -> None:
    x = batch(1, seed=9)
    handle, key = region(ROW_BYTES + OUT_ROW_BYTES)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("r", key, ROW_BYTES + OUT_ROW_BYTES)
    before = _accepted(server)
    for _ in range(24):  # a second or more of compute queued ahead of the request in shared memory
        client.async_infer("slow", [_message_input(x)], callback=lambda result, error: None)
    done: list[Any] = []
    client.async_infer(
        "slow",
        [shm_input("r", 1)],
        outputs=[shm_output("r", 1, offset=ROW_BYTES)],
        callback=lambda result, error: done.append((result, error)),
    )
    end = time.monotonic() + 30
    while _accepted(server) < before + 25 and time.monotonic() < end:
        time.sleep(0.005)
    assert not done, "the request finished before the unregister; the test would prove nothing"
    client.unregister_system_shared_memory("r")
    status, message = error_of(lambda: client.infer("slow", [shm_input("r", 1)]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "'r' is not registered" in message
    while not done and time.monotonic() < end:
        time.sleep(0.01)
    _, error = done[0]
    assert error is None, error
    got = shm.get_contents_as_numpy(handle, np.float32, [1, 10], offset=ROW_BYTES)
    np.testing.assert_array_equal(got, plain_logits(client, x, "slow"))
    assert not maps(server, key)  # released once the request was done
    still_healthy(client)


def _message_input(x: np.ndarray) -> tc.InferInput:
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _accepted(server: ServerProcess) -> float:
    """Requests to "slow" the server has taken in: in flight plus answered."""
    total = 0.0
    for line in scrape(server).splitlines():
        if 'model="slow"' in line and (
            line.startswith("resnet_serve_requests_in_flight{")
            or (line.startswith("resnet_serve_requests_total{") and 'outcome="success"' in line)
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_streamed_requests_use_shared_memory_and_classification_does_not(
    client: tc.InferenceServerClient, region: Callable[[int], tuple[Any, str]]
) -> None:
    rows = 3
    x = batch(rows, seed=4)
    handle_in, key_in = region(rows * ROW_BYTES)
    handle_out, key_out = region(1024)
    shm.set_shared_memory_region(handle_in, [x])
    client.register_system_shared_memory("in", key_in, rows * ROW_BYTES)
    client.register_system_shared_memory("out", key_out, 1024)
    # tritonclient refuses shared memory on a classification output; a client that sends it anyway is refused
    # by the server too, before any work.
    top = tc.InferRequestedOutput("logits", class_count=2)
    top._output.parameters["shared_memory_region"].string_param = "out"
    top._output.parameters["shared_memory_byte_size"].int64_param = 1024
    status, message = error_of(lambda: client.infer("tiny", [shm_input("in", rows)], outputs=[top]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "classification" in message

    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("tiny", [shm_input("in", rows)], outputs=[shm_output("out", rows)])
        _, error = answers.get(timeout=30)
    finally:
        client.stop_stream()
    assert error is None, error
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle_out, np.float32, [rows, 10]), plain_logits(client, x)
    )
