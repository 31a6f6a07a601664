"""The training loop behind ``resnet-serve train``: a ResNet on digits, an image folder or CIFAR-10, written
as a checkpoint.

Single process by default; under ``torchrun --nproc_per_node=N`` it trains data-parallel
(DistributedDataParallel, gloo on CPU, NCCL on GPU) with the same global batch, and rank 0 writes the
checkpoint, the JSON-lines log and the curves. A checkpoint is written atomically after every epoch, and
``--resume`` continues from it exactly: every epoch's shuffling and augmentation derive from (seed, epoch).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning (unless the user chose otherwise). Read when torch loads, so
# it only helps where torch was not imported yet (torchrun, `python -m resnet_serve train`). Measured on
# 2 cores shared with other jobs: 3-epoch digits runs took 14-30 s per epoch spinning, 3-7 s passive.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from resnet_serve.models import registry
from resnet_serve.models.checkpoint import FORMAT, read_checkpoint, save_checkpoint
from resnet_serve.models.errors import CheckpointError, ModelsError
from resnet_serve.training import data as datasets
from resnet_serve.training.augment import augment, normalize
from resnet_serve.training.config import TrainConfig, TrainOptions
from resnet_serve.training.data import ImageSplit
from resnet_serve.training.log import log_paths, plot_curves, write_log


def train(config: TrainConfig, options: TrainOptions) -> int:
    """Train a fresh run; 0 when done, 3 when ``stop_after_steps`` stopped it. Raises UserError (a one-line
    message) for an unusable data set or checkpoint, OSError for a file that cannot be written."""
    return _session(lambda: _train(config, options, None))


def resume(options: TrainOptions, overrides: Mapping[str, Any]) -> int:
    """Continue the run stored in ``options.resume`` with the settings stored in it; ``overrides`` are the
    settings the user gave explicitly, which must agree with them. Returns and raises as `train`."""
    path = options.resume or options.out
    resumed = read_checkpoint(path)
    if "train_config" not in resumed:
        raise CheckpointError(
            f"{path} holds no training state (was it written by an export step?): "
            "train afresh without --resume"
        )
    config = TrainConfig.resumed(resumed, overrides, path)
    return _session(lambda: _train(config, options, resumed))


def _session(body: Callable[[], None]) -> int:
    try:
        body()
        return 0
    except _Interrupted:
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class _Interrupted(Exception):
    """Raised by ``--stop-after-steps``: stops mid-epoch without writing anything, like a killed process."""


@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_flag: str | None) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = torch.cuda.is_available() if device_flag is None else device_flag.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise ModelsError(f"--device {device_flag} asked for CUDA but torch sees no GPU: use --device cpu")
    if want_cuda:
        device = torch.device(device_flag if device_flag and ":" in device_flag else f"cuda:{local}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank, world, device)


def _lr_lambda(warmup_steps: int, total_steps: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _autocast(mode: str, device: torch.device) -> tuple[AbstractContextManager[Any], bool]:
    """The autocast context for ``--amp`` and whether fp16 loss scaling is needed."""
    if mode == "auto":
        if device.type != "cuda":
            return nullcontext(), False
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "off":
        return nullcontext(), False
    if mode == "fp16" and device.type != "cuda":
        raise ModelsError("--amp fp16 needs CUDA; on the CPU use --amp bf16 or --amp off")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), mode == "fp16"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageSplit,
    device: torch.device,
    batch: int = 500,
    autocast: AbstractContextManager[Any] | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) on the held-out split, in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(data.test_labels), batch):
        x = normalize(data.test_pixels[i : i + batch].to(device), data.preprocess)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.test_labels[i : i + batch].to(device)
        with autocast or nullcontext():
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    n = len(data.test_labels)
    return loss_sum / n, correct / n


def _train(cfg: TrainConfig, options: TrainOptions, resumed: dict[str, Any] | None) -> None:
    env = _setup_distributed(options.device)
    out = options.out

    data = datasets.load(
        cfg.dataset,
        Path(cfg.data) if cfg.data else None,
        cfg.color,
        cfg.image_size,
        options.workers,
    )
    model_config = {"num_classes": len(data.classes), "in_chans": int(data.train_pixels.shape[1])}
    torch.manual_seed(cfg.seed)
    model = registry.build(cfg.arch, **model_config, zero_init_residual=cfg.zero_init_residual)
    model.to(env.device)
    if env.device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if cfg.opt == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(data.train_labels)),  # type: ignore[arg-type]  # the sampler only needs len()
        num_replicas=env.world,
        rank=env.rank,
        shuffle=True,
        seed=cfg.seed,
    )
    per_rank_batch = max(1, cfg.batch_size // env.world)
    steps_per_epoch = math.ceil(len(sampler) / per_rank_batch)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup, cfg.epochs * steps_per_epoch))
    autocast, use_scaler = _autocast(cfg.amp, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=use_scaler)
    start_epoch, history = 0, []
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        opt.load_state_dict(resumed["optimizer"])
        sched.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        torch.set_rng_state(resumed["rng"]["torch"])
        start_epoch = int(resumed["epoch"])
        history = list(resumed.get("history", []))
    if env.world > 1:
        # 1x1 convolution grads have equally valid strides that DDP's buckets report as a mismatch; harmless.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    net: nn.Module = DistributedDataParallel(model) if env.world > 1 else model

    log_path, png_path = log_paths(out)
    if env.main:
        write_log(log_path, history)  # a resumed run drops log lines of the epoch it lost
        tqdm.write(
            f"training {cfg.arch} on {cfg.dataset}: {len(data.train_labels)} train / "
            f"{len(data.test_labels)} held-out images, {len(data.classes)} classes, {env.world} process(es) "
            f"on {env.device}" + (f", resuming after epoch {start_epoch}" if resumed else "")
        )
    steps_done = 0
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        # Shuffling and augmentation derive from (seed, epoch, rank) only: a resumed epoch repeats exactly.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + env.rank)
        net.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=env.device)
        correct = torch.zeros((), device=env.device, dtype=torch.long)
        seen = 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="step",
            leave=False,
            disable=None if env.main else True,  # None: no bar unless stderr is a terminal (no \r in pipes)
        )
        for step in bar:
            idx = order[step * per_rank_batch : (step + 1) * per_rank_batch]
            x = augment(data.train_pixels[idx].to(env.device), data.augment, data.preprocess, gen)
            if env.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = data.train_labels[idx].to(env.device)
            with autocast:
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
            steps_done += 1
            if options.stop_after_steps is not None and steps_done >= options.stop_after_steps:
                raise _Interrupted
            if step % 4 == 0 or step == steps_per_epoch - 1:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}",
                    acc=f"{correct.item() / seen:.3f}",
                    img_s=f"{seen * env.world / elapsed:.0f}",
                )
        train_time = time.perf_counter() - t0
        totals = torch.stack(
            [loss_sum.float(), correct.float(), torch.tensor(float(seen), device=env.device)]
        )
        if env.world > 1:
            dist.all_reduce(totals)
        test_loss, test_acc = evaluate(model, data, env.device, autocast=autocast)
        record = {
            "epoch": epoch + 1,
            "train_loss": totals[0].item() / totals[2].item(),
            "train_acc": totals[1].item() / totals[2].item(),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": opt.param_groups[0]["lr"],
            "epoch_time_s": train_time,
            "img_per_s": totals[2].item() / train_time,
        }
        history.append(record)
        if env.main:
            tqdm.write(
                f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {record['train_loss']:.4f}  "
                f"train {100 * record['train_acc']:.2f}%  held-out {100 * test_acc:.2f}% "
                f"(loss {test_loss:.4f})  {train_time:.1f}s  {record['img_per_s']:.0f} img/s"
            )
            save_checkpoint(
                out,
                {
                    "format": FORMAT,
                    "arch": cfg.arch,
                    "model_config": model_config,
                    "state_dict": model.state_dict(),
                    "labels": data.classes,
                    "preprocess": data.preprocess,
                    "epoch": epoch + 1,
                    "metrics": {k: v for k, v in record.items() if k != "epoch"},
                    "history": history,
                    "train_config": cfg.to_dict(),
                    "versions": {"torch": str(torch.__version__)},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": {"torch": torch.get_rng_state()},
                },
            )
            write_log(log_path, history)
    if env.main and history:
        plot_curves(png_path, history, f"{cfg.arch} on {cfg.dataset}")
        last = history[-1]
        best = max(history, key=lambda r: r["test_acc"])
        print(
            f"done: {cfg.arch} on {cfg.dataset}, {len(history)} epochs, held-out top-1 "
            f"{100 * last['test_acc']:.2f}% (best {100 * best['test_acc']:.2f}% at epoch {best['epoch']}), "
            f"{time.perf_counter() - started:.0f}s this session\n"
            f"checkpoint {out}\nlog {log_path}\ncurves {png_path}"
        )
