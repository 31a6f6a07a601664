"""What Triton's system shared memory saves: latency over the bare call at concurrency 1, with and without it.

    python -m lab.resnet50_model --out artifacts/resnet50/model.onnx
    python -m lab.shm_overhead --model artifacts/resnet50/model.onnx --rounds 5 --out artifacts/bench/shm.json

Three targets answer the same batch-1 requests, one at a time, in alternating half-second slices (as
lab/grpc_floor.py does, so that drift on a shared machine hits all alike):
- bare: the server's backend class called in-process;
- grpc: `resnet-serve serve` through `tritonclient.grpc`, the tensor in the message (raw_input_contents);
- grpc+shm: the same server, the input and the output in system shared memory regions registered once
  (`tritonclient.utils.shared_memory`); each timed call writes the input into its region and reads the output
  back, as a client must;
- grpc+shm-nocopy: the same without writing the input each time (a client that produces its tensors in the
  region: what the server side and the protocol cost);
- live: an empty RPC (ServerLive) to the same server, the floor of any gRPC round trip here.
Both served answers are checked against the bare call first. Prints each round and the medians; `--out` writes
them as JSON.

`--make-model` first writes a trivial model to `--model` (FP32 [N, 3, 224, 224] → global average pool → a
1000-class linear layer): the same 600 KB input as ResNet-50 with almost no compute, so the transport's cost
shows even on a loaded machine where ResNet-50's own time varies by more than that cost.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lab.grpc_floor import _client, _time, one_round, timing_arguments
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.server.launch import free_port, serve_command, stop


def _shm_call(
    client: Any,
    handles: tuple[Any, Any],
    names: tuple[str, str],
    array: np.ndarray,
    out_shape: list[int],
    copy: bool = True,
) -> np.ndarray:
    import tritonclient.grpc as triton
    import tritonclient.utils.shared_memory as shm

    handle_in, handle_out = handles
    if copy:
        shm.set_shared_memory_region(handle_in, [array])
    tensor = triton.InferInput(names[0], list(array.shape), "FP32")
    tensor.set_shared_memory("in", array.nbytes)
    output = triton.InferRequestedOutput(names[1])
    output.set_shared_memory("out", int(np.prod(out_shape)) * 4)
    client.infer("model", [tensor], outputs=[output])
    result: np.ndarray = shm.get_contents_as_numpy(handle_out, np.float32, out_shape).copy()
    return result


def write_transport_model(path: Path) -> None:
    """A model with ResNet-50's input and output tensors and next to no compute."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.1, (1000, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(1000, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "transport",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    import tritonclient.grpc as triton
    import tritonclient.utils.shared_memory as shm

    from resnet_serve.runtime.factory import backend_for, create_backend

    bare = create_backend(args.model, backend_for(args.model, "auto"), "cpu", args.threads)
    spec, output = bare.info.inputs[0], bare.info.outputs[0]
    if spec.dtype != np.float32:
        raise SystemExit("shm_overhead: the model must take FP32 input")
    array = np.random.default_rng(0).standard_normal([1, *spec.shape[1:]]).astype(np.float32)
    expected = bare.infer({spec.name: array})[output.name]
    out_shape = list(expected.shape)
    names = (spec.name, output.name)
    tensor = triton.InferInput(spec.name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    port = free_port()
    served = subprocess.Popen(
        serve_command(
            "--model", f"model={args.model}", "--host", "127.0.0.1", "--grpc-port", str(port),
            "--metrics-port", "-1", "--intra-op-threads", str(args.threads), "--log-level", "warning",
            *args.serve_arg,
        )
    )  # fmt: skip
    tag = uuid.uuid4().hex[:8]
    handles = (
        shm.create_shared_memory_region("in", f"/shm_overhead_in_{tag}", array.nbytes),
        shm.create_shared_memory_region("out", f"/shm_overhead_out_{tag}", expected.nbytes),
    )
    client: Any = None
    rounds: list[dict[str, float]] = []
    try:
        client = _client(port, served)
        client.register_system_shared_memory("in", f"/shm_overhead_in_{tag}", array.nbytes)
        client.register_system_shared_memory("out", f"/shm_overhead_out_{tag}", expected.nbytes)
        targets: dict[str, Callable[[], object]] = {
            "bare": lambda: bare.infer({spec.name: array}),
            "grpc": functools.partial(client.infer, "model", [tensor]),
            "grpc+shm": functools.partial(_shm_call, client, handles, names, array, out_shape),
            "grpc+shm-nocopy": functools.partial(_shm_call, client, handles, names, array, out_shape, False),
            "live": client.is_server_live,
        }
        answers = {
            "grpc": client.infer("model", [tensor]).as_numpy(output.name),
            "grpc+shm": _shm_call(client, handles, names, array, out_shape),
        }
        for name, got in answers.items():
            if got is None or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                raise SystemExit(f"shm_overhead: {name} answered differently from the bare call")
        for call in targets.values():  # warm-up
            _time(call, args.warmup, [])
        for r in range(args.rounds):
            row = one_round(targets, args)
            for name in ("grpc", "grpc+shm", "grpc+shm-nocopy", "live"):
                row[f"{name}_overhead_ms"] = row[f"{name}_ms"] - row["bare_ms"]
            rounds.append(row)
            print(
                f"round {r + 1}: bare {row['bare_ms']:.2f} ms; grpc {row['grpc_overhead_ms']:+.2f} ms; "
                f"grpc+shm {row['grpc+shm_overhead_ms']:+.2f} ms (without the client's input copy "
                f"{row['grpc+shm-nocopy_overhead_ms']:+.2f} ms); an empty RPC (ServerLive) "
                f"{row['live_ms']:.2f} ms",
                flush=True,
            )
        client.unregister_system_shared_memory()
    finally:
        if client is not None:
            client.close()
        bare.close()
        stop(served, timeout_s=30)
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
    return {
        "model": str(args.model),
        "client": "tritonclient.grpc (sync), one request at a time, batch 1",
        "rounds": rounds,
        "median_ms": {k: statistics.median(r[k] for r in rounds) for k in rounds[0]},
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.shm_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    timing_arguments(parser)
    parser.add_argument(
        "--make-model", action="store_true", help="first write the trivial 224² model to --model"
    )
    parser.add_argument(
        "--serve-arg", action="append", default=[], metavar="ARG",
        help="one more `serve` argument (repeat; e.g. --serve-arg=--workers --serve-arg=1)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.make_model:
        write_transport_model(args.model)
    if not args.model.is_file():
        parser.error(f"no such model file: {args.model}")
    from tritonclient.utils import InferenceServerException

    try:
        result = _measure(args)
    except InferenceServerException as exc:
        raise SystemExit(f"shm_overhead: a request failed: {exc}") from None
    medians = result["median_ms"]
    print(
        f"median over {args.rounds} rounds at concurrency 1: bare {medians['bare_ms']:.2f} ms; over it, "
        f"grpc {medians['grpc_overhead_ms']:+.2f} ms, grpc+shm {medians['grpc+shm_overhead_ms']:+.2f} ms; "
        f"an empty RPC takes {medians['live_ms']:.2f} ms"
    )
    if args.out is not None:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
