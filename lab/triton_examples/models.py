"""The model repository Triton's example clients expect, built torch-free with onnx.helper.

Triton's docs repository (triton-inference-server/server, docs/examples/model_repository) holds `simple`,
`simple_int8`, `simple_string`, `simple_identity`, `densenet_onnx` and `inception_onnx` (plus the sequence
models, a non-goal here); Triton's QA adds `custom_identity_int32` for memory_growth_test.py. Each model here
has the same tensors, datatypes and config.pbtxt as Triton's (the image models' weights are random: the
examples check shapes and labels, not accuracy), so the example clients run against it unchanged. One model
of our own, `inception_batch`, is the same NHWC image input with a batch dimension, for `image_client.py -b`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET: Final = 17
INT_MODELS: Final = {"simple": TensorProto.INT32, "simple_int8": TensorProto.INT8}
_CONFIG_TYPES: Final[dict[int, str]] = {
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.STRING: "TYPE_STRING",
}


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _io(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _tensors(kind: str, entries: list[tuple[str, str, str]]) -> str:
    """config.pbtxt's `input [...]` or `output [...]` block from (name, data_type, extra lines)."""
    blocks = [
        f'  {{\n    name: "{name}"\n    data_type: {data_type}\n{extra}  }}'
        for name, data_type, extra in entries
    ]
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


def _config(name: str, max_batch_size: int, inputs: str, outputs: str) -> str:
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n' + inputs + outputs
    )


def write_add_sub(repo: Path, name: str, elem: int) -> Path:
    """`simple` (INT32), `simple_int8` (INT8) and `simple_string` (STRING, decimal strings):
    OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, [16] per row, max_batch_size 8; computed in INT32
    between two Casts. Returns the model directory."""
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["diff"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=elem),
        helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=elem),
    ]
    shape: list[int | str] = ["batch", 16]
    graph = helper.make_graph(
        nodes,
        name,
        [_io("INPUT0", elem, shape), _io("INPUT1", elem, shape)],
        [_io("OUTPUT0", elem, shape), _io("OUTPUT1", elem, shape)],
    )
    _save(graph, repo / name / "1" / "model.onnx")
    dtype = _CONFIG_TYPES[elem]
    dims = "    dims: [ 16 ]\n"
    text = _config(
        name,
        8,
        _tensors("input", [("INPUT0", dtype, dims), ("INPUT1", dtype, dims)]),
        _tensors("output", [("OUTPUT0", dtype, dims), ("OUTPUT1", dtype, dims)]),
    )
    (repo / name / "config.pbtxt").write_text(text)
    return repo / name


def write_identity(repo: Path, name: str, elem: int, config_type: str) -> None:
    """`simple_identity` (STRING) and `custom_identity_int32`: OUTPUT0 = INPUT0, dims [ -1 ]."""
    shape: list[int | str] = ["batch", "n"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        name,
        [_io("INPUT0", elem, shape)],
        [_io("OUTPUT0", elem, shape)],
    )
    _save(graph, repo / name / "1" / "model.onnx")
    dims = "    dims: [ -1 ]\n"
    text = _config(
        name,
        8,
        _tensors("input", [("INPUT0", config_type, dims)]),
        _tensors("output", [("OUTPUT0", config_type, dims)]),
    )
    (repo / name / "config.pbtxt").write_text(text)


def _labels(path: Path, n: int) -> None:
    path.write_text("".join(f"class_{i}\n" for i in range(n)))


def write_densenet(repo: Path) -> None:
    """`densenet_onnx` as Triton's docs configure it: no batch dimension, `reshape` on both tensors, NCHW.
    The network: global average pool, then a 1x1 convolution to 1000 classes (random weights)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (1000, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w"], ["fc6_1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "densenet_onnx",
        [_io("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [_io("fc6_1", TensorProto.FLOAT, [1, 1000, 1, 1])],
        [numpy_helper.from_array(w, "w")],
    )
    _save(graph, repo / "densenet_onnx" / "1" / "model.onnx")
    text = _config(
        "densenet_onnx",
        0,
        _tensors(
            "input",
            [
                (
                    "data_0",
                    "TYPE_FP32",
                    "    format: FORMAT_NCHW\n    dims: [ 3, 224, 224 ]\n"
                    "    reshape { shape: [ 1, 3, 224, 224 ] }\n",
                )
            ],
        ),
        _tensors(
            "output",
            [
                (
                    "fc6_1",
                    "TYPE_FP32",
                    "    dims: [ 1000 ]\n    reshape { shape: [ 1, 1000, 1, 1 ] }\n"
                    '    label_filename: "densenet_labels.txt"\n',
                )
            ],
        ),
    )
    (repo / "densenet_onnx" / "config.pbtxt").write_text(text)
    _labels(repo / "densenet_onnx" / "densenet_labels.txt", 1000)


def _nhwc_classifier(name: str, input_name: str, output_name: str, shape: list[int | str]) -> onnx.GraphProto:
    """NHWC image → softmax over 1001 classes: transpose, global average pool, a random linear layer."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (3, 1001)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", [input_name], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("GlobalAveragePool", ["nchw"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output_name], axis=1),
    ]
    rows = shape[0]
    return helper.make_graph(
        nodes,
        name,
        [_io(input_name, TensorProto.FLOAT, shape)],
        [_io(output_name, TensorProto.FLOAT, [rows, 1001])],
        [numpy_helper.from_array(w, "w")],
    )


def write_inception(repo: Path) -> None:
    """`inception_onnx` as Triton's docs configure it: NHWC [299, 299, 3], no batch dimension, reshape."""
    name, input_name, output_name = "inception_onnx", "input:0", "InceptionV3/Predictions/Softmax:0"
    _save(_nhwc_classifier(name, input_name, output_name, [1, 299, 299, 3]), repo / name / "1" / "model.onnx")
    text = _config(
        name,
        0,
        _tensors(
            "input",
            [
                (
                    input_name,
                    "TYPE_FP32",
                    "    format: FORMAT_NHWC\n    dims: [ 299, 299, 3 ]\n"
                    "    reshape { shape: [ 1, 299, 299, 3 ] }\n",
                )
            ],
        ),
        _tensors(
            "output",
            [
                (
                    output_name,
                    "TYPE_FP32",
                    "    dims: [ 1001 ]\n    reshape { shape: [ 1, 1001 ] }\n"
                    '    label_filename: "inception_labels.txt"\n',
                )
            ],
        ),
    )
    (repo / name / "config.pbtxt").write_text(text)
    _labels(repo / name / "inception_labels.txt", 1001)


def write_inception_batch(repo: Path) -> None:
    """`inception_batch`: the same NHWC classifier with a batch dimension (max_batch_size 8), [96, 96, 3]."""
    name = "inception_batch"
    _save(
        _nhwc_classifier(name, "input", "probabilities", ["batch", 96, 96, 3]),
        repo / name / "1" / "model.onnx",
    )
    text = _config(
        name,
        8,
        _tensors("input", [("input", "TYPE_FP32", "    format: FORMAT_NHWC\n    dims: [ 96, 96, 3 ]\n")]),
        _tensors(
            "output",
            [("probabilities", "TYPE_FP32", '    dims: [ 1001 ]\n    label_filename: "labels.txt"\n')],
        ),
    )
    (repo / name / "config.pbtxt").write_text(text)
    _labels(repo / name / "labels.txt", 1001)


# The models, by name; `write_repository` writes the ones asked for.
WRITERS: Final = {
    "simple": lambda repo: write_add_sub(repo, "simple", TensorProto.INT32),
    "simple_int8": lambda repo: write_add_sub(repo, "simple_int8", TensorProto.INT8),
    "simple_string": lambda repo: write_add_sub(repo, "simple_string", TensorProto.STRING),
    "simple_identity": lambda repo: write_identity(
        repo, "simple_identity", TensorProto.STRING, "TYPE_STRING"
    ),
    "custom_identity_int32": lambda repo: write_identity(
        repo, "custom_identity_int32", TensorProto.INT32, "TYPE_INT32"
    ),
    "densenet_onnx": write_densenet,
    "inception_onnx": write_inception,
    "inception_batch": write_inception_batch,
}


def write_repository(repo: Path, names: tuple[str, ...] = tuple(WRITERS)) -> Path:
    for name in names:
        WRITERS[name](repo)
    return repo
