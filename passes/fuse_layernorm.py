"""LayerNorm written out (ReduceMean, Sub, Pow, ReduceMean, Add ε, Sqrt, Div, Mul γ, Add β)
-> standard LayerNormalization. torch's opset-17 export already emits LayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from m3c.frontend.moe_match import find_downstream
from m3c.frontend.routing import constant_value, producer
from m3c.ir.graph import fresh_name, fresh_node_name
from m3c.ir.passmanager import RewritePass


def _const_operand(node: gs.Node | None):
    if node is None:
        return None, None
    for i, tensor in enumerate(node.inputs):
        value = constant_value(tensor)
        if value is not None:
            return value, node.inputs[1 - i]
    return None, None


class FuseLayerNorm(RewritePass):
    name = "fuse_layernorm"
    description = "decomposed layer normalisation -> LayerNormalization"

    def rewrite_once(self, graph: gs.Graph) -> bool:
        for sqrt in [n for n in graph.nodes if n.op == "Sqrt"]:
            found = _match(sqrt)
            if found is not None:
                x, epsilon, gamma, beta, output = found
                output.inputs.clear()
                constants = [gs.Constant(fresh_name(graph, f"{sqrt.name}.{name}"),
                                         np.asarray(v, np.float32))
                             for name, v in (("gamma", gamma), ("beta", beta))]
                graph.nodes.append(gs.Node(
                    "LayerNormalization", name=fresh_node_name(graph, f"{sqrt.name}/LayerNorm"),
                    attrs={"axis": -1, "epsilon": float(epsilon)},
                    inputs=[x, *constants], outputs=[output]))
                graph.cleanup()
                return True
        return False


def _match(sqrt: gs.Node):
    epsilon, variance = _const_operand(producer(sqrt.inputs[0], "Add"))
    square_mean = variance is not None and producer(variance, "ReduceMean")
    power = square_mean and producer(square_mean.inputs[0], "Pow")
    centred = power and producer(power.inputs[0], "Sub")
    mean = centred and producer(centred.inputs[1], "ReduceMean")
    if not mean or mean.inputs[0] is not centred.inputs[0]:
        return None
    divide = find_downstream(sqrt.outputs[0], "Div", limit=1)
    gamma, _ = _const_operand(divide and find_downstream(divide.outputs[0], "Mul", limit=1))
    scale = divide and find_downstream(divide.outputs[0], "Mul", limit=1)
    beta, _ = _const_operand(scale and find_downstream(scale.outputs[0], "Add", limit=1))
    if gamma is None or beta is None or divide.inputs[0] is not power.inputs[0]:
        return None
    shift = find_downstream(scale.outputs[0], "Add", limit=1)
    return mean.inputs[0], epsilon.reshape(-1)[0], gamma, beta, shift.outputs[0]
