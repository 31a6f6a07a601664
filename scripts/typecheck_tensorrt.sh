#!/usr/bin/env bash
# Type-checks the TensorRT code against the tensorrt-stubs package (TensorRT 10.13 API).
# The stubs as published ship without py.typed and with two syntax errors (a parameter named `in`, a
# required parameter after defaulted ones), so mypy cannot read them in place: check against a patched copy.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
site=$("$bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f "$site/tensorrt_bindings/tensorrt.pyi" ]; then
  echo "typecheck_tensorrt: tensorrt-stubs is not installed (make install adds it)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$site/tensorrt" "$site/tensorrt_bindings" "$work/"
sed -i -E 's/\(self(: [A-Za-z0-9]+)?, in: /(self\1, in_: /; s/channel_axis: int\)/channel_axis: int = ...)/' \
  "$work/tensorrt_bindings/tensorrt.pyi"
cat > "$work/mypy.ini" <<INI
[mypy]
python_version = 3.11
strict = True
warn_unused_ignores = False
mypy_path = $work
[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt,tensorrt_bindings]
ignore_errors = True
[mypy-onnxruntime.*,cuda.*,sklearn.*,onnxscript.*,pynvml.*]
ignore_missing_imports = True
INI
"$bin/mypy" --config-file "$work/mypy.ini" resnet_serve/export/engine.py resnet_serve/runtime/tensorrt.py \
  resnet_serve/formats/sidecar.py
