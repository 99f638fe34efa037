"""timm-style multi-head attention between the qkv and proj Linears -> m3c.Attention.

What torch exports for: qkv.reshape(B,N,3,h,hd).permute(2,0,3,1,4) -> q,k,v;
softmax(q @ kᵀ · scale) @ v -> transpose(1,2).reshape(B,N,D). The Linears stay m3c.Dense.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from m3c.moe_match import find_downstream, find_upstream, nodes_between
from m3c.passmanager import RewritePass
from m3c.routing import constant_value


def _head_split(node: gs.Node) -> bool:
    if node.op != "Reshape":
        return False
    shape = constant_value(node.inputs[1])
    return shape is not None and shape.size == 5 and int(shape[2]) == 3


class FuseAttention(RewritePass):
    name = "fuse_attention"
    description = "reshape/transpose/matmul/softmax attention core -> m3c.Attention"

    def rewrite_once(self, graph: gs.Graph) -> bool:
        for softmax in [n for n in graph.nodes if n.op == "Softmax"]:
            split = find_upstream(softmax.inputs[0], _head_split, limit=16)
            merge = find_downstream(softmax.outputs[0], "Reshape", limit=3)
            if split is None or merge is None:
                continue
            qkv = split.inputs[0]
            scale = _scale(nodes_between(qkv, softmax.inputs[0]))
            if scale is None:
                continue
            num_heads = int(constant_value(split.inputs[1])[3])
            output = merge.outputs[0]
            output.inputs.clear()
            graph.nodes.append(gs.Node(
                "Attention", name=f"{softmax.name.rsplit('/', 1)[0]}/Attention", domain="m3c",
                attrs={"num_heads": num_heads, "scale": scale}, inputs=[qkv], outputs=[output]))
            graph.cleanup()
            return True
        return False


def _scale(nodes: list[gs.Node]) -> float | None:
    """The product of the constant factors applied to the scores (1.0 when none)."""
    scale = 1.0
    for node in nodes:
        if node.op not in ("Mul", "Div"):
            continue
        values = [constant_value(t) for t in node.inputs]
        factor = next((v for v in values if v is not None and v.size == 1), None)
        if factor is None:
            return None
        value = float(np.asarray(factor).reshape(-1)[0])
        scale *= value if node.op == "Mul" else 1.0 / value
    return scale
