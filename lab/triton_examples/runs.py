"""Which of Triton's example clients run here, with which flags, against which server.

Out of scope, so not listed: the sequence-batching examples (simple_*_sequence_*, a non-goal), decoupled
`simple_grpc_custom_repeat.py` and the ensemble `ensemble_image_client.py` (non-goals), the two
`simple_*_health_metadata.py` (they require the server's name to be "triton"; resnet-serve keeps its own),
and the CUDA shared-memory `simple_*_cudashm_client.py` (they need a GPU).

Every run listed must pass (tests/test_triton_examples.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The servers a run uses: the shared one, one of its own in explicit model-control mode (the example unloads
# `simple` and counts the repository's models), or one on Triton's default ports in a private network
# namespace (memory_growth_test.py has no -u flag: it always dials localhost:8000 / 8001).
MAIN: Final = "main"
GRPC_CONTROL: Final = "grpc-control"
HTTP_CONTROL: Final = "http-control"
DEFAULT_PORTS: Final = "default-ports"


@dataclass(frozen=True)
class Run:
    script: str  # a file in tests/triton_example_clients/
    args: tuple[str, ...] = ()  # {grpc}, {http}, {image}, {images}: filled in when it runs
    server: str = MAIN

    @property
    def id(self) -> str:
        flags = " ".join(a for a in self.args if not a.startswith("{") and a not in ("-u",))
        return f"{self.script.removesuffix('.py')} {flags}".strip()


G: Final = ("-u", "{grpc}")
H: Final = ("-u", "{http}")

RUNS: Final = (
    Run("grpc_client.py", G),
    Run("grpc_explicit_byte_content_client.py", G),
    Run("grpc_explicit_int8_content_client.py", G),
    Run("grpc_explicit_int_content_client.py", G),
    Run(
        "grpc_image_client.py",
        (*G, "-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION", "{image}"),
    ),
    Run("grpc_image_client.py", (*G, "-m", "densenet_onnx", "-a", "{image}")),
    Run("grpc_image_client.py", (*G, "-m", "densenet_onnx", "--streaming", "{image}")),
    Run(
        "grpc_image_client.py",
        (*G, "-m", "inception_batch", "-b", "2", "-s", "INCEPTION", "{images}"),
    ),
    Run(
        "image_client.py",
        (*H, "-i", "http", "-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION", "{image}"),
    ),
    Run(
        "image_client.py",
        (*G, "-i", "grpc", "-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION", "{image}"),
    ),
    Run("image_client.py", (*H, "-i", "http", "-a", "-m", "densenet_onnx", "{image}")),
    Run("image_client.py", (*G, "-i", "grpc", "-a", "-m", "densenet_onnx", "{image}")),
    Run(
        "image_client.py",
        (*G, "-i", "grpc", "--streaming", "-m", "densenet_onnx", "{image}"),
    ),
    Run(
        "image_client.py",
        (*H, "-i", "http", "-m", "inception_onnx", "-s", "INCEPTION", "{image}"),
    ),
    Run(
        "image_client.py",
        (*H, "-i", "http", "-m", "inception_batch", "-b", "2", "-s", "INCEPTION", "{images}"),
    ),
    Run(
        "image_client.py",
        (*G, "-i", "grpc", "-m", "inception_batch", "-b", "2", "-s", "VGG", "{images}"),
    ),
    Run("memory_growth_test.py", ("-i", "grpc", "-r", "20"), DEFAULT_PORTS),
    Run("memory_growth_test.py", ("-i", "http", "-r", "20"), DEFAULT_PORTS),
    Run("reuse_infer_objects_client.py", (*G, "-i", "grpc")),
    Run("reuse_infer_objects_client.py", (*H, "-i", "http")),
    Run("simple_grpc_aio_infer_client.py", G),
    Run("simple_grpc_aio_infer_client.py", (*G, "-C", "gzip")),
    Run("simple_grpc_async_infer_client.py", G),
    Run("simple_grpc_custom_args_client.py", G),
    Run("simple_grpc_infer_client.py", G),
    Run("simple_grpc_infer_client.py", (*G, "-C", "gzip")),
    Run("simple_grpc_infer_client.py", (*G, "-C", "deflate")),
    Run("simple_grpc_keepalive_client.py", G),
    Run("simple_grpc_model_control.py", G, GRPC_CONTROL),
    Run("simple_grpc_shm_client.py", G),
    Run("simple_grpc_shm_string_client.py", G),
    Run("simple_grpc_string_infer_client.py", G),
    Run("simple_http_aio_infer_client.py", H),
    Run(
        "simple_http_aio_infer_client.py",
        (*H, "--request-compression-algorithm", "gzip", "--response-compression-algorithm", "gzip"),
    ),
    Run("simple_http_async_infer_client.py", H),
    Run("simple_http_infer_client.py", H),
    Run("simple_http_infer_client.py", (*H, "--request-compression-algorithm", "gzip")),
    Run("simple_http_infer_client.py", (*H, "--request-compression-algorithm", "deflate")),
    Run("simple_http_infer_client.py", (*H, "--response-compression-algorithm", "gzip")),
    Run("simple_http_infer_client.py", (*H, "--response-compression-algorithm", "deflate")),
    Run("simple_http_infer_client.py", (*H, "-H", "x-request-id:triton-example")),
    Run("simple_http_model_control.py", H, HTTP_CONTROL),
    Run("simple_http_shm_client.py", H),
    Run("simple_http_shm_string_client.py", H),
    Run("simple_http_string_infer_client.py", H),
)
