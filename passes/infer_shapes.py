"""Shape and type inference: ONNX's for standard ops, each op's shape rule for m3c ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from m3c.ir.graph import Graph
from m3c.ir.ops import shape_rules
from m3c.ir.passmanager import Pass

# Constants larger than this are weights: inference needs their shapes, not their values
# (small ones, like Reshape targets, are kept for ONNX's data propagation).
WEIGHT_ELEMENTS = 4096
# Ops ONNX's inference does not know whose output has the shape and type of their first input.
SAME_AS_INPUT = {("com.microsoft", "MoE")}
# ONNX inference stops at ops it does not know; the shapes m3c knows for them are fed back in
# (as value_info) until nothing new is learnt.
MAX_ROUNDS = 8


class InferShapes(Pass):
    name = "infer_shapes"
    description = "infer every tensor's shape and type"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        before = _known(graph.graph)
        rules = shape_rules()
        for _ in range(MAX_ROUNDS):
            inferred = _onnx_shapes(graph)
            for name, tensor in graph.graph.tensors().items():
                if isinstance(tensor, gs.Variable) and name in inferred:
                    tensor.shape, tensor.dtype = inferred[name]
            known = _known(graph.graph)
            for node in graph.graph.nodes:
                if _inputs_known(node):
                    _apply_rule(node, rules)
            if _known(graph.graph) == known:  # m3c's rules taught ONNX nothing new
                break
        return graph, _known(graph.graph) != before


def _onnx_shapes(graph: Graph) -> dict[str, tuple[list, np.dtype]]:
    """Run ONNX shape inference on a weight-free copy of the graph."""
    light = graph.graph.copy()
    stand_ins: dict[str, gs.Variable] = {}
    for node in light.nodes:
        for i, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant) and np.prod(tensor.shape) > WEIGHT_ELEMENTS:
                if tensor.name not in stand_ins:
                    stand_ins[tensor.name] = gs.Variable(tensor.name, tensor.dtype,
                                                         list(tensor.shape))
                node.inputs[i] = stand_ins[tensor.name]
    light.inputs.extend(stand_ins.values())
    model = onnx.shape_inference.infer_shapes(Graph(light).to_onnx(), data_prop=True)
    found = {}
    for info in list(model.graph.value_info) + list(model.graph.output):
        kind = info.type.tensor_type
        if kind.elem_type and kind.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in kind.shape.dim]
            found[info.name] = (dims, onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type))
    return found


def _apply_rule(node: gs.Node, rules: dict) -> None:
    if (node.domain, node.op) in SAME_AS_INPUT:
        node.outputs[0].shape, node.outputs[0].dtype = node.inputs[0].shape, node.inputs[0].dtype
        return
    rule = rules.get(node.op) if node.domain == "m3c" else None
    if rule is not None:
        for tensor, (shape, dtype) in zip(node.outputs, rule(node), strict=False):
            tensor.shape, tensor.dtype = shape, dtype


def _known(graph: gs.Graph) -> int:
    return sum(1 for t in graph.tensors().values() if t.shape is not None and t.dtype is not None)


def _inputs_known(node: gs.Node) -> bool:
    return all(t.shape is not None for t in node.inputs if t.name)
