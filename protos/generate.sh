#!/usr/bin/env bash
# Regenerates the Python code for every .proto here. Run from the repository root: `make protos`.
# Paths are rooted at the repository so the generated imports read `from protos import ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. protos/*.proto
