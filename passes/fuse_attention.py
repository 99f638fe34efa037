"""timm-style multi-head attention between the qkv and proj Linears -> m3c.Attention.

What torch exports for: qkv.reshape(B,N,3,h,hd).permute(2,0,3,1,4) -> q,k,v (unbind: Split +
Squeeze, or Gather); softmax(q @ kᵀ · scale) @ v -> transpose(1,2).reshape(B,N,D). The Linears
stay m3c.Dense. Every step is checked (permutations, which slice is q, k and v, softmax axis),
because a near miss fused anyway would silently compute something else.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from m3c.graph import fresh_node_name
from m3c.passmanager import RewritePass
from m3c.routing import constant_value, producer

HEAD_SPLIT_PERM = [2, 0, 3, 1, 4]  # [B,N,3,h,hd] -> [3,B,h,N,hd]
KEY_PERM = [0, 1, 3, 2]
MERGE_PERM = [0, 2, 1, 3]


class FuseAttention(RewritePass):
    name = "fuse_attention"
    description = "reshape/transpose/matmul/softmax attention core -> m3c.Attention"

    def rewrite_once(self, graph: gs.Graph) -> bool:
        for softmax in [n for n in graph.nodes if n.op == "Softmax"]:
            found = _match(softmax)
            if found is None:
                continue
            qkv, num_heads, scale, output = found
            output.inputs.clear()
            name = fresh_node_name(graph, f"{softmax.name.rsplit('/', 1)[0]}/Attention")
            graph.nodes.append(gs.Node(
                "Attention", name=name, domain="m3c",
                attrs={"num_heads": num_heads, "scale": scale}, inputs=[qkv], outputs=[output]))
            graph.cleanup()
            return True
        return False


def _match(softmax: gs.Node) -> tuple[gs.Tensor, int, float, gs.Tensor] | None:
    if softmax.attrs.get("axis", -1) not in (-1, 3):
        return None
    scores, score_scale = _unscaled(softmax.inputs[0])
    qk = producer(scores, "MatMul")
    key_t = qk and producer(qk.inputs[1], "Transpose")
    if key_t is None or list(key_t.attrs.get("perm", [])) != KEY_PERM:
        return None
    (q, q_scale), (k, k_scale) = _unscaled(qk.inputs[0]), _unscaled(key_t.inputs[0])
    pv = _sole_consumer(softmax.outputs[0], "MatMul")
    if pv is None or pv.inputs[0] is not softmax.outputs[0]:
        return None
    sources = [_head_slice(t) for t in (q, k, pv.inputs[1])]
    if any(s is None for s in sources) or [s[1] for s in sources] != [0, 1, 2]:
        return None
    heads = sources[0][0]
    if any(s[0] is not heads for s in sources):
        return None
    split = _head_split(heads)
    output = _merged_output(pv)
    if split is None or output is None:
        return None
    qkv, num_heads = split
    return qkv, num_heads, score_scale * q_scale * k_scale, output


def _unscaled(tensor: gs.Tensor) -> tuple[gs.Tensor, float]:
    """Walk back through Mul/Div by scalar constants: (the unscaled tensor, the factor)."""
    scale = 1.0
    while (node := producer(tensor, "Mul", "Div")) is not None:
        values = [constant_value(t) for t in node.inputs]
        if node.op == "Mul" and values[0] is not None and values[0].size == 1:
            scale, tensor = scale * float(values[0].reshape(-1)[0]), node.inputs[1]
        elif values[1] is not None and values[1].size == 1:
            factor = float(values[1].reshape(-1)[0])
            scale *= factor if node.op == "Mul" else 1.0 / factor
            tensor = node.inputs[0]
        else:
            break
    return tensor, scale


def _sole_consumer(tensor: gs.Tensor, op: str) -> gs.Node | None:
    return tensor.outputs[0] if len(tensor.outputs) == 1 and tensor.outputs[0].op == op else None


def _head_slice(tensor: gs.Tensor) -> tuple[gs.Tensor, int] | None:
    """(T, i) when tensor = T[i] along axis 0: Squeeze(Split(T)[i]) or Gather(T, i)."""
    node = producer(tensor, "Squeeze", "Gather")
    if node is None:
        return None
    if node.op == "Gather":
        index = constant_value(node.inputs[1])
        if node.attrs.get("axis", 0) != 0 or index is None or index.size != 1 or index.ndim:
            return None
        return node.inputs[0], int(index)
    axes = constant_value(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("axes")
    if axes is None or list(np.asarray(axes).reshape(-1)) != [0]:
        return None
    sliced = _unit_slice(node.inputs[0])
    if sliced is not None:  # the dynamo exporter's unbind: Squeeze(Slice(T, i, i+1, axis 0))
        return sliced
    split = producer(node.inputs[0], "Split")
    if split is None:
        return None
    if split.attrs.get("axis", 0) != 0 or len(split.outputs) != 3:
        return None
    return split.inputs[0], split.outputs.index(node.inputs[0])


def _unit_slice(tensor: gs.Tensor) -> tuple[gs.Tensor, int] | None:
    """(T, i) for Slice(T, starts=[i], ends=[i+1], axes=[0], steps=[1])."""
    node = producer(tensor, "Slice")
    if node is None or len(node.inputs) < 4:
        return None
    values = [constant_value(t) for t in node.inputs[1:]]
    if any(v is None or v.size != 1 for v in values):
        return None
    start, end, axis, *step = (int(v.reshape(-1)[0]) for v in values)
    if axis != 0 or end != start + 1 or start < 0 or step not in ([], [1]):
        return None
    return node.inputs[0], start


def _head_split(heads: gs.Tensor) -> tuple[gs.Tensor, int] | None:
    """(qkv, num_heads) for heads = Reshape(qkv, [B,N,3,h,hd]).permute(2,0,3,1,4)."""
    permute = producer(heads, "Transpose")
    if permute is None or list(permute.attrs.get("perm", [])) != HEAD_SPLIT_PERM:
        return None
    reshape = producer(permute.inputs[0], "Reshape")
    shape = reshape and constant_value(reshape.inputs[1])
    if shape is None or shape.size != 5 or int(shape[2]) != 3 or min(shape[3:]) <= 0:
        return None
    qkv = reshape.inputs[0]
    if qkv.shape is None or qkv.shape[-1] != 3 * int(shape[3]) * int(shape[4]):
        return None  # the reshape must split the channels only, not mix in tokens
    return qkv, int(shape[3])


def _merged_output(pv: gs.Node) -> gs.Tensor | None:
    """The [B,N,D] tensor after transpose(1,2).reshape, or None."""
    merge_t = _sole_consumer(pv.outputs[0], "Transpose")
    if merge_t is None or list(merge_t.attrs.get("perm", [])) != MERGE_PERM:
        return None
    merge = _sole_consumer(merge_t.outputs[0], "Reshape")
    if merge is None or merge.inputs[0] is not merge_t.outputs[0]:
        return None
    shape = constant_value(merge.inputs[1])
    heads = merge_t.outputs[0].shape
    if shape is None or heads is None or len(shape) < 1:
        return None
    if int(shape[-1]) != heads[-1] * heads[-2] or len(shape) != len(heads) - 1:
        return None
    return merge.outputs[0]
