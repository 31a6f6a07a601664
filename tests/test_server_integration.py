"""The real `resnet-serve serve` process: classify real images over gRPC, health, /metrics, bad input."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from support.runtimes import RUNTIMES, runtime_flags
from support.server import ServerProcess, encode, scrape, start_server, stop_server
from support.tiny_model import TINY_LABELS, TINY_PREPROCESS

from resnet_serve.formats.preprocess import eval_pixels, normalize_array
from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def reference_probabilities(model_path: Path, img: Image.Image) -> np.ndarray:
    """What the server must answer: the training-side preprocessing and a bare ONNX Runtime session."""
    pixels = eval_pixels(img, TINY_PREPROCESS)[None]
    x = normalize_array(pixels, TINY_PREPROCESS)
    logits = ort.InferenceSession(str(model_path)).run(None, {"input": x})[0][0].astype(np.float64)
    p = np.exp(logits - logits.max())
    return np.asarray(p / p.sum())


def real_images() -> list[Image.Image]:
    from sklearn.datasets import load_digits, load_sample_image

    digits = load_digits()
    imgs = [Image.fromarray(np.round(d * 255 / 16).astype(np.uint8), mode="L") for d in digits.images[:4]]
    imgs += [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    return imgs


@pytest.fixture(scope="module", params=RUNTIMES)
def server(
    tiny_onnx: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # Exact JPEG decoding, so answers can be compared with the training-side preprocessing bit for bit.
    # Every test here runs on each runtime (support.runtimes.RUNTIMES).
    runtime = runtime_flags(request.param, tmp_path_factory.mktemp("openvino-cache"))
    proc = start_server(
        "--model",
        f"tiny={tiny_onnx}",
        "--max-queue-delay-ms",
        "2",
        "--jpeg-draft",
        "false",
        *runtime,
    )
    yield proc
    assert stop_server(proc) == 0, "".join(proc.log)


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.ImageClassifierStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]


def request_count(text: str) -> float:
    pattern = r'resnet_serve_request_duration_seconds_count\{model="tiny",version="1"\} (\S+)'
    match = re.search(pattern, text)
    return float(match[1]) if match else 0.0


def test_classify_real_images_matches_bare_onnxruntime(
    server: ServerProcess, stub: pb_grpc.ImageClassifierStub, tiny_onnx: Path
) -> None:
    for img in real_images():
        fmt = "JPEG" if img.mode == "RGB" else "PNG"
        data = encode(img, fmt)
        decoded = Image.open(io.BytesIO(data))  # compare against what was sent (JPEG is lossy)
        expected = reference_probabilities(tiny_onnx, decoded)
        response = stub.Classify(pb.ClassifyRequest(image=data, top_k=3), timeout=10)
        order = np.argsort(-expected, kind="stable")[:3]
        assert [p.index for p in response.predictions] == order.tolist()
        assert [p.label for p in response.predictions] == [TINY_LABELS[i] for i in order]
        np.testing.assert_allclose([p.score for p in response.predictions], expected[order], rtol=1e-4)
        assert (response.model, response.version) == ("tiny", "1")
        timing = response.timing
        assert timing.batch_size >= 1
        assert timing.total_us >= timing.queue_us + timing.compute_us > 0


def test_health_reports_serving(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "resnetserve.v1.ImageClassifier"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_count_requests(server: ServerProcess, stub: pb_grpc.ImageClassifierStub) -> None:
    before = request_count(scrape(server))
    data = encode(real_images()[0])
    for _ in range(3):
        stub.Classify(pb.ClassifyRequest(image=data), timeout=10)
    after = scrape(server)
    assert request_count(after) == before + 3
    assert 'resnet_serve_batch_size_count{model="tiny",version="1"}' in after


def test_corrupt_image_is_invalid_argument_and_server_keeps_serving(
    server: ServerProcess, stub: pb_grpc.ImageClassifierStub
) -> None:
    good = encode(real_images()[1])
    for bad in (b"not an image", good[: len(good) // 2], b""):
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(pb.ClassifyRequest(image=bad), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "image" in (info.value.details() or "")
    assert stub.Classify(pb.ClassifyRequest(image=good), timeout=10).predictions


def test_malformed_request_is_invalid_argument(server: ServerProcess) -> None:
    # image (field 3) announced as 5 bytes, 3 sent: gRPC alone would answer UNKNOWN and log a traceback.
    with grpc.insecure_channel(server.target) as channel:
        classify = channel.unary_unary("/resnetserve.v1.ImageClassifier/Classify", None, None)
        with pytest.raises(grpc.RpcError) as info:
            classify(b"\x1a\x05abc", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (info.value.details() or "")


def test_malformed_stream_item_is_invalid_argument(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream("/resnetserve.v1.ImageClassifier/ClassifyStream", None, None)
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([b"\x1a\x05abc"]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (info.value.details() or "")


def test_unknown_model_and_top_k_above_the_classes(stub: pb_grpc.ImageClassifierStub) -> None:
    data = encode(real_images()[0])
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(model="nope", image=data), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(model="tiny", version="7", image=data), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # Above the number of classes: every class, as KServe's classification extension caps it (was 400).
    capped = stub.Classify(pb.ClassifyRequest(image=data, top_k=11), timeout=10)
    assert sorted(p.index for p in capped.predictions) == list(range(10))


def test_batch_and_stream_answer_every_image_in_order(stub: pb_grpc.ImageClassifierStub) -> None:
    images = [encode(img, "PNG") for img in real_images()[:4]]
    single = [stub.Classify(pb.ClassifyRequest(image=d, top_k=2), timeout=10) for d in images]
    batch = stub.ClassifyBatch(pb.ClassifyBatchRequest(images=[images[0], b"junk", *images[1:]], top_k=2))
    assert batch.results[1].WhichOneof("result") == "error"
    assert batch.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    answered = [r.response for i, r in enumerate(batch.results) if i != 1]
    assert [[p.index for p in r.predictions] for r in answered] == [
        [p.index for p in r.predictions] for r in single
    ]
    requests = [pb.ClassifyRequest(image=d, top_k=2, request_id=f"r{i}") for i, d in enumerate(images)]
    requests.append(pb.ClassifyRequest(image=b"junk", request_id="bad"))
    replies = {r.request_id: r for r in stub.ClassifyStream(iter(requests), timeout=10)}
    assert set(replies) == {"r0", "r1", "r2", "r3", "bad"}
    assert replies["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for i, r in enumerate(single):
        assert [p.index for p in replies[f"r{i}"].response.predictions] == [p.index for p in r.predictions]


def test_list_models_reports_state_and_geometry(stub: pb_grpc.ImageClassifierStub) -> None:
    (model,) = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
    assert model.name == "tiny" and model.is_default
    assert [(v.version, v.state) for v in model.versions] == [("1", "READY")]
    assert list(model.input_shape) == [1, 8, 8]
    assert list(model.labels) == TINY_LABELS


def test_concurrent_requests_are_batched_and_answered_as_if_alone(
    server: ServerProcess, stub: pb_grpc.ImageClassifierStub
) -> None:
    images = [encode(img, "PNG") for img in real_images()[:4]] * 8
    alone = [stub.Classify(pb.ClassifyRequest(image=d, top_k=3), timeout=10) for d in images[:4]]
    futures = [stub.Classify.future(pb.ClassifyRequest(image=d, top_k=3), timeout=30) for d in images]
    together = [f.result() for f in futures]
    sizes = [r.timing.batch_size for r in together]
    assert max(sizes) > 1, sizes  # the server's 2 ms queue delay lets concurrent requests share a batch
    assert max(sizes) <= 32  # the default max_batch_size
    for i, response in enumerate(together):
        expected = alone[i % 4].predictions
        assert [p.index for p in response.predictions] == [p.index for p in expected]
        assert [p.score for p in response.predictions] == [p.score for p in expected]
