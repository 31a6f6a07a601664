"""A clean end of drain: clients that keep sending through a SIGTERM shutdown get an answer or UNAVAILABLE
(which they retry), never CANCELLED (which they do not), whenever their request arrives."""

from __future__ import annotations

import json
import signal
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from support.server import GRPC_CORE_LINE, encode, start_server, stop_server
from support.tiny_model import write_tiny_onnx

from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.protos import grpc_service_pb2 as kpb
from resnet_serve.protos import grpc_service_pb2_grpc as kpb_grpc
from resnet_serve.server.models.manager import GRACE_OVER, NOT_ACCEPTING

pytestmark = pytest.mark.slow

SENDERS = 6  # per API
IN_FLIGHT = 4  # requests each sender keeps open


def image() -> bytes:
    return encode(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L"))


def senders(target: str, stop: threading.Event, codes: Counter[str]) -> list[threading.Thread]:
    data = image()
    infer = kpb.ModelInferRequest(
        model_name="slow",
        inputs=[kpb.ModelInferRequest.InferInputTensor(name="input", datatype="BYTES", shape=[1])],
        raw_input_contents=[struct.pack("<I", len(data)) + data],
    )
    lock = threading.Lock()

    def loop(make: Callable[[grpc.Channel], Callable[..., Any]], request: object) -> None:
        # grpc shares one connection among channels to the same target: all reconnect when it closes.
        with grpc.insecure_channel(target) as channel:
            send = make(channel)
            while not stop.is_set():
                futures = [send(request, timeout=20) for _ in range(IN_FLIGHT)]
                for future in futures:
                    try:
                        future.result()
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as exc:
                        code = exc.code()
                    with lock:
                        codes[code.name] += 1
                time.sleep(0.005)

    def classify(channel: grpc.Channel) -> Callable[..., Any]:
        return pb_grpc.ImageClassifierStub(channel).Classify.future  # type: ignore[no-untyped-call,no-any-return]

    def model_infer(channel: grpc.Channel) -> Callable[..., Any]:
        return kpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future  # type: ignore[no-untyped-call,no-any-return]

    work = [(classify, pb.ClassifyRequest(model="slow", image=data)), (model_infer, infer)]
    return [threading.Thread(target=loop, args=item) for item in work for _ in range(SENDERS)]


def start_load(threads: list[threading.Thread], codes: Counter[str], answers: int, within_s: float) -> None:
    """Start the senders and wait until `answers` requests came back OK (the load is going), or fail."""
    for t in threads:
        t.start()
    end = time.monotonic() + within_s
    while codes["OK"] < answers and time.monotonic() < end:
        time.sleep(0.01)
    assert codes["OK"] >= answers, f"the load never got going: {dict(codes)}"


@pytest.mark.parametrize("run", range(2))
def test_requests_sent_through_a_sigterm_shutdown_are_answered_or_unavailable(
    tmp_path: Path, run: int
) -> None:
    # A few ms of compute per image, one image per batch: a backlog exists when the signal arrives.
    model = write_tiny_onnx(tmp_path / "slow.onnx", slow_layers=20)
    server = start_server("--model", f"slow={model}", "--max-batch-size", "1", "--grace-period-s", "30")
    codes: Counter[str] = Counter()
    stop = threading.Event()
    threads = senders(server.target, stop, codes)
    try:
        start_load(threads, codes, answers=50, within_s=20)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, "".join(server.log)
        # The port is closed: a few more rounds see the refused connection as UNAVAILABLE.
        after = sum(codes.values())
        end = time.monotonic() + 10
        while sum(codes.values()) < after + 2 * SENDERS * IN_FLIGHT and time.monotonic() < end:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        stop_server(server)
    assert not any(t.is_alive() for t in threads), "a request was never answered"
    assert set(codes) <= {"OK", "UNAVAILABLE"}, dict(codes)
    assert codes["UNAVAILABLE"] > 0
    # gRPC core's own lines ("E1207 12:00:00.000000 123 file.cc:186] ...") break JSON logs and trip alerts.
    core = [line for line in server.log if GRPC_CORE_LINE.match(line)]
    assert not core, core


@pytest.mark.parametrize("workers", ["1", "2"])
def test_requests_still_waiting_when_the_grace_period_ends_are_answered_unavailable(
    tmp_path: Path, workers: str
) -> None:
    # ~1.5 s of queued compute against a 0.3 s grace period: what has not run by then is answered UNAVAILABLE
    # (gRPC) or 503 (HTTP) with a message saying why, not cut off by the closing connections.
    model = write_tiny_onnx(tmp_path / "slow.onnx", slow_layers=600)
    server = start_server(
        "--model", f"slow={model}", "--max-batch-size", "1", "--intra-op-threads", "1",
        "--grace-period-s", "0.3", "--workers", workers,
    )  # fmt: skip
    assert server.ready.http is not None
    x = np.ones((1, 1, 8, 8), dtype=np.float32)
    request = kpb.ModelInferRequest(
        model_name="slow",
        inputs=[kpb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1, 8, 8])],
        raw_input_contents=[x.tobytes()],
    )
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": x.ravel().tolist()}]}
    ).encode()
    url = f"{server.ready.http_url}/v2/models/slow/infer"
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()

    def over_grpc() -> None:
        with grpc.insecure_channel(server.target) as channel:
            try:
                kpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)  # type: ignore[no-untyped-call]
                outcome = ("OK", "")
            except grpc.RpcError as exc:
                outcome = (exc.code().name, str(exc.details()))
        with lock:
            outcomes.append(outcome)

    def over_http() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30):
                outcome = ("OK", "")
        except urllib.error.HTTPError as exc:
            outcome = (str(exc.code), json.loads(exc.read())["error"])
        except OSError as exc:  # the connection closed under it
            outcome = (type(exc).__name__, str(exc))
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=f) for _ in range(24) for f in (over_grpc, over_http)]
    try:
        for t in threads:
            t.start()
        with grpc.insecure_channel(server.target) as channel:  # the first answers: the backlog is queued
            stub = kpb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            end = time.monotonic() + 20
            while (
                not stub.ModelStatistics(kpb.ModelStatisticsRequest(name="slow"), timeout=5)
                .model_stats[0]
                .inference_stats.success.count
            ):
                assert time.monotonic() < end, "".join(server.log)
                time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=15) == 0, "".join(server.log)
        for t in threads:
            t.join(30)
    finally:
        stop_server(server)
    assert not any(t.is_alive() for t in threads), "a request was never answered"
    refused = [o for o in outcomes if o[0] != "OK"]
    assert any(message == GRACE_OVER for _, message in refused), outcomes  # the backlog outlasted the grace
    # A request that a slow thread sent only after the signal is refused as it arrives.
    assert all(
        code in ("UNAVAILABLE", "503") and message in (GRACE_OVER, NOT_ACCEPTING) for code, message in refused
    ), refused
