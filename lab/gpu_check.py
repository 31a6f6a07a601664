"""GPU node check: what is installed, then parity, throughput and served throughput per available backend.

    python -m bench.gpu_check --out artifacts/gpu_check          # on a GPU node (scripts/gpu_check.sh)
    python -m bench.gpu_check --dry-run --out /tmp/gpu_check     # the same flow on a CPU, small and fast
    python -m bench.gpu_check --prepare artifacts/gpu_bundle      # here: digits checkpoint + data to carry

For the digits model and ResNet-50 (random weights with calibrated BatchNorm: no download), every backend
the node offers (PyTorch CUDA FP32/FP16/BF16, ONNX Runtime CUDA/TensorRT EP, TensorRT FP32/FP16/INT8) is
compared with ONNX Runtime CPU FP32: FP32 must stay within relative error 1e-3, reduced precisions report
top-1 agreement and held-out digits accuracy. Throughput and p50/p99 latency are measured in process at
batch 1, 8, 32 and 128, and through the real gRPC server (a subprocess) at concurrency 1 and 64. Whatever
is missing (TensorRT, a GPU provider, scikit-learn, the server's torch backend) is skipped with the reason
in the table. Nothing is fetched from the internet. The table is printed last; JSON goes to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import io
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_serve.server.launch import free_port, serving  # standard library only: safe on a bare GPU node

BATCHES = (1, 8, 32, 128)
FP32_TOLERANCE = 1e-3
RESNET50_TARGET = 3000.0  # images/s, PyTorch CUDA FP16 at batch 128 on an H100
SERVED_FRACTION_TARGET = 0.6
IMAGENET_PRE = {
    "color": "RGB",
    "resize": 224,
    "crop": 224,
    "interpolation": "bilinear",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Skip(Exception):
    """A step that cannot run here; the message goes into the table."""


@dataclass
class Settings:
    out: Path
    dry_run: bool
    budget_s: float
    seconds_per_point: float
    batches: tuple[int, ...]
    served_seconds: float
    served_concurrency: tuple[int, ...]
    digits_bundle: Path | None
    resnet50: bool
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def require_time(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise Skip(f"{what}: skipped, under {seconds:.0f} s of the time budget left")


# ---- what is installed ----


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as err:
        return f"absent ({type(err).__name__})"
    return str(getattr(mod, "__version__", "present"))


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        env["nvidia_smi"] = smi.splitlines()
    except (OSError, subprocess.SubprocessError) as err:
        env["nvidia_smi"] = f"unavailable ({type(err).__name__})"
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError:
        env["torch"] = "absent"
        env["cuda_available"] = False
    try:
        import tensorrt  # type: ignore[import-untyped]

        env["tensorrt"] = getattr(tensorrt, "__version__", "stubs only (not usable)")
    except ImportError:
        env["tensorrt"] = "absent"
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["ort_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        env["onnxruntime"] = "absent"
        env["ort_providers"] = []
    for name, module in (
        ("onnx", "onnx"),
        ("onnxscript", "onnxscript"),
        ("cuda_python", "cuda.bindings"),
        ("sklearn", "sklearn"),
        ("grpcio", "grpc"),
        ("grpc_health", "grpc_health.v1"),
    ):
        env[name] = _version(module)
    return env


def tensorrt_usable(env: dict[str, Any]) -> bool:
    return (
        env.get("cuda_available", False)
        and env["tensorrt"][0].isdigit()
        and "absent" not in env["cuda_python"]
    )


# ---- models ----


@dataclass
class Model:
    """A model under test: its checkpoint, ONNX files by precision, and the data to compare on."""

    name: str
    checkpoint: Path
    inputs: np.ndarray  # preprocessed float32 (N, C, H, W)
    labels: np.ndarray | None  # held-out labels (digits) or None
    calibration: np.ndarray | None
    onnx: dict[str, Path] = field(default_factory=dict)
    reference: np.ndarray | None = None  # ORT CPU FP32 logits (or PyTorch CPU when ONNX export failed)
    reference_name: str = ""
    notes: list[str] = field(default_factory=list)


def digits_model(cfg: Settings, work: Path, on_gpu: bool) -> Model:
    """The digits checkpoint and held-out data: from a --digits bundle, or trained here when sklearn is."""
    if cfg.digits_bundle is not None:
        ckpt, data = cfg.digits_bundle / "digits.pt", cfg.digits_bundle / "digits_data.npz"
        if not ckpt.is_file() or not data.is_file():
            raise Skip(
                f"digits: {cfg.digits_bundle} lacks digits.pt or digits_data.npz (make it with --prepare)"
            )
        arrays = np.load(data)
        return Model("digits", ckpt, arrays["heldout_x"], arrays["heldout_y"], arrays["calib_x"])
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise Skip(
            "digits: scikit-learn is absent and no --digits bundle was given (make one with --prepare)"
        ) from None
    ckpt = work / "digits.pt"
    epochs = 2 if cfg.dry_run else 15
    train_digits(ckpt, epochs, "cuda" if on_gpu else "cpu")
    x, y, calib = digits_arrays(ckpt)
    return Model("digits", ckpt, x, y, calib)


def train_digits(ckpt: Path, epochs: int, device: str) -> None:
    log(f"training the digits model ({epochs} epochs on {device})")
    cmd = [
        sys.executable,
        "-m",
        "resnet_serve",
        "train",
        "--out",
        str(ckpt),
        "--epochs",
        str(epochs),
        "--device",
        device,
        "--workers",
        "0",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not ckpt.is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Skip(f"digits: training failed ({tail})")


def digits_arrays(ckpt: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from resnet_serve.export.samples import digits_held_out, digits_training
    from resnet_serve.models.checkpoint import load_model

    _, meta = load_model(ckpt)
    x, y = digits_held_out(meta["preprocess"])
    return x, y, digits_training(meta["preprocess"], limit=256)


def prepare_bundle(out: Path, epochs: int) -> None:
    """Train the digits model and save its held-out and calibration data, for a node without sklearn."""
    out.mkdir(parents=True, exist_ok=True)
    train_digits(out / "digits.pt", epochs, "cpu")
    x, y, calib = digits_arrays(out / "digits.pt")
    np.savez_compressed(out / "digits_data.npz", heldout_x=x, heldout_y=y, calib_x=calib)
    log(f"wrote {out}/digits.pt and digits_data.npz ({len(x)} held-out images)")


def resnet50_model(work: Path, on_gpu: bool) -> Model:
    """ResNet-50 with random weights and BatchNorm statistics calibrated on random images, so activations
    stay in a realistic range (FP16 would overflow on an uncalibrated random network)."""
    import torch

    from resnet_serve.models.checkpoint import save_checkpoint
    from resnet_serve.models.registry import build

    torch.manual_seed(0)
    model = build("resnet50", num_classes=1000, in_chans=3)
    device = "cuda" if on_gpu else "cpu"
    model.to(device).train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0  # running stats := this batch's stats
    with torch.no_grad():
        model(torch.randn(16 if on_gpu else 4, 3, 224, 224, device=device))
    model.cpu().eval()
    ckpt = work / "resnet50.pt"
    save_checkpoint(
        ckpt,
        {
            "format": "resnet-serve/1",
            "arch": "resnet50",
            "model_config": {"num_classes": 1000, "in_chans": 3},
            "state_dict": model.state_dict(),
            "labels": [f"class_{i}" for i in range(1000)],
            "preprocess": IMAGENET_PRE,
        },
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3, 224, 224)).astype(np.float32)
    return Model("resnet50", ckpt, x, None, x[:16])


def export_onnx(model: Model, work: Path, want_int8: bool) -> None:
    """FP32 ONNX through our export (legacy exporter if onnxscript is missing), its FP16 twin, and the
    TensorRT INT8 QDQ model when TensorRT will use it."""
    from resnet_serve.export.errors import ExportError
    from resnet_serve.export.fp16 import to_fp16
    from resnet_serve.export.onnx_export import export_source
    from resnet_serve.export.sources import from_checkpoint
    from resnet_serve.formats.files import write_bytes_atomic
    from resnet_serve.formats.metadata import write

    source = from_checkpoint(model.checkpoint)
    try:
        proto, _ = export_source(source, model.inputs[:8], log=False)
    except ExportError as err:
        model.notes.append(f"dynamo export failed ({err}); used the TorchScript exporter")
        proto = legacy_export(source.model, model.inputs[:2])
        write(proto, source.meta)
    path = work / f"{model.name}.onnx"
    write_bytes_atomic(path, proto.SerializeToString())
    model.onnx["fp32"] = path
    fp16 = work / f"{model.name}.fp16.onnx"
    write_bytes_atomic(fp16, to_fp16(proto).SerializeToString())
    model.onnx["fp16"] = fp16
    if want_int8 and model.calibration is not None:
        from resnet_serve.export.quantize import quantize
        from resnet_serve.formats.metadata import from_props, props_of

        int8 = quantize(proto, from_props(props_of(proto)), model.calibration, ("trt",))["trt"]
        model.onnx["int8"] = work / f"{model.name}.int8.onnx"
        write_bytes_atomic(model.onnx["int8"], int8.SerializeToString())


def legacy_export(module: Any, example: np.ndarray) -> Any:
    import onnx
    import torch

    from resnet_serve.models.fold import fold_batchnorm

    buf = io.BytesIO()
    torch.onnx.export(
        fold_batchnorm(module),
        (torch.from_numpy(example),),
        buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return onnx.load_from_string(buf.getvalue())


def set_reference(model: Model) -> None:
    if "fp32" in model.onnx:
        from resnet_serve.runtime.onnxruntime import OrtBackend, OrtOptions

        ref = OrtBackend(model.onnx["fp32"], OrtOptions(device="cpu"))
        model.reference = ref.infer({"input": model.inputs})["logits"]
        model.reference_name = "onnxruntime-cpu fp32"
    else:
        import torch

        from resnet_serve.models.checkpoint import load_model

        module, _ = load_model(model.checkpoint)
        with torch.no_grad():
            model.reference = module(torch.from_numpy(model.inputs)).numpy()
        model.reference_name = "pytorch-cpu fp32"


# ---- backends ----


@dataclass
class Candidate:
    backend: str  # e.g. "torch-cuda", "ort-cuda", "tensorrt"
    precision: str
    make: Callable[[], Any]  # -> server.backends.base.Backend
    server_args: list[str] | None = None  # how `resnet-serve serve` runs this backend, None: not served


def candidates(
    model: Model, env: dict[str, Any], work: Path, dry_run: bool
) -> tuple[list[Candidate], list[str]]:
    from resnet_serve.runtime.onnxruntime import OrtBackend, OrtOptions

    found: list[Candidate] = []
    skipped: list[str] = []
    gpu = bool(env.get("cuda_available"))
    if gpu:
        from resnet_serve.runtime.torch_cuda import TorchCudaBackend, TorchOptions

        for dtype in ("fp32", "fp16", "bf16"):
            found.append(
                Candidate(
                    "torch-cuda",
                    dtype,
                    functools.partial(
                        TorchCudaBackend, model.checkpoint, TorchOptions(dtype=dtype, max_batch_size=128)
                    ),
                    ["--backend", "torch", "--device", "cuda"] if dtype == "fp16" else None,
                )
            )
    else:
        skipped.append("torch-cuda: no CUDA GPU visible to PyTorch")
    providers = env.get("ort_providers", [])
    onnx32 = model.onnx.get("fp32")
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if onnx32 is None:
            skipped.append(f"ort-{device}: no ONNX model (export failed)")
        elif provider in providers:
            found.append(
                Candidate(
                    f"ort-{device}",
                    "fp32",
                    functools.partial(OrtBackend, onnx32, OrtOptions(device=device)),
                    ["--backend", "onnxruntime", "--device", device],
                )
            )
        else:
            skipped.append(f"ort-{device}: onnxruntime offers no {provider} (CPU-only onnxruntime)")
    if tensorrt_usable(env):
        found.extend(tensorrt_candidates(model, work))
    else:
        skipped.append(
            f"tensorrt: TensorRT {env['tensorrt']}, cuda-python {env['cuda_python']}, "
            f"GPU {'yes' if gpu else 'no'}"
        )
    if dry_run:
        from resnet_serve.runtime.torch_cuda import TorchCudaBackend, TorchOptions

        # CPU stand-ins that walk the same code paths as the GPU backends.
        found.append(
            Candidate(
                "torch-cpu",
                "fp32",
                lambda: TorchCudaBackend(
                    model.checkpoint, TorchOptions(dtype="fp32", device="cpu", max_batch_size=32)
                ),
                ["--backend", "torch", "--device", "cpu"],
            )
        )
        if onnx32 is not None:
            found.append(
                Candidate(
                    "ort-cpu",
                    "fp32",
                    lambda: OrtBackend(onnx32, OrtOptions(device="cpu")),
                    ["--backend", "onnxruntime", "--device", "cpu"],
                )
            )
        onnx16 = model.onnx.get("fp16")
        if onnx16 is not None:  # exercises the reduced-precision verdicts
            found.append(Candidate("ort-cpu", "fp16", lambda: OrtBackend(onnx16, OrtOptions(device="cpu"))))
    return found, skipped


def tensorrt_candidates(model: Model, work: Path) -> list[Candidate]:
    from resnet_serve.export.engine import BatchProfile, BuildRequest, build
    from resnet_serve.runtime.tensorrt import TensorRTBackend

    out = []
    for precision, onnx_path in model.onnx.items():
        plan = work / f"{model.name}.{precision}.plan"

        def make(onnx_path: Path = onnx_path, plan: Path = plan) -> Any:
            if not plan.is_file():
                build(
                    BuildRequest(
                        onnx_path, plan, BatchProfile(1, 32, 128), timing_cache=work / "timing.cache"
                    ),
                    progress=False,
                )
            return TensorRTBackend(plan)

        out.append(Candidate("tensorrt", precision, make, ["--backend", "tensorrt", "--device", "cuda"]))
    return out


# ---- measurements ----


@dataclass
class Row:
    model: str
    backend: str
    precision: str
    reference: str = ""
    rel_error: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    parity: str = ""  # "pass", "FAIL", "info" or the reason it was skipped
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)  # batch -> img/s, p50/p99 ms
    served: dict[str, dict[str, float]] = field(default_factory=dict)  # concurrency -> img/s, p50/p99 ms
    notes: list[str] = field(default_factory=list)


def parity(row: Row, model: Model, logits: np.ndarray) -> None:
    ref = model.reference
    assert ref is not None
    row.reference = model.reference_name
    row.rel_error = float(np.abs(logits - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    row.top1_agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
    if model.labels is not None:
        row.accuracy = float((logits.argmax(1) == model.labels).mean())
        row.reference_accuracy = float((ref.argmax(1) == model.labels).mean())
    if row.precision == "fp32":
        row.parity = "pass" if row.rel_error <= FP32_TOLERANCE else "FAIL"
    elif model.labels is not None and row.accuracy is not None and row.reference_accuracy is not None:
        ok = row.top1_agreement >= 0.99 and row.accuracy >= row.reference_accuracy - 0.01
        row.parity = "pass" if ok else "FAIL"
    else:
        row.parity = "info"  # random-weight ResNet-50: agreement is reported, accuracy has no meaning


def latency_stats(latencies: list[float], images: int) -> dict[str, float]:
    arr = np.asarray(latencies)
    return {
        "images_per_s": round(images / float(arr.sum()) if arr.sum() > 0 else 0.0, 1),
        "p50_ms": round(float(np.percentile(arr, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(arr, 99)) * 1e3, 3),
        "calls": len(latencies),
    }


def throughput(backend: Any, sample: np.ndarray, batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    name = backend.info.inputs[0].name
    out = {}
    for n in batches:
        x = np.ascontiguousarray(np.broadcast_to(sample, (n, *sample.shape)))
        for _ in range(3):
            backend.infer({name: x})
        latencies: list[float] = []
        end = time.perf_counter() + seconds
        while len(latencies) < 5 or time.perf_counter() < end:
            t0 = time.perf_counter()
            backend.infer({name: x})
            latencies.append(time.perf_counter() - t0)
        out[str(n)] = latency_stats(latencies, n * len(latencies))
    return out


def run_candidate(cfg: Settings, model: Model, cand: Candidate) -> tuple[Row, Any]:
    row = Row(model.name, cand.backend, cand.precision)
    try:
        cfg.require_time(30, f"{cand.backend} {cand.precision}")
        log(f"{model.name}: {cand.backend} {cand.precision}: load")
        backend = cand.make()
    except Skip as err:
        row.parity = str(err)
        return row, None
    except Exception as err:
        row.parity = f"load failed: {first_line(err)}"
        return row, None
    try:
        logits = backend.infer({backend.info.inputs[0].name: model.inputs})[backend.info.outputs[0].name]
        parity(row, model, np.asarray(logits, dtype=np.float32))
        log(f"{model.name}: {cand.backend} {cand.precision}: parity {row.parity}, throughput")
        row.throughput = throughput(backend, model.inputs[0], cfg.batches, cfg.seconds_per_point)
    except Exception as err:
        row.notes.append(f"run failed: {first_line(err)}")
    return row, backend


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


# ---- served through the real gRPC server ----


def jpeg_images(shape: tuple[int, ...], count: int = 32) -> list[bytes]:
    """Smooth synthetic pictures at the model's input size (so the server's resize is a no-op)."""
    from PIL import Image

    chans, height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(count):
        planes = [np.sin(xx / (7 + i + c * 3)) * np.cos(yy / (5 + c + i % 5)) for c in range(max(chans, 1))]
        pixels = ((np.stack(planes, -1) + 1) * 127.5).astype(np.uint8)
        img = Image.fromarray(pixels[..., 0] if chans == 1 else pixels, "L" if chans == 1 else "RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG" if chans == 3 else "PNG", quality=90)
        out.append(buf.getvalue())
    return out


@contextlib.contextmanager
def server(
    model_name: str, path: Path, args: list[str], timeout_s: float, images: list[bytes], logs: Path
) -> Iterator[str]:
    port = free_port()
    log_path = logs / f"{model_name}.{args[1]}.server.log"
    with (
        log_path.open("w") as sink,
        serving(
            "--model", f"{model_name}={path}",
            "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "-1",
            "--max-batch-size", "128", "--max-queue-delay-ms", "2", "--log-level", "warning",
            *args,
            stdout=sink, stderr=subprocess.STDOUT,
        ) as proc,
    ):  # fmt: skip
        target = f"127.0.0.1:{port}"
        wait_ready(proc, target, images[0], timeout_s, log_path)
        yield target


def wait_ready(
    proc: subprocess.Popen[bytes], target: str, image: bytes, timeout_s: float, log_path: Path
) -> None:
    from resnet_serve.client.sync import Client

    with Client(target, timeout=10, retry=None) as client:
        end = time.perf_counter() + timeout_s
        while time.perf_counter() < end:
            if proc.poll() is not None:
                tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
                raise Skip(f"the server exited ({proc.returncode}): {tail[0][:200]}")
            try:
                client.classify(image)
                return
            except Exception:
                time.sleep(0.5)
    raise Skip(f"the server was not ready within {timeout_s:.0f} s (see {log_path})")


def _load_worker(target: str, images: list[bytes], concurrency: int, seconds: float, queue: Any) -> None:
    from resnet_serve.client.aio import AsyncClient

    async def main() -> tuple[list[float], int]:
        client = AsyncClient(target, timeout=30, retry=None)
        latencies: list[float] = []
        errors = 0
        end = time.perf_counter() + seconds

        async def loop(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    await client.classify(images[i % len(images)], top_k=1)
                    latencies.append(time.perf_counter() - t0)
                except Exception:
                    errors += 1
                i += concurrency

        await asyncio.gather(*(loop(k) for k in range(concurrency)))
        return latencies, errors

    queue.put(asyncio.run(main()))


def served_load(target: str, images: list[bytes], concurrency: int, seconds: float) -> dict[str, float]:
    """Closed-loop load: `concurrency` requests in flight, spread over client processes so the client's
    own Python is not what limits the measurement."""
    procs = max(1, min(8, concurrency // 16))
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_load_worker, args=(target, images, n, seconds, queue)) for n in per]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    latencies = [x for lat, _ in results for x in lat]
    errors = sum(e for _, e in results)
    if not latencies:
        raise Skip(f"no request succeeded at concurrency {concurrency} ({errors} errors)")
    arr = np.asarray(latencies)
    return {
        "images_per_s": round(len(arr) / seconds, 1),
        "p50_ms": round(float(np.percentile(arr, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(arr, 99)) * 1e3, 3),
        "requests": len(arr),
        "errors": errors,
    }


def serve_row(cfg: Settings, model: Model, cand: Candidate, row: Row, work: Path) -> None:
    assert cand.server_args is not None
    path = model.checkpoint if cand.backend.startswith("torch") else model.onnx.get(cand.precision)
    if cand.backend == "tensorrt":
        path = work / f"{model.name}.{cand.precision}.plan"
    if path is None:
        return
    try:
        cfg.require_time(30 + len(cfg.served_concurrency) * cfg.served_seconds, "served")
        shape = model.inputs.shape[1:]
        images = jpeg_images(shape)
        log(f"{model.name}: {cand.backend} {cand.precision}: starting the server")
        with server(model.name, path, cand.server_args, 240, images, work) as target:
            for c in cfg.served_concurrency:
                log(f"{model.name}: {cand.backend} {cand.precision}: served load at concurrency {c}")
                row.served[str(c)] = served_load(target, images, c, cfg.served_seconds)
    except Skip as err:
        row.notes.append(f"served: {err}")
    except Exception as err:
        row.notes.append(f"served: failed: {first_line(err)}")


# ---- report ----


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row], batches: tuple[int, ...], concurrency: tuple[int, ...]) -> str:
    head = ["model", "backend", "prec", "parity", "rel err", "top1 agr", "acc"]
    head += [f"b{b} img/s" for b in batches] + [f"b{batches[0]} p50/p99 ms", f"b{batches[-1]} p50/p99 ms"]
    head += [f"c{c} img/s" for c in concurrency] + [f"c{concurrency[-1]} p50/p99 ms"]
    lines = []
    for r in rows:
        tp = r.throughput
        sv = r.served

        def pp(d: dict[str, dict[str, float]], k: Any) -> str:
            s = d.get(str(k))
            return f"{s['p50_ms']:.2f}/{s['p99_ms']:.2f}" if s else "-"

        acc = "-" if r.accuracy is None else f"{r.accuracy:.3f} ({fmt(r.reference_accuracy, '.3f')})"
        cells = [
            r.model,
            r.backend,
            r.precision,
            r.parity[:60],
            fmt(r.rel_error, ".1e"),
            fmt(r.top1_agreement, ".3f"),
            acc,
        ]
        cells += [fmt(tp.get(str(b), {}).get("images_per_s"), ".0f") for b in batches]
        cells += [pp(tp, batches[0]), pp(tp, batches[-1])]
        cells += [fmt(sv.get(str(c), {}).get("images_per_s"), ".0f") for c in concurrency]
        cells += [pp(sv, concurrency[-1])]
        lines.append(cells)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def targets(rows: list[Row], batches: tuple[int, ...], concurrency: tuple[int, ...]) -> list[str]:
    """The issue's ResNet-50 targets, judged on what was measured (never on a dry run's CPU stand-ins)."""
    verdicts = []
    torch16 = next(
        (r for r in rows if r.model == "resnet50" and r.backend == "torch-cuda" and r.precision == "fp16"),
        None,
    )
    big = str(max(batches))
    if torch16 is None or big not in torch16.throughput:
        return ["targets: not measured (no ResNet-50 PyTorch CUDA FP16 run)"]
    inproc = torch16.throughput[big]["images_per_s"]
    ok = "pass" if inproc >= RESNET50_TARGET and big == "128" else "FAIL"
    verdicts.append(
        f"target ResNet-50 torch-cuda fp16 batch {big}: {inproc:.0f} img/s (>= {RESNET50_TARGET:.0f}): {ok}"
    )
    top = str(max(concurrency))
    if top in torch16.served:
        served = torch16.served[top]["images_per_s"]
        ratio = served / inproc if inproc else 0.0
        verdict = "pass" if ratio >= SERVED_FRACTION_TARGET else "FAIL"
        verdicts.append(
            f"target served at concurrency {top}: {served:.0f} img/s = {ratio:.0%} of in-process "
            f"(>= {SERVED_FRACTION_TARGET:.0%}): {verdict}"
        )
    else:
        verdicts.append("target served: not measured (" + "; ".join(torch16.notes or ["no served run"]) + ")")
    return verdicts


# ---- main ----


def check(cfg: Settings) -> dict[str, Any]:
    work = cfg.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    log("environment: " + json.dumps(env))
    on_gpu = bool(env.get("cuda_available"))
    if not on_gpu and not cfg.dry_run:
        log("no CUDA GPU visible to PyTorch: only ONNX Runtime GPU providers and TensorRT can run")
    rows: list[Row] = []
    skipped: list[str] = []
    makers: list[tuple[str, Callable[[], Model]]] = [("digits", lambda: digits_model(cfg, work, on_gpu))]
    if cfg.resnet50:
        makers.append(("resnet50", lambda: resnet50_model(work, on_gpu)))
    else:
        skipped.append("resnet50: skipped (" + ("dry run" if cfg.dry_run else "--no-resnet50") + ")")
    for name, make in makers:
        try:
            cfg.require_time(60, name)
            log(f"{name}: preparing the model")
            model = make()
            try:
                export_onnx(model, work, want_int8=tensorrt_usable(env))
            except Exception as err:
                model.notes.append(f"ONNX export failed: {first_line(err)}")
                skipped.append(f"{name}: ONNX export failed: {first_line(err)}")
            set_reference(model)
        except Skip as err:
            skipped.append(str(err))
            continue
        found, why_not = candidates(model, env, work, cfg.dry_run)
        skipped += [f"{name}: {w}" for w in why_not]
        for cand in found:
            row, backend = run_candidate(cfg, model, cand)
            row.notes += model.notes
            if backend is not None:
                with contextlib.suppress(Exception):
                    backend.close()
            if backend is not None and cand.server_args is not None and (name == "resnet50" or cfg.dry_run):
                serve_row(cfg, model, cand, row, work)
            rows.append(row)
            save(cfg.out, report_of(cfg, env, rows, skipped))  # a killed run still leaves its results
    return report_of(cfg, env, rows, skipped)


def report_of(cfg: Settings, env: dict[str, Any], rows: list[Row], skipped: list[str]) -> dict[str, Any]:
    return {
        "environment": env,
        "dry_run": cfg.dry_run,
        "rows": [asdict(r) for r in rows],
        "skipped": skipped,
        "targets": [] if cfg.dry_run else targets(rows, cfg.batches, cfg.served_concurrency),
        "elapsed_s": round(time.perf_counter() - cfg.started, 1),
    }


def save(out: Path, report: dict[str, Any]) -> Path:
    from resnet_serve.formats.files import write_json_atomic

    path = out / "gpu_check.json"
    write_json_atomic(path, report)
    return path


def render(report: dict[str, Any], batches: tuple[int, ...], concurrency: tuple[int, ...]) -> str:
    rows = [Row(**{k: v for k, v in r.items()}) for r in report["rows"]]
    parts = [
        "",
        "GPU check" + (" (DRY RUN on CPU: stand-in backends, not GPU numbers)" if report["dry_run"] else ""),
    ]
    env = report["environment"]
    parts.append(
        f"GPU: {env.get('gpu', 'none')}  torch {env.get('torch')} (CUDA {env.get('torch_cuda')})  "
        f"TensorRT {env.get('tensorrt')}  onnxruntime {env.get('onnxruntime')} "
        f"{env.get('ort_providers')}"
    )
    parts += [f"skipped: {s}" for s in report["skipped"]]
    for r in rows:
        parts += [f"note ({r.model} {r.backend} {r.precision}): {n}" for n in dict.fromkeys(r.notes)]
    parts += report["targets"]
    parts += ["", table(rows, batches, concurrency), f"({report['elapsed_s']:.0f} s)"]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/gpu_check"),
        help="folder for gpu_check.json and the models it builds (default: artifacts/gpu_check)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU run of the whole flow: 2-epoch digits, CPU stand-in backends, short timings",
    )
    parser.add_argument(
        "--prepare",
        type=Path,
        metavar="DIR",
        help="only train the digits model and save its data to DIR (for nodes without sklearn)",
    )
    parser.add_argument(
        "--digits", type=Path, metavar="DIR", help="a --prepare bundle to use instead of training"
    )
    parser.add_argument("--epochs", type=int, default=15, help="digits training epochs for --prepare (15)")
    parser.add_argument(
        "--no-resnet50", action="store_true", help="skip ResNet-50 (default: on, off in dry runs)"
    )
    parser.add_argument(
        "--resnet50", action="store_true", help="include ResNet-50 in a dry run (slow on a CPU)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="stop starting new steps after this (450)"
    )
    args = parser.parse_args(argv)
    if args.prepare is not None:
        try:
            prepare_bundle(args.prepare, epochs=args.epochs)
        except Skip as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    dry = bool(args.dry_run)
    cfg = Settings(
        out=args.out,
        dry_run=dry,
        budget_s=args.budget_s,
        seconds_per_point=0.3 if dry else 2.0,
        batches=(1, 8, 32) if dry else BATCHES,
        served_seconds=2.0 if dry else 8.0,
        served_concurrency=(1, 8) if dry else (1, 64),
        digits_bundle=args.digits,
        resnet50=not args.no_resnet50 and (args.resnet50 or not dry),
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = check(cfg)
    path = save(args.out, report)
    print(render(report, cfg.batches, cfg.served_concurrency))
    print(f"wrote {path}")
    failed = [r for r in report["rows"] if r["parity"] == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
