"""MatMul by a constant weight (+ constant bias), or Gemm -> m3c.Dense; Dense -> Gelu fused."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from m3c.frontend.moe_match import linear_with_constants
from m3c.frontend.routing import constant_value, producer
from m3c.ir.graph import fresh_name, fresh_node_name
from m3c.ir.passmanager import RewritePass


class FuseDense(RewritePass):
    name = "fuse_dense"
    description = "MatMul + Add of constants, Gemm -> m3c.Dense (with GELU folded in)"

    def rewrite_once(self, graph: gs.Graph) -> bool:
        # Biased linears first, so a MatMul is not fused before its bias Add is seen.
        for matcher in (_biased_linear, _bare_matmul):
            for node in graph.nodes:
                found = matcher(node)
                if found is not None:
                    _replace(graph, node, *found)
                    return True
        for node in graph.nodes:
            if node.domain == "m3c" and node.op == "Gelu" and _fold_gelu(node):
                graph.cleanup()
                return True
        return False


def _biased_linear(node: gs.Node):
    found = linear_with_constants(node)
    if found is not None and found[1].ndim == 2 and found[2].size == found[1].shape[1]:
        return found
    return None


def _bare_matmul(node: gs.Node):
    if node.op != "MatMul" or constant_value(node.inputs[0]) is not None:
        return None
    weight = constant_value(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    return node.inputs[0], weight, np.zeros(weight.shape[1], np.float32)


def _replace(graph: gs.Graph, node: gs.Node, x, weight, bias) -> None:
    output = node.outputs[0]
    output.inputs.clear()
    base = node.name.rsplit("/", 1)[0] if "/" in node.name else node.name
    constants = [
        gs.Constant(fresh_name(graph, f"{base}.weight"), np.ascontiguousarray(weight, np.float32)),
        gs.Constant(fresh_name(graph, f"{base}.bias"),
                    np.ascontiguousarray(bias.reshape(-1), np.float32)),
    ]
    graph.nodes.append(gs.Node("Dense", name=fresh_node_name(graph, f"{base}/Dense"), domain="m3c",
                               attrs={"activation": "none"}, inputs=[x, *constants],
                               outputs=[output]))
    graph.cleanup()


def _fold_gelu(gelu: gs.Node) -> bool:
    dense = producer(gelu.inputs[0])
    if dense is None or dense.op != "Dense" or dense.attrs.get("activation") != "none":
        return False
    if len(dense.outputs[0].outputs) != 1:
        return False
    dense.attrs["activation"] = "gelu"
    output = gelu.outputs[0]
    output.inputs.clear()
    dense.outputs = [output]
    return True
