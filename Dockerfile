# resnet-serve's serving image: the gRPC server with ONNX Runtime on CPU and Prometheus metrics, no torch.
#
#   docker build -t resnet-serve .
#   docker run -p 8001:8001 -p 8002:8002 -v $PWD/artifacts/repository:/models:ro resnet-serve
#
# GPU variant: build FROM an nvidia/cuda *-cudnn-runtime image with Python 3.11, install
# `.[serve,gpu]` and replace onnxruntime with onnxruntime-gpu (same version), then pass --device cuda.
# nvidia-ml-py (in the gpu extra) turns on the resnet_serve_gpu_* metrics; docker-compose.yml reserves
# the GPU. The TensorRT backend additionally needs the tensorrt wheel matching the image's CUDA.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
# The layer folders and resnet_serve/, whose links to them make the one installed package (docs/architecture.md).
COPY resnet_serve resnet_serve
COPY formats formats
COPY protos protos
COPY models models
COPY training training
COPY runtime runtime
COPY export export
COPY server server
COPY client client
COPY bench bench
COPY cli cli
# constraints.txt pins what the test suite ran against; the serve extra pulls neither torch nor CUDA.
RUN pip install -c constraints.txt ".[serve]" \
    && useradd --system --no-create-home resnet

USER resnet
WORKDIR /
# 8001: gRPC (image API, KServe v2, health, reflection); 8002: Prometheus /metrics.
EXPOSE 8001 8002
ENTRYPOINT ["resnet-serve", "serve"]
CMD ["--model-repository", "/models", "--log-format", "json"]
