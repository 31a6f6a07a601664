"""Models and config.pbtxt files in the style of Triton's own examples, built with onnx.helper (no torch):
what Triton's example clients (triton-inference-server/client, src/python/examples) and its docs use.

* `simple_string`: Triton's string example — INPUT0, INPUT1 TYPE_STRING [16] (strings of integers) →
  OUTPUT0 = their sum, OUTPUT1 = their difference, as strings; max_batch_size 8.
* `densenet_like`: the shape of Triton's densenet_onnx example configuration — max_batch_size 0, input
  `data_0` dims [3, S, S] with `reshape { shape: [1, 3, S, S] }` and FORMAT_NCHW, output `fc6_1` dims [10]
  with `reshape { shape: [1, 10, 1, 1] }`, labels in densenet_labels.txt.
* `simple_identity` (Triton's string example's second model): STRING [-1] → the same, max_batch_size 8;
  `string_identity`: the same without a batch dimension (max_batch_size 0).
* `variable_int32`: INT32 [-1] with a batch dimension (dims [-1]): the default warmup must pick a size.
* `tile`: FP32 [-1] → the same repeated (an answer larger than its request), max_batch_size 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resnet_serve.formats.metadata import PREPROCESS_KEY

if TYPE_CHECKING:
    from collections.abc import Sequence

    from onnx import ModelProto, OperatorSetIdProto, TensorProto

SIMPLE_STRING_CONFIG = """
name: "simple_string"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
"""

DENSENET_SIZE = 16
DENSENET_LABELS = [f"class{i}" for i in range(10)]


def _save(model: ModelProto, path: Path) -> Path:
    import onnx

    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _opset() -> list[OperatorSetIdProto]:
    from onnx import helper

    return [helper.make_opsetid("", 17)]


def write_simple_string(repository: Path, config: str = SIMPLE_STRING_CONFIG) -> Path:
    """`simple_string` (module doc; the model lab/triton_examples/ serves to Triton's example clients) with
    `config` as its config.pbtxt; returns the model directory."""
    from onnx import TensorProto as T

    from lab.triton_examples.models import write_add_sub

    directory = write_add_sub(repository, "simple_string", T.STRING)
    (directory / "config.pbtxt").write_text(config)
    return directory


def densenet_config(name: str = "densenet_like", fmt: str = "FORMAT_NCHW") -> str:
    s = DENSENET_SIZE
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {{
    name: "data_0"
    data_type: TYPE_FP32
    format: {fmt}
    dims: [ 3, {s}, {s} ]
    reshape {{ shape: [ 1, 3, {s}, {s} ] }}
  }}
]
output [
  {{
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 10 ]
    reshape {{ shape: [ 1, 10, 1, 1 ] }}
    label_filename: "densenet_labels.txt"
  }}
]
"""


def densenet_weights() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 1, (10, 3, 1, 1)).astype(np.float32)


def densenet_reference(image: np.ndarray) -> np.ndarray:
    """The model's output for one [3, S, S] input: a 1x1 convolution of the per-channel means."""
    means = image.reshape(3, -1).mean(axis=1)
    out: np.ndarray = densenet_weights().reshape(10, 3) @ means
    return out


DENSENET_PREPROCESS = {
    "color": "RGB",
    "resize": DENSENET_SIZE,
    "crop": DENSENET_SIZE,
    "interpolation": "bilinear",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}


def write_densenet_like(
    repository: Path, name: str = "densenet_like", config: str | None = None, images: bool = False
) -> Path:
    """`densenet_like` (module doc): the model's own tensors are [1, 3, S, S] → [1, 10, 1, 1]. `images`: with
    our preprocessing metadata (DENSENET_PREPROCESS), so it also takes encoded images."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    s = DENSENET_SIZE
    nodes = [
        helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w"], ["fc6_1"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("data_0", T.FLOAT, [1, 3, s, s])],
        [helper.make_tensor_value_info("fc6_1", T.FLOAT, [1, 10, 1, 1])],
        [numpy_helper.from_array(densenet_weights(), "w")],
    )
    model = helper.make_model(graph, opset_imports=_opset())
    if images:
        model.metadata_props.add(key=PREPROCESS_KEY, value=json.dumps(DENSENET_PREPROCESS))
    directory = repository / name
    _save(model, directory / "1" / "model.onnx")
    (directory / "config.pbtxt").write_text(config if config is not None else densenet_config(name))
    (directory / "densenet_labels.txt").write_text("\n".join(DENSENET_LABELS) + "\n")
    return directory


def _one_op_model(
    repository: Path,
    name: str,
    op: str,
    tensors: tuple[int, Sequence[str | int]],
    config: str,
    initializers: list[TensorProto],
    output_dims: Sequence[str | int] | None = None,
) -> Path:
    """A model directory holding INPUT0 → `op` → OUTPUT0 (element type and dims in `tensors`; the output's
    own dims in `output_dims`, if they differ) and `config`."""
    from onnx import helper

    element, dims = tensors
    inputs = ["INPUT0", *(i.name for i in initializers)]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["OUTPUT0"])],
        name,
        [helper.make_tensor_value_info("INPUT0", element, dims)],
        [helper.make_tensor_value_info("OUTPUT0", element, output_dims or dims)],
        initializers,
    )
    directory = repository / name
    _save(helper.make_model(graph, opset_imports=_opset()), directory / "1" / "model.onnx")
    (directory / "config.pbtxt").write_text(config)
    return directory


def write_string_identity(repository: Path, name: str = "string_identity", max_batch_size: int = 0) -> Path:
    """STRING [-1] → STRING [-1]; with max_batch_size 0 the shape is the model's own."""
    from onnx import TensorProto as T

    config = f"""
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] }} ]
"""
    dims = ["batch", "n"] if max_batch_size else ["n"]
    return _one_op_model(repository, name, "Identity", (T.STRING, dims), config, [])


def write_variable_int32(repository: Path, name: str = "variable_int32", warmup: str = "") -> Path:
    """INT32 [-1] with a batch dimension (max_batch_size 8): OUTPUT0 = INPUT0 * 2. `warmup`: config.pbtxt
    text added at its end (model_warmup entries)."""
    from onnx import TensorProto as T
    from onnx import numpy_helper

    config = _vector_config(name, "TYPE_INT32", 8) + warmup
    two = numpy_helper.from_array(np.array(2, dtype=np.int32), "two")
    return _one_op_model(repository, name, "Mul", (T.INT32, ["batch", "n"]), config, [two])


def write_tile(repository: Path, name: str = "tile", repeats: int = 4) -> Path:
    """FP32 [-1] without a batch dimension (max_batch_size 0): OUTPUT0 is INPUT0 repeated `repeats` times, an
    answer `repeats` times the size of the request."""
    from onnx import TensorProto as T
    from onnx import numpy_helper

    times = numpy_helper.from_array(np.array([repeats], dtype=np.int64), "repeats")
    config = _vector_config(name, "TYPE_FP32", 0)
    return _one_op_model(repository, name, "Tile", (T.FLOAT, ["n"]), config, [times], output_dims=["m"])


def _vector_config(name: str, data_type: str, max_batch_size: int) -> str:
    """config.pbtxt of an ONNX Runtime model taking INPUT0 and answering OUTPUT0, both `data_type` [-1]."""
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: {data_type} dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: {data_type} dims: [ -1 ] }} ]
"""


def write_integer_identity(repository: Path, datatype: str) -> Path:
    """`<datatype>_identity`: INPUT0 [-1, 4] of Triton's TYPE_<datatype> → Identity → OUTPUT0, batched (8)."""
    from onnx import TensorProto as T

    name = f"{datatype.lower()}_identity"
    config = f"""
name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_{datatype} dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_{datatype} dims: [ 4 ] }} ]
"""
    return _one_op_model(repository, name, "Identity", (getattr(T, datatype), ["batch", 4]), config, [])
