#!/usr/bin/env bash
# GPU node check: environment, parity against ONNX Runtime CPU FP32, in-process throughput and served
# throughput for every backend this node offers. Runs offline in under 8 minutes; see docs/gpu.md.
#
#   scripts/gpu_check.sh                         # results in artifacts/gpu_check/gpu_check.json
#   scripts/gpu_check.sh --out /tmp/check        # elsewhere
#   scripts/gpu_check.sh --digits BUNDLE_DIR     # node without scikit-learn: use a --prepare bundle
#   scripts/gpu_check.sh --dry-run               # the same flow on a CPU (stand-in backends)
set -euo pipefail
cd "$(dirname "$0")/.."

# The project's virtualenv when there is one, else the node's own Python (GPU images ship torch there).
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=python3
fi

# A hard stop a little past the check's own 450 s budget, so a hung GPU call cannot outlive 8 minutes.
exec timeout --kill-after=10 470 "$py" -m lab.gpu_check "$@"
