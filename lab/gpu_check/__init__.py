"""GPU node check: what is installed, then parity, throughput and served throughput per available backend.

    python -m lab.gpu_check --out artifacts/gpu_check          # on a GPU node (scripts/gpu_check.sh)
    python -m lab.gpu_check --dry-run --out /tmp/gpu_check     # the same flow on a CPU, small and fast
    python -m lab.gpu_check --prepare artifacts/gpu_bundle      # here: digits checkpoint + data to carry

For the digits model and ResNet-50 (random weights with calibrated BatchNorm: no download), every backend
the node offers (PyTorch CUDA FP32/FP16/BF16, ONNX Runtime CUDA/TensorRT EP, TensorRT FP32/FP16/INT8) is
compared with ONNX Runtime CPU FP32: FP32 must stay within relative error 1e-3, reduced precisions report
top-1 agreement and held-out digits accuracy. Throughput and p50/p99 latency are measured in process at
batch 1, 8, 32 and 128, and through the real gRPC server (a subprocess) at concurrency 1 and 64. Whatever
is missing (TensorRT, a GPU provider, scikit-learn, onnxscript, the server's torch backend) is skipped with
the reason in the table. Nothing is fetched from the internet. The table is printed last; JSON goes to --out.

One module per step: settings (budget, skips), environment (what is installed), model (the model under
test, its ONNX exports and reference logits), digits and resnet50 (the two models), backends (what can run
here), parity, throughput (in process), served (through the server), report (table, targets, JSON), main.
It reuses the project's pieces rather than copies: training through `resnet-serve train`, export's
exporter, models' checkpoints, bench's load generator and statistics, server.launch for the server.
"""
