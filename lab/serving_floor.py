"""The serving floor: requests/s and CPU per request of one server core, under a C load generator.

    python -m lab.serving_floor --rounds 3 --duration 5 --out artifacts/bench/serving-floor

Issue #22's instrument. h2load (nghttp2's C HTTP/2 load generator, so the client costs little) sends one
pre-encoded KServe `ModelInfer` gRPC request over and over to /inference.GRPCInferenceService/ModelInfer, for
two tensor sizes ([1,16] FP32 and [1,3,224,224] FP32, 600 KB) and a model whose compute is ~0 (ReduceMean,
built here with onnx.helper), so only the serving stack is measured. Side by side, in alternating rounds:
- bare: lab/bare_grpc_server.py, a `grpc.aio` server that parses, runs the model inline with ONNX Runtime
  and answers, nothing else: the floor of a Python gRPC server;
- resnet-serve: `resnet-serve serve` with its defaults (one intra-op thread); once `serve --help` lists
  `--workers`, one server per `--workers N` asked for (until then the one process, and the output says so);
- with --hop-floor, bare + hop: the bare server with its model in a child process that each request is
  sent to and awaited (`--hop`), the floor of a worker and an engine in two processes.
Each server is pinned to --server-cpus (core 0), h2load to --client-cpus (core 1). For each run: requests/s
(h2load), the server's CPU µs per request (utime+stime from /proc over the run, the server process and every
descendant), h2load's counts, and the check that the server's own statistics (KServe ModelStatistics) counted
exactly h2load's 2xx answers as successes and none as failures: h2load sees HTTP status only, and a gRPC error
still arrives with HTTP 200, so grpc-status 0 is verified by asking the server. Then a capacity model: with
w µs of worker CPU and e µs of engine CPU per request, N cores give about min(N·1e6/w, 1e6/e) requests/s.
Writes serving_floor.json and serving_floor.png under --out; exits 1 if any answer was not a success.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_serve.bench.plots import pyplot, save
from resnet_serve.formats.files import write_json_atomic
from resnet_serve.server.launch import free_port, serve_command, stop

ROOT = Path(__file__).resolve().parents[1]
PATH = "/inference.GRPCInferenceService/ModelInfer"
INSTALL_H2LOAD = (
    "h2load is not installed: apt-get install -y nghttp2-client (Debian, Ubuntu; macOS: brew install nghttp2)"
)
SIZES: dict[str, tuple[int, ...]] = {"small": (1, 16), "large": (1, 3, 224, 224)}
CAPACITY_CORES = (1, 2, 4, 8, 16)
READY_TIMEOUT_S = 120.0


# ------------------------------------------------------------------------------------------ the inputs


def write_models(folder: Path) -> dict[str, Path]:
    """A ~0-compute model per size: FP32 "input" [batch, ...] → ReduceMean over all but batch → [batch, 1]."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, shape in SIZES.items():
        axes = list(range(1, len(shape)))
        graph = helper.make_graph(
            [
                helper.make_node("ReduceMean", ["input"], ["mean"], axes=axes, keepdims=1),
                helper.make_node("Flatten", ["mean"], ["output"], axis=1),
            ],
            f"mean_{name}",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape[1:]])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        paths[name] = folder / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


def request_message(model: str, array: np.ndarray) -> bytes:
    """The serialized KServe ModelInferRequest for `array` as the model's "input" (raw contents, FP32)."""
    from resnet_serve.protos import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    return bytes(request.SerializeToString())


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: 1 byte compressed flag (0), 4-byte big-endian length, the message."""
    return struct.pack(">BI", 0, len(message)) + message


# ------------------------------------------------------------------------------------------ the machine


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and its AVX2/AVX-512 flags (lscpu, /proc/cpuinfo if lscpu is missing)."""
    text = ""
    with contextlib.suppress(OSError):  # no lscpu: /proc/cpuinfo below
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^Flags:\s*(.+)$", text, re.MULTILINE)
    if model is None or flags is None:
        info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        model = model or re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
        flags = flags or re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    vector = sorted(f for f in (flags.group(1).split() if flags else []) if f.startswith(("avx2", "avx512")))
    return {"model_name": model.group(1).strip() if model else "unknown", "flags": vector,
            "cores": os.cpu_count(), "load_average": list(os.getloadavg())}  # fmt: skip


def serve_has_workers() -> bool:
    """Whether this resnet-serve's `serve --help` lists `--workers` (issue #22)."""
    result = subprocess.run(serve_command("--help"), capture_output=True, text=True, check=False, timeout=120)
    return re.search(r"(^|\s)--workers\b", result.stdout) is not None


def model_counts(stub: Any, model: str) -> tuple[int, int]:
    """(successes, failures) that a server's own KServe statistics count for `model`, all its versions, asked
    through `stub` (a GRPCInferenceServiceStub)."""
    from resnet_serve.protos import grpc_service_pb2 as pb

    reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
    stats = [s.inference_stats for s in reply.model_stats]
    return sum(s.success.count for s in stats), sum(s.fail.count for s in stats)


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree_cpu(root: int) -> dict[int, tuple[float, str]]:
    """CPU seconds (utime+stime) of `root` and every live descendant, with each one's command line; `root`'s
    reaped children's time (cutime+cstime) is counted in root's."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    cpu: dict[int, tuple[float, str]] = {}
    for pid in tree:
        try:
            fields = _stat_fields(pid)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        seconds = (
            int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if pid == root else 0)
        )
        cpu[pid] = (seconds / tick, cmdline.strip())
    return cpu


# ------------------------------------------------------------------------------------------ the servers


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    stub: Any = None
    # processes answering on the port: the bare floor of N worker processes (their statistics cannot be
    # asked of each one through the shared port, so h2load's counts stand for them)
    processes: int = 1
    # a regex on a process's command line marking the processes whose CPU is w (the rest is e); None:
    # --worker-match
    worker_match: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    warmup: list[dict[str, Any]] = field(default_factory=list)

    def wait_ready(self) -> None:
        import grpc

        from resnet_serve.protos import grpc_service_pb2 as pb
        from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"serving_floor: {self.name} exited with code {self.process.returncode}")
            try:
                if self.stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                    return
            except grpc.RpcError:  # not listening yet
                pass
            time.sleep(0.25)
        raise SystemExit(f"serving_floor: {self.name} was not ready within {READY_TIMEOUT_S:.0f} s")

    def counts(self, model: str) -> tuple[int, int]:
        """(successes, failures) the server's own KServe statistics count for `model`, all versions."""
        if self.processes > 1:
            return 0, 0
        return model_counts(self.stub, model)

    def check_answer(self, model: str, array: np.ndarray) -> None:
        """Every server must really run the model: its answer is the input's mean."""
        from resnet_serve.protos import grpc_service_pb2 as pb

        reply = self.stub.ModelInfer(
            pb.ModelInferRequest.FromString(request_message(model, array)), timeout=30
        )
        got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
        if got.shape != (1,) or not np.allclose(got[0], array.mean(), rtol=1e-4, atol=1e-5):
            raise SystemExit(
                f"serving_floor: {self.name} answered {got} for {model}, expected {array.mean()}"
            )


def cpu_list(text: str) -> set[int]:
    """taskset's list syntax ("0", "0,1", "0-3,6") as a set of CPU numbers; ValueError if it is not one."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus |= set(range(int(first), int(last or first) + 1))
    return cpus


def preflight(parser: argparse.ArgumentParser, args: argparse.Namespace) -> bool:
    """Before anything starts: --server-cpus and --client-cpus must be CPU lists of CPUs this process may use
    (argparse's exit 2 otherwise); False, having said what to install, when h2load or taskset is missing."""
    usable = os.sched_getaffinity(0)
    for option, value in (("--server-cpus", args.server_cpus), ("--client-cpus", args.client_cpus)):
        try:
            outside = cpu_list(value) - usable
        except ValueError:
            parser.error(f"{option} {value}: expected a CPU list such as 0 or 0,1 or 0-3")
        if outside:
            parser.error(
                f"{option} {value}: CPU {min(outside)} is not one this process may use {sorted(usable)}"
            )
    if shutil.which("h2load") is None:
        print(INSTALL_H2LOAD, file=sys.stderr)
        return False
    if shutil.which("taskset") is None:
        print("taskset is not installed: apt-get install -y util-linux", file=sys.stderr)
        return False
    return True


def _pinned(cpus: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *command]


def start_servers(
    models: dict[str, Path], args: argparse.Namespace, workers: list[int] | None
) -> list[Server]:
    specs = [f"{name}={path}" for name, path in models.items()]
    servers = []
    port = free_port()
    bare = [sys.executable, "-m", "lab.bare_grpc_server", "--port", str(port)]
    for spec in specs:
        bare += ["--model", spec]
    # lab/ is not installed: it imports from the repository root
    servers.append(Server("bare grpc.aio", subprocess.Popen(_pinned(args.server_cpus, bare), cwd=ROOT), port))
    many = max(workers or [1])
    if many > 1:  # the floor of `many` worker processes: as many bare servers sharing one port
        port = free_port()
        one = " ".join([*bare[:4], str(port), *bare[5:], "--reuse-port"])  # bare[4] is the first one's port
        # in a session of its own, so that stopping the shell stops the group: `kill 0` on SIGTERM
        script = f"trap 'kill 0' TERM; for i in $(seq {many}); do {one} & done; wait"
        command = _pinned(args.server_cpus, ["sh", "-c", script])
        process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
        servers.append(Server(f"bare grpc.aio x{many}", process, port, processes=many))
    if args.hop_floor:  # the floor of the split: one bare front end and a child process that computes
        port = free_port()
        hop = [*bare[:4], str(port), *bare[5:], "--hop"]
        servers.append(
            Server("bare grpc.aio + hop", subprocess.Popen(_pinned(args.server_cpus, hop), cwd=ROOT), port,
                   worker_match=r"\s--hop\b")
        )  # fmt: skip
    for count in workers or [0]:
        port = free_port()
        command = serve_command(
            *[arg for spec in specs for arg in ("--model", spec)], "--host", "127.0.0.1",
            "--grpc-port", str(port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            "--intra-op-threads", "1", "--log-level", "warning", *args.serve_arg,
            *(["--workers", str(count)] if count else []),
        )  # fmt: skip
        name = f"resnet-serve --workers {count}" if count else "resnet-serve"
        servers.append(Server(name, subprocess.Popen(_pinned(args.server_cpus, command)), port))
    return servers


# ------------------------------------------------------------------------------------------ h2load


def parse_h2load(output: str) -> dict[str, float]:
    """h2load's summary: elapsed seconds, requests/s and its request and status-code counts."""
    finished = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", output)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
        r"(\d+) timeout",
        output,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if finished is None or counts is None or codes is None:
        raise ValueError(f"unexpected h2load output:\n{output[-2000:]}")
    seconds = float(finished.group(1)) / {"us": 1e6, "ms": 1e3, "s": 1.0}[finished.group(2)]
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    parsed: dict[str, float] = {"seconds": seconds, "requests_per_s": float(finished.group(3))}
    parsed |= {key: int(value) for key, value in zip(keys, counts.groups(), strict=True)}
    parsed |= {
        f"status_{c}": int(v) for c, v in zip(("2xx", "3xx", "4xx", "5xx"), codes.groups(), strict=True)
    }
    return parsed


def h2load_command(port: int, data: Path, requests: int, args: argparse.Namespace) -> list[str]:
    return _pinned(args.client_cpus, [
        "h2load", "-n", str(requests), "-c", str(args.connections), "-m", str(args.streams), "-t", "1",
        "-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{port}{PATH}",
    ])  # fmt: skip


def measure(
    server: Server, model: str, data: Path, requests: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One h2load run of `requests` against `server`: its figures, the server's CPU and statistics deltas."""
    success0, fail0 = server.counts(model)
    cpu0 = process_tree_cpu(server.process.pid)
    timeout = args.duration * 5 + 30
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # h2load's, once it is waited for
    try:
        run = subprocess.run(
            h2load_command(server.port, data, requests, args), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"serving_floor: h2load against {server.name} ran past {timeout:.0f} s") from None
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_s = client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime
    if server.process.poll() is not None:
        raise SystemExit(
            f"serving_floor: {server.name} exited with code {server.process.returncode} under load"
        )
    cpu1 = process_tree_cpu(server.process.pid)
    success1, fail1 = server.counts(model)
    if run.returncode != 0:
        raise SystemExit(f"serving_floor: h2load failed ({run.returncode}): {run.stderr or run.stdout}")
    h2 = parse_h2load(run.stdout)
    # a process that started during the run is counted from 0: all its CPU time is inside the window
    used = {pid: (seconds - cpu0.get(pid, (0.0, ""))[0], cmdline) for pid, (seconds, cmdline) in cpu1.items()}
    total_s = sum(seconds for seconds, _ in used.values())
    match = server.worker_match or args.worker_match
    worker_s = [seconds for seconds, cmdline in used.values() if re.search(match, cmdline)]
    # with worker processes, the rest of the tree (the process serve started) is the engine
    engine_s = total_s - sum(worker_s) if worker_s else 0.0
    success, fail = success1 - success0, fail1 - fail0
    if server.processes > 1:
        success, fail = int(h2["succeeded"]), int(h2["failed"] + h2["errored"])
    done = max(1, success)
    return {
        "server": server.name,
        "size": model,
        "requests": requests,
        "requests_per_s": h2["requests_per_s"],
        "seconds": h2["seconds"],
        "h2load": h2,
        "server_success": success,
        "server_fail": fail,
        # every request h2load sent was answered 2xx and counted a success, none a failure, by the server
        "consistent": success == h2["status_2xx"] == h2["succeeded"] == requests and fail == 0,
        "cpu_us_per_request": 1e6 * total_s / done,
        # the share of a core the server got: below 1 on a single pinned core, others' work took the rest
        "server_cores_used": total_s / h2["seconds"] if h2["seconds"] > 0 else 0.0,
        # and h2load's: near 1, the load generator was the limit
        "client_cores_used": client_s / h2["seconds"] if h2["seconds"] > 0 else 0.0,
        "engine_cpu_us_per_request": 1e6 * engine_s / done if engine_s > 0 else None,
        "worker_cpu_us_per_request": 1e6 * (total_s - engine_s) / done,
        "processes": len(used),
        "per_process_cpu_us_per_request": {
            str(pid): {"cmdline": cmdline[:200], "us": 1e6 * seconds / done}
            for pid, (seconds, cmdline) in used.items()
        },
    }


# ------------------------------------------------------------------------------------------ the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    cpu = cpu_description()
    has_workers = serve_has_workers()
    note = (
        f"serve lists --workers: measured --workers {', '.join(map(str, args.workers))}"
        if has_workers
        else "serve has no --workers option yet: measured the one process (its engine CPU is inside w)"
    )
    print(f"CPU: {cpu['model_name']} ({cpu['cores']} cores; {' '.join(cpu['flags']) or 'no avx2/avx512'}); "
          f"load average {cpu['load_average'][0]:.1f}", flush=True)  # fmt: skip
    print(note, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    models = write_models(args.out.resolve() / "models")  # absolute: the bare server runs from the root
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(SIZES[name]).astype(np.float32) for name in args.sizes}
    data: dict[str, Path] = {}
    for name, array in arrays.items():
        data[name] = args.out / f"request-{name}.bin"
        data[name].write_bytes(grpc_frame(request_message(name, array)))
    servers = start_servers(models, args, args.workers if has_workers else None)
    try:
        for server in servers:
            server.wait_ready()
            for name, array in arrays.items():
                server.check_answer(name, array)
        # warm-up, and the request count that fills --duration at each server's warm-up rate
        counts: dict[tuple[str, str], int] = {}
        for server in servers:
            for name in args.sizes:
                warm = measure(server, name, data[name], args.warmup_requests, args)
                server.warmup.append(warm)
                target = int(warm["requests_per_s"] * args.duration)
                counts[server.name, name] = max(args.min_requests, min(args.max_requests, target))
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]  # alternate who goes first, too
            for name in args.sizes:
                for server in order:
                    row = measure(server, name, data[name], counts[server.name, name], args)
                    row["round"] = r + 1
                    server.rows.append(row)
                    print(f"round {r + 1} {name}: {server.name}: " + _round_line(row), flush=True)
    finally:
        for server in servers:
            stop(server.process, timeout_s=30)
    return summarise(servers, args, cpu, note, has_workers)


def summarise(
    servers: list[Server], args: argparse.Namespace, cpu: dict[str, Any], note: str, has_workers: bool
) -> dict[str, Any]:
    bare = servers[0]
    results: list[dict[str, Any]] = []
    for server in servers:
        for name in args.sizes:
            rows = [row for row in server.rows if row["size"] == name]
            engine = [row["engine_cpu_us_per_request"] for row in rows if row["engine_cpu_us_per_request"]]
            entry: dict[str, Any] = {
                "server": server.name,
                "size": name,
                "shape": list(SIZES[name]),
                "requests_per_s": statistics.median(row["requests_per_s"] for row in rows),
                "requests_per_s_per_round": [row["requests_per_s"] for row in rows],
                "cpu_us_per_request": statistics.median(row["cpu_us_per_request"] for row in rows),
                "server_cores_used": statistics.median(row["server_cores_used"] for row in rows),
                "client_cores_used": statistics.median(row["client_cores_used"] for row in rows),
                "worker_cpu_us_per_request": statistics.median(
                    row["worker_cpu_us_per_request"] for row in rows
                ),
                "engine_cpu_us_per_request": statistics.median(engine) if engine else None,
                "h2load_succeeded": sum(row["h2load"]["succeeded"] for row in rows),
                "h2load_failed": sum(row["h2load"]["failed"] + row["h2load"]["errored"] for row in rows),
                "h2load_2xx": sum(row["h2load"]["status_2xx"] for row in rows),
                "server_success": sum(row["server_success"] for row in rows),
                "server_fail": sum(row["server_fail"] for row in rows),
                "consistent": all(row["consistent"] for row in rows),
            }
            if server is not bare:
                floor = [row for row in bare.rows if row["size"] == name]
                entry["requests_per_s_over_bare"] = statistics.median(
                    row["requests_per_s"] / base["requests_per_s"]
                    for row, base in zip(rows, floor, strict=True)
                )
                entry["cpu_over_bare"] = statistics.median(
                    row["cpu_us_per_request"] / base["cpu_us_per_request"]
                    for row, base in zip(rows, floor, strict=True)
                )
            entry["capacity"] = capacity(
                entry["worker_cpu_us_per_request"], entry["engine_cpu_us_per_request"]
            )
            results.append(entry)
    return {
        "cpu": cpu,
        "note": note,
        "serve_has_workers": has_workers,
        "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip(),
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            "streams_per_connection": args.streams,
            "server_cpus": args.server_cpus,
            "client_cpus": args.client_cpus,
            "workers": args.workers if has_workers else None,
            "model": "ReduceMean over all but the batch axis (ONNX, opset 17), FP32, ONNX Runtime, 1 thread",
        },
        "results": results,
        "rounds": [row for server in servers for row in server.rows],
        "warmup": [row for server in servers for row in server.warmup],
        # the warm-up's answers are checked too: every answer of the run was a success
        "consistent": all(row["consistent"] for server in servers for row in server.rows + server.warmup),
    }


def capacity(w_us: float, e_us: float | None) -> dict[str, float]:
    """Requests/s that N cores give when each request costs w µs in a worker (N workers) and e µs in the one
    engine: min(N·1e6/w, 1e6/e); with e unknown (one process: inside w), N·1e6/w."""
    return {str(n): min(n * 1e6 / w_us, 1e6 / e_us) if e_us else n * 1e6 / w_us for n in CAPACITY_CORES}


def _round_line(row: dict[str, Any]) -> str:
    h2 = row["h2load"]
    return (
        f"{row['requests_per_s']:.0f} req/s, {row['cpu_us_per_request']:.0f} µs CPU/request; h2load "
        f"{h2['succeeded']} ok {h2['failed'] + h2['errored']} failed; the server counted "
        f"{row['server_success']} ok {row['server_fail']} failed"
        + ("" if row["consistent"] else "  MISMATCH")
    )


def table(rows: list[list[str]]) -> str:
    """Rows of cells as aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def _shape(entry: dict[str, Any]) -> str:
    return "[" + ",".join(map(str, entry["shape"])) + "] FP32"


def _times(entry: dict[str, Any], key: str) -> str:
    return f"{entry[key]:.2f}x" if key in entry else ""


def print_report(result: dict[str, Any]) -> None:
    cpu = result["cpu"]
    print(f"\nCPU: {cpu['model_name']} ({' '.join(cpu['flags']) or 'no avx2/avx512'}); {result['h2load']}")
    print(result["note"] + "\n")
    head = ["server", "tensor", "req/s", "x bare", "CPU µs/req", "x bare", "cores used", "h2load's"]
    rows = [[*head, "h2load ok/failed", "server ok/failed"]]
    for e in result["results"]:
        rows.append([
            e["server"], _shape(e), f"{e['requests_per_s']:.0f}", _times(e, "requests_per_s_over_bare"),
            f"{e['cpu_us_per_request']:.0f}", _times(e, "cpu_over_bare"), f"{e['server_cores_used']:.2f}",
            f"{e['client_cores_used']:.2f}",
            f"{e['h2load_succeeded']}/{e['h2load_failed']}", f"{e['server_success']}/{e['server_fail']}",
        ])  # fmt: skip
    print(table(rows))
    print("(cores used: the server's CPU time over the run's wall time, below 1 when other work had some"
          " of its core; h2load's: the same for the load generator, the limit when near 1)")  # fmt: skip
    print(
        "\ncapacity model: N cores ≈ min(N·1e6/w, 1e6/e) req/s (w, e: worker and engine CPU µs per request)"
    )
    rows = [["server", "tensor", "w µs", "e µs", *(f"N={n}" for n in CAPACITY_CORES)]]
    for e in result["results"]:
        engine = e["engine_cpu_us_per_request"]
        rows.append([
            e["server"], _shape(e), f"{e['worker_cpu_us_per_request']:.0f}",
            f"{engine:.0f}" if engine else "in w",
            *(f"{e['capacity'][str(n)]:.0f}" for n in CAPACITY_CORES),
        ])  # fmt: skip
    print(table(rows))
    if not result["serve_has_workers"]:
        print("one process: the engine's CPU is inside w (these are the ceilings if it cost nothing)")
    if not result["consistent"]:
        print(
            "\nMISMATCH: some answers were not counted a success by the server (the rounds are in the JSON)"
        )


def plot(result: dict[str, Any], path: Path) -> Path:
    """Requests/s and CPU µs per request per server, one group per tensor size, each round a dot."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), dpi=110)
    servers = list(dict.fromkeys(e["server"] for e in result["results"]))
    sizes = list(dict.fromkeys(e["size"] for e in result["results"]))
    width = 0.8 / len(servers)
    panels = (
        (axes[0], "requests_per_s", "requests/s"),
        (axes[1], "cpu_us_per_request", "server CPU µs/request"),
    )
    for ax, key, label in panels:
        for i, server in enumerate(servers):
            entries = [e for e in result["results"] if e["server"] == server]
            x = np.arange(len(sizes)) + i * width
            ax.bar(x, [e[key] for e in entries], width, label=server)
            for xi, e in zip(x, entries, strict=True):
                rounds = [
                    r[key] for r in result["rounds"] if r["server"] == server and r["size"] == e["size"]
                ]
                ax.plot([xi] * len(rounds), rounds, "k.", markersize=3)
        ax.set_xticks(np.arange(len(sizes)) + width * (len(servers) - 1) / 2)
        ax.set_xticklabels([str(list(SIZES[s])) + " FP32" for s in sizes], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"serving floor, one server core ({result['cpu']['model_name']})", fontsize=10)
    return save(fig, plt, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.serving_floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/bench/serving-floor"),
        help="folder for serving_floor.json, serving_floor.png, the models and request files",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds (each: every size, every server)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="seconds per h2load run, as a request count from the warm-up rate",
    )
    parser.add_argument(
        "--warmup-requests", type=int, default=1000, help="requests per server and size first"
    )
    parser.add_argument("--min-requests", type=int, default=200)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument(
        "--connections", type=int, default=8, help="h2load -c (≥ the workers, so each gets some)"
    )
    parser.add_argument("--streams", type=int, default=2, help="h2load -m: concurrent streams per connection")
    parser.add_argument(
        "--sizes",
        type=lambda s: s.split(","),
        default=list(SIZES),
        help=f"comma-separated, of {', '.join(SIZES)} (default: both)",
    )
    parser.add_argument(
        "--workers",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1, 2],
        help="serve --workers values to measure, once serve has the option (default: 1,2)",
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every `resnet-serve serve` (repeat; e.g. "
        "--serve-arg=--preferred-batch-sizes --serve-arg=8 to measure the engine at batches of 8)",
    )
    parser.add_argument("--server-cpus", default="0", help="taskset -c list for every server (default: 0)")
    parser.add_argument("--client-cpus", default="1", help="taskset -c list for h2load (default: 1)")
    parser.add_argument(
        "--hop-floor",
        action="store_true",
        help="also measure `lab/bare_grpc_server.py --hop`: the bare server with its model in a child "
        "process, each request sent there and awaited (the floor of a worker and an engine; its front end's "
        "CPU is w, the child's e)",
    )
    parser.add_argument(
        "--worker-match",
        default=r"processes\.worker\b",
        help="regex on a server process's command line that marks a worker process (its CPU is w; the "
        "rest of the server's processes are the engine, e)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    bad = [s for s in args.sizes if s not in SIZES]
    if bad:
        parser.error(f"--sizes: unknown {', '.join(bad)} (choose from {', '.join(SIZES)})")
    if min(args.rounds, args.connections, args.streams, args.warmup_requests, args.min_requests) < 1:
        parser.error("--rounds, --connections, --streams and the request counts must be ≥ 1")
    if not preflight(parser, args):
        return 2
    result = run(args)
    print_report(result)
    write_json_atomic(args.out / "serving_floor.json", result)
    plot(result, args.out / "serving_floor.png")
    print(f"\nwrote {args.out / 'serving_floor.json'} and {args.out / 'serving_floor.png'}")
    return 0 if result["consistent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
