"""A tiny ONNX classifier with our metadata_props, built without torch: what most server tests serve."""

from __future__ import annotations

import json
from pathlib import Path

from resnet_serve.formats.metadata import LABELS_KEY, PREPROCESS_KEY, ModelMetadata

TINY_PREPROCESS = {
    "color": "L",
    "resize": 8,
    "crop": 8,
    "interpolation": "bilinear",
    "mean": [0.5],
    "std": [0.25],
}
TINY_LABELS = [f"class-{i}" for i in range(10)]


def write_tiny_onnx(path: Path, seed: int = 0, classes: int = 10, slow_layers: int = 0) -> Path:
    """conv 3x3 (4 filters) → relu → flatten → gemm: (N, 1, 8, 8) float32 "input" → (N, classes) "logits".

    `slow_layers` > 0 inserts that many 1024x1024 matmuls (sharing one weight, so the file stays small):
    about 1M multiply-adds per row each, to make compute slow enough to observe queues.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w_conv = rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)
    b_conv = rng.normal(0, 0.1, (4,)).astype(np.float32)
    w_fc = rng.normal(0, 0.2, (classes, 4 * 8 * 8)).astype(np.float32)
    b_fc = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w_conv", "b_conv"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
    ]
    extra: list[onnx.TensorProto] = []
    features = "flat"
    if slow_layers:
        w_in = rng.normal(0, 0.1, (4 * 8 * 8, 1024)).astype(np.float32)
        w_hidden = (np.eye(1024) + rng.normal(0, 0.01, (1024, 1024))).astype(np.float32)
        w_out = rng.normal(0, 0.05, (1024, 4 * 8 * 8)).astype(np.float32)
        extra = [
            numpy_helper.from_array(a, n) for a, n in ((w_in, "w_in"), (w_hidden, "w_h"), (w_out, "w_out"))
        ]
        nodes.append(helper.make_node("MatMul", ["flat", "w_in"], ["h0"]))
        for i in range(slow_layers):
            nodes.append(helper.make_node("MatMul", [f"h{i}", "w_h"], [f"h{i + 1}"]))
        nodes.append(helper.make_node("MatMul", [f"h{slow_layers}", "w_out"], ["slow_out"]))
        features = "slow_out"
    nodes.append(helper.make_node("Gemm", [features, "w_fc", "b_fc"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w_conv, "w_conv"), (b_conv, "b_conv"), (w_fc, "w_fc"), (b_fc, "b_fc"))
        ]
        + extra,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    labels = TINY_LABELS if classes == 10 else [str(i) for i in range(classes)]
    meta = ModelMetadata("tiny", labels, TINY_PREPROCESS, "0" * 64, {"onnx": onnx.__version__}, "fp32")
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# The digits model the docs use (28x28 grayscale digits, resized to 32), for tests that run their commands.
DIGITS_PREPROCESS = {
    "color": "L",
    "resize": 32,
    "crop": 32,
    "interpolation": "bilinear",
    "mean": [0.5],
    "std": [0.25],
}


def write_digits_onnx(path: Path) -> Path:
    """A stand-in for the docs' digits model: (N, 1, 32, 32) float32 → flatten → gemm → (N, 10) logits, with
    the server's metadata."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (10, 32 * 32)).astype(np.float32)
    b = rng.normal(0, 0.1, (10,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ],
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {
        LABELS_KEY: json.dumps(TINY_LABELS),
        PREPROCESS_KEY: json.dumps(DIGITS_PREPROCESS),
    }.items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
