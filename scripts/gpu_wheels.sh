#!/usr/bin/env bash
# The wheels the GPU check's image-decode step needs on a GPU node without network (docs/gpu.md):
# simplejpeg (turbo) and nvImageCodec with nvJPEG (nvimgcodec), for the node's Python and CUDA. Measured for
# Python 3.12 / CUDA 13: 29.3 MB in all (nvImageCodec 25.0, nvJPEG 3.8, simplejpeg 0.4), within the 64 MiB a
# device run carries with the ~2 MB working tree.
#
#   scripts/gpu_wheels.sh                        # artifacts/gpu_wheels, Python 3.12, CUDA 13
#   PYTHON_VERSION=3.11 CUDA=12 scripts/gpu_wheels.sh /tmp/wheels
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-artifacts/gpu_wheels}"
python_version="${PYTHON_VERSION:-3.12}"
cuda="${CUDA:-13}"
if [[ "$cuda" == 12 ]]; then nvjpeg=nvidia-nvjpeg-cu12; else nvjpeg="nvidia-nvjpeg>=$cuda,<$((cuda + 1))"; fi
pip="${PIP:-$(command -v pip || echo .venv/bin/pip)}"
"$pip" download --no-deps --only-binary=:all: --python-version "$python_version" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$out" simplejpeg==1.9.0 "nvidia-nvimgcodec-cu$cuda" "$nvjpeg"
du -ch "$out"/*.whl | tail -1
