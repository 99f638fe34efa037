"""GELU written out with Erf (0.5·x·(1 + erf(x/√2)), in the orders exporters emit) -> m3c.Gelu."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from m3c.frontend.moe_match import find_downstream
from m3c.frontend.routing import constant_value, producer
from m3c.ir.graph import fresh_node_name
from m3c.ir.passmanager import RewritePass


def _scalar(tensor: gs.Tensor) -> float | None:
    value = constant_value(tensor)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _scaled_input(node: gs.Node) -> gs.Tensor | None:
    """x for Div(x, √2) or Mul(x, 1/√2)."""
    if node is None or len(node.inputs) != 2:
        return None
    x, c = node.inputs
    if node.op == "Mul" and _scalar(x) is not None:
        x, c = c, x
    factor = _scalar(c)
    if factor is None:
        return None
    target = math.sqrt(2.0) if node.op == "Div" else 1.0 / math.sqrt(2.0)
    return x if node.op in ("Div", "Mul") and abs(factor - target) < 1e-4 else None


class FuseGelu(RewritePass):
    name = "fuse_gelu"
    description = "erf-form GELU subgraphs -> m3c.Gelu"

    def rewrite_once(self, graph: gs.Graph) -> bool:
        for erf in [n for n in graph.nodes if n.op == "Erf"]:
            x = _scaled_input(producer(erf.inputs[0]))
            plus_one = find_downstream(erf.outputs[0], "Add", limit=1)
            if x is None or plus_one is None:
                continue
            output = _gelu_output(x, plus_one)
            if output is None:
                continue
            output.inputs.clear()
            graph.nodes.append(gs.Node("Gelu", name=fresh_node_name(graph, f"{erf.name}/Gelu"),
                                       domain="m3c",
                                       inputs=[x], outputs=[output]))
            graph.cleanup()
            return True
        return False


def _gelu_output(x: gs.Tensor, plus_one: gs.Node) -> gs.Tensor | None:
    """The tensor holding 0.5·x·(1+erf) after the two Muls, in either order."""
    first = find_downstream(plus_one.outputs[0], "Mul", limit=1)
    second = first and find_downstream(first.outputs[0], "Mul", limit=1)
    if second is None:
        return None
    operands = [t for n in (first, second) for t in n.inputs]
    halves = [t for t in operands if _scalar(t) is not None and np.isclose(_scalar(t), 0.5)]
    return second.outputs[0] if halves and any(t is x for t in operands) else None
