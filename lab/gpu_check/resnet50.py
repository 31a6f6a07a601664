"""ResNet-50 with random weights and BatchNorm statistics calibrated on random images (nothing to download),
saved as one of our checkpoints with the one ImageNet preprocessing every exporter uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lab.gpu_check.model import Model


def resnet50_model(work: Path, on_gpu: bool) -> Model:
    """Calibrated BatchNorm keeps activations in a realistic range (FP16 would overflow on an uncalibrated
    random network)."""
    import torch

    from resnet_serve.formats.preprocess import IMAGENET
    from resnet_serve.models.checkpoint import FORMAT, save_checkpoint
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
            "format": FORMAT,
            "arch": "resnet50",
            "model_config": {"num_classes": 1000, "in_chans": 3},
            "state_dict": model.state_dict(),
            "labels": [f"class_{i}" for i in range(1000)],
            "preprocess": IMAGENET,
        },
    )
    crop = int(IMAGENET["crop"])
    x = np.random.default_rng(0).normal(size=(32, 3, crop, crop)).astype(np.float32)
    return Model("resnet50", ckpt, x, None, x[:16])
