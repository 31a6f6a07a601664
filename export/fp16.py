"""FP16 ONNX from our FP32 ONNX, with float32 input and output kept.

TensorRT 11 builds only strongly typed networks: a layer runs in FP16 because its tensors are FP16 in the
graph, not because a builder flag allows it. So the FP16 engine starts from an FP16 ONNX. The graph's
interface stays float32 (`keep_io_types`), so clients, the preprocessing and the server are unchanged: the
model casts at its edges, on the GPU, where the cast costs nothing measurable.

The conversion is ONNX Runtime's `onnxruntime.transformers.float16` (shipped inside the onnxruntime wheel, so
no new dependency); NVIDIA's ModelOpt AutoCast does the same job but is not installable here.
"""

from __future__ import annotations

import onnx

from resnet_serve.formats.errors import UserError
from resnet_serve.formats.metadata import PRECISION_KEY, props_of


class Fp16Error(UserError, ValueError):
    """The model cannot be converted; the message says why."""


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP16 copy of an FP32 model: FP16 weights and activations, float32 I/O, metadata kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    current = props_of(model).get(PRECISION_KEY, "fp32")
    if current != "fp32":
        raise Fp16Error(f"the model's precision is {current!r}; FP16 conversion starts from an fp32 model")
    metadata = props_of(model)
    # The converter edits in place; converting a copy keeps the caller's model intact.
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    converted: onnx.ModelProto = convert_float_to_float16(copy, keep_io_types=True)
    _sort_topologically(converted.graph)
    metadata[PRECISION_KEY] = "fp16"
    del converted.metadata_props[:]
    for key, value in metadata.items():
        converted.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(converted)
    return converted


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its producers: the converter appends its input casts at the end,
    which ONNX Runtime tolerates but the ONNX checker (and stricter importers) reject."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        runnable = [n for n in pending if all(name in ready for name in n.input)]
        if not runnable:
            raise Fp16Error("the converted graph has a cycle or an input nothing produces")
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if all(n is not r for r in runnable)]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)
