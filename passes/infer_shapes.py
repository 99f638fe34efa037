"""Shape and type inference: ONNX's for standard ops, each op's shape rule for m3c ops."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from m3c.graph import Graph
from m3c.ops import shape_rules
from m3c.passmanager import Pass


class InferShapes(Pass):
    name = "infer_shapes"
    description = "infer every tensor's shape and type"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        before = _known(graph.graph)
        model = onnx.shape_inference.infer_shapes(graph.to_onnx(), data_prop=True)
        inferred = gs.import_onnx(model)
        rules = shape_rules()
        for node in inferred.nodes:
            rule = rules.get(node.op) if node.domain == "m3c" else None
            if rule is not None and _inputs_known(node):
                for tensor, (shape, dtype) in zip(node.outputs, rule(node), strict=False):
                    tensor.shape, tensor.dtype = shape, dtype
        graph.graph = inferred
        return graph, _known(inferred) != before


def _known(graph: gs.Graph) -> int:
    return sum(1 for t in graph.tensors().values() if t.shape is not None and t.dtype is not None)


def _inputs_known(node: gs.Node) -> bool:
    return all(t.shape is not None for t in node.inputs if t.name)
