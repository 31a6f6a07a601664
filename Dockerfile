# syntax=docker/dockerfile:1
# resnet-serve's CPU serving image: the gRPC server with ONNX Runtime (CPU) and Prometheus metrics, no torch.
# The GPU image is Dockerfile.gpu; docs/deploy.md has every step and what was verified without a Docker engine.
#
#   docker build -t resnet-serve:cpu .
#   docker run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/model_repository:/models:ro" resnet-serve:cpu
#
# Stage 1 builds our wheel and the wheels of everything [serve] needs, at the versions of constraints.txt;
# stage 2 installs them offline (--no-index), so the runtime image has no build context, compiler or cache.
#
# BASE_IMAGE: the official python:3.11-slim by default; `make image-test` builds on a stand-in of it made
# without a registry (scripts/image_test.sh). Both stages use it, so the wheels match the runtime's Python.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore keeps .venv/, artifacts/, tests/ and the rest of a dev checkout out of the context.
COPY . .
RUN pip wheel --wheel-dir /wheels -c constraints.txt ".[serve]"

FROM ${BASE_IMAGE}
# ORT_DISABLE_TELEMETRY: ONNX Runtime would try to save a telemetry device id under $HOME, which this user
# lacks (and a --read-only root forbids), and print a non-JSON warning at every start.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RESNET_SERVE_MODEL_REPOSITORY=/models \
    RESNET_SERVE_LOG_FORMAT=json \
    ORT_DISABLE_TELEMETRY=1
# Offline (--no-index) from the wheels stage 1 built at constraints.txt's versions: pinned there, not here.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "resnet-serve[serve]" \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin resnet \
    && mkdir -p /models \
    && chown resnet /models
USER 10001
WORKDIR /home/resnet
# The model repository (`resnet-serve package --repo ...`): mount it read-only.
VOLUME ["/models"]
# 8000: HTTP/REST (KServe v2), 8001: gRPC (image API, KServe v2, health, reflection), 8002: /metrics.
EXPOSE 8000 8001 8002
# The health probe asks the grpc.health.v1 service on this container's gRPC port: NOT_SERVING while no model
# is ready and from the moment a drain starts. start-period covers loading and warming the models.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["resnet-serve", "health", "--timeout", "3"]
# Exec form, no shell: the server is PID 1 and receives SIGTERM itself, then drains (grace period 15 s by
# default: give `docker stop` more, e.g. `docker stop -t 30`; docker-compose.yml sets stop_grace_period).
# Options come from RESNET_SERVE_* variables (above) or arguments after the image name.
ENTRYPOINT ["resnet-serve", "entrypoint"]
