"""What does the access check cost per request? Two measurements, printed and written as JSON:

1. The check alone: `AccessRules.grpc_refusal` for a Classify call carrying a restricted-group header and a
   bearer token (two SHA-256 digests and compare_digest calls), in ns per call.
2. End to end, in process: ListModels round trips (no model work) on a server without any access option
   (no interceptor at all) and on one with `--grpc-restricted-protocol inference,metadata:...` and a token
   file, in alternating rounds, median µs per call.

    python -m lab.security_overhead --calls 2000 --rounds 4 --out artifacts/bench/security_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from lab.metrics_overhead import write_tiny_onnx
from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.security.access import AccessRules
from resnet_serve.server.security.restrict import RestrictedGroups, parse_restriction
from resnet_serve.server.security.tokens import TokenSet

TOKEN = "bench-token-" + "0" * 40
SPEC = "inference,metadata:bench-key=" + "v" * 32
HEADERS = (("triton-grpc-protocol-bench-key", "v" * 32), ("authorization", f"Bearer {TOKEN}"))


def check_ns(n: int = 200_000) -> float:
    rules = AccessRules(RestrictedGroups([parse_restriction(SPEC)]), TokenSet([TOKEN]))
    method = "/resnetserve.v1.ImageClassifier/Classify"
    start = time.perf_counter_ns()
    for _ in range(n):
        rules.grpc_refusal(method, HEADERS)
    return (time.perf_counter_ns() - start) / n


async def round_trip_us(config: ServerConfig, calls: int) -> float:
    server = InferenceServer(config)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
            request = pb.ListModelsRequest()
            for _ in range(50):
                await stub.ListModels(request, metadata=HEADERS)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                await stub.ListModels(request, metadata=HEADERS)
                times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6
    finally:
        await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/security_overhead.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_onnx(Path(tmp) / "tiny.onnx")
        tokens = Path(tmp) / "tokens"
        tokens.write_text(TOKEN + "\n")
        tokens.chmod(0o600)
        base = ServerConfig(
            host="127.0.0.1",
            grpc_port=0,
            metrics_port=-1,
            models=(ModelSettings(name="tiny", path=str(model)),),
        )
        guarded = ServerConfig(
            **{
                **base.__dict__,
                "grpc_restricted_protocol": (parse_restriction(SPEC),),
                "auth_token_file": str(tokens),
            }
        )
        results: dict[str, list[float]] = {"open": [], "guarded": []}
        for i in range(args.rounds):  # open, guarded, guarded, open, ...: drift hits both alike
            order = ("open", "guarded") if i % 2 == 0 else ("guarded", "open")
            for name in order:
                config = base if name == "open" else guarded
                results[name].append(asyncio.run(round_trip_us(config, args.calls)))
    doc: dict[str, Any] = {
        "check_ns": check_ns(),
        "round_trip_median_us": {k: statistics.median(v) for k, v in results.items()},
        "rounds": results,
        "calls_per_round": args.calls,
    }
    print(json.dumps(doc, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
