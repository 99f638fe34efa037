"""Patch embedding Conv + flatten + class token + position embedding -> one m3c.Embed."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from m3c.frontend.moe_match import find_downstream
from m3c.frontend.routing import constant_value
from m3c.ir.graph import Graph, fresh_name, fresh_node_name
from m3c.ir.passmanager import Pass


def _patch_conv(graph: gs.Graph) -> gs.Node | None:
    for node in graph.nodes:
        if node.op != "Conv" or node.inputs[0] not in graph.inputs:
            continue
        kernel, strides = node.attrs.get("kernel_shape"), node.attrs.get("strides")
        if kernel == strides and not any(node.attrs.get("pads", [0])):
            return node
    return None


def fuse_embed(graph: gs.Graph) -> bool:
    """Replace the ViT stem; return whether it was found."""
    conv = _patch_conv(graph)
    concat = conv and find_downstream(conv.outputs[0], "Concat", limit=3)
    add = concat and find_downstream(concat.outputs[0], "Add", limit=1)
    if add is None or len(conv.inputs) != 3:
        return False
    cls = next((constant_value(t) for t in concat.inputs if constant_value(t) is not None), None)
    pos = next((constant_value(t) for t in add.inputs if constant_value(t) is not None), None)
    weight, bias = constant_value(conv.inputs[1]), constant_value(conv.inputs[2])
    if any(value is None for value in (cls, pos, weight, bias)):
        return False
    dim = weight.shape[0]
    constants = {
        "weight": weight.reshape(dim, -1).T, "bias": bias,
        "cls": cls.reshape(-1, dim)[0], "pos": pos.reshape(-1, dim),
    }
    inputs = [conv.inputs[0]] + [gs.Constant(fresh_name(graph, f"embed.{name}"),
                                             np.ascontiguousarray(v, np.float32))
                                 for name, v in constants.items()]
    output = add.outputs[0]
    add.outputs.clear()
    patch = int(conv.attrs["strides"][0])
    graph.nodes.append(gs.Node("Embed", name=fresh_node_name(graph, "embed/Embed"), domain="m3c",
                               inputs=inputs, outputs=[output], attrs={"patch_size": patch}))
    graph.cleanup().toposort()
    return True


class FuseEmbed(Pass):
    name = "fuse_embed"
    description = "patch-embedding Conv, class token and position embedding -> m3c.Embed"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        return graph, fuse_embed(graph.graph)
