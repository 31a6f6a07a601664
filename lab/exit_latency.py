"""How long the server process takes to exit after SIGTERM: SIGTERM → the "stopped" log line (the drain),
and "stopped" → the process gone (the interpreter finalising), with the start-up objects frozen
(`server.app.freeze_startup_objects`, what `serve` does) and without (the same server with that step
replaced by a no-op), alternating in one run.

    python -m lab.exit_latency --model artifacts/digits/model.onnx --rounds 5

Before each SIGTERM a client sends `--requests` KServe requests, so the process has served traffic.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from resnet_serve.server.launch import wait_ready

_NO_FREEZE = (
    "import sys, resnet_serve.server.app as app; app.freeze_startup_objects = lambda: None; "
    "from resnet_serve.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def one_exit(model: Path, freeze: bool, requests: int) -> tuple[float, float]:
    """(SIGTERM → "stopped", "stopped" → exit) in seconds, for one server."""
    args = ["serve", "--model", f"m={model}", "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
            "--metrics-port", "0"]  # fmt: skip
    command = (
        [sys.executable, "-m", "resnet_serve", *args] if freeze else [sys.executable, "-c", _NO_FREEZE, *args]
    )
    ready_file = Path(tempfile.mkdtemp(prefix="exit-latency-")) / "ready.json"
    command += ["--ready-file", str(ready_file)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    # Its start-up lines wait in the pipe (a few KiB): read after the SIGTERM, with the drain's.
    client = tc.InferenceServerClient(wait_ready(process, ready_file).grpc_target)
    shape = client.get_model_metadata("m").inputs[0].shape
    x = np.zeros([1, *map(int, shape[1:])], dtype=np.float32)
    for _ in range(requests):
        tensor = tc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("m", [tensor])
    client.close()
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stopped = sent
    for line in process.stdout:
        if line.rstrip().endswith(" stopped"):
            stopped = time.monotonic()
    process.wait()
    return stopped - sent, time.monotonic() - stopped


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="an .onnx file the server can serve")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for freeze in (False, True):
            results[freeze].append(one_exit(args.model, freeze, args.requests))
    for freeze, runs in results.items():
        drain = statistics.median(r[0] for r in runs)
        finalise = statistics.median(r[1] for r in runs)
        label = "frozen (serve)" if freeze else "not frozen    "
        print(f"{label}: SIGTERM->stopped {drain:.3f} s, stopped->exit median {finalise:.3f} s "
              f"(all: {', '.join(f'{r[1]:.3f}' for r in runs)})")  # fmt: skip


if __name__ == "__main__":
    main()
