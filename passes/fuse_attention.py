"""Multi-head attention between the qkv and proj Linears -> m3c.Attention.

timm-style attention is matched step by step, as torch exports it: qkv.reshape(B,N,3,h,hd)
.permute(2,0,3,1,4) -> q,k,v (unbind: Split + Squeeze, Slice + Squeeze or Gather);
softmax(q @ kᵀ · scale) @ v -> transpose(1,2).reshape(B,N,D). Every step is checked
(permutations, which slice is q, k and v, softmax axis), because a near miss fused anyway would
silently compute something else.

Other spellings (`nn.MultiheadAttention`, `F.scaled_dot_product_attention`, either exporter)
are recognised by what they compute: q, k and v must all be views of one [.., N, 3D] tensor,
the result a view of softmax(q kᵀ) v; the head count and scale are read off the graph, and the
subgraph between the two is run in onnxruntime against m3c.Attention before it is replaced.
The Linears stay m3c.Dense.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from m3c.frontend.routing import constant_value, producer
from m3c.ir.graph import fresh_name, fresh_node_name
from m3c.ir.passmanager import RewritePass
from m3c.ir.views import simplify_unit_transpose

HEAD_SPLIT_PERM = [2, 0, 3, 1, 4]  # [B,N,3,h,hd] -> [3,B,h,N,hd]
KEY_PERM = [0, 1, 3, 2]
MERGE_PERM = [0, 2, 1, 3]


class FuseAttention(RewritePass):
    name = "fuse_attention"
    description = ("reshape/transpose/matmul/softmax attention core -> m3c.Attention; "
                   "transposes of size-1 axes -> Reshape")

    def __init__(self) -> None:
        self.rejected: set[int] = set()  # softmaxes checked numerically and not attention

    def rewrite_once(self, graph: gs.Graph) -> bool:
        for softmax in [n for n in graph.nodes if n.op == "Softmax"]:
            found = _match(softmax)
            if found is None and id(softmax) not in self.rejected:
                found = _match_by_computation(graph, softmax)
                if found is None:
                    self.rejected.add(id(softmax))
            if found is None:
                continue
            qkv, num_heads, scale, output = found
            output.inputs.clear()
            name = fresh_node_name(graph, f"{softmax.name.rsplit('/', 1)[0]}/Attention")
            tokens, width = _tokens_and_width(qkv)
            qkv_in = _reshaped(graph, qkv, [1, tokens, width], name)
            result = output if output.shape is None or \
                list(output.shape) == [1, tokens, width // 3] else \
                gs.Variable(fresh_name(graph, f"{name}:0"), np.float32, [1, tokens, width // 3])
            graph.nodes.append(gs.Node(
                "Attention", name=name, domain="m3c",
                attrs={"num_heads": num_heads, "scale": scale}, inputs=[qkv_in],
                outputs=[result]))
            if result is not output:  # a view back to the layout the graph continues in
                shape = gs.Constant(fresh_name(graph, f"{name}.out_shape"),
                                    np.array(output.shape, np.int64))
                graph.nodes.append(gs.Node("Reshape", name=fresh_node_name(graph, name + "/out"),
                                           inputs=[result, shape], outputs=[output]))
            graph.cleanup()
            return True
        return simplify_unit_transpose(graph)


def _match(softmax: gs.Node) -> tuple[gs.Tensor, int, float, gs.Tensor] | None:
    if softmax.attrs.get("axis", -1) not in (-1, 3):
        return None
    scores, score_scale = _unscaled(softmax.inputs[0])
    qk = producer(scores, "MatMul")
    if qk is None:
        return None
    # scaled_dot_product_attention's export scales kᵀ (after the transpose) by √scale
    key_scaled, key_t_scale = _unscaled(qk.inputs[1])
    key_t = producer(key_scaled, "Transpose")
    if key_t is None or list(key_t.attrs.get("perm", [])) != KEY_PERM:
        return None
    (q, q_scale), (k, k_scale) = _unscaled(qk.inputs[0]), _unscaled(key_t.inputs[0])
    k_scale *= key_t_scale
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


# Ops that only re-view their (first) input: what lies between q, k, v and the qkv Linear.
VIEW_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Split", "Slice",
            "Gather", "Flatten"}
TOLERANCE = 1e-4


def _view_source(tensor: gs.Tensor) -> tuple[gs.Tensor, float]:
    """Walk back through views and scalings by constants: (the source, the total factor)."""
    scale = 1.0
    while True:
        tensor, factor = _unscaled(tensor)
        scale *= factor
        node = producer(tensor, *VIEW_OPS)
        if node is None:
            return tensor, scale
        tensor = node.inputs[0]


def _view_end(tensor: gs.Tensor) -> gs.Tensor:
    """Follow a chain of views (each the tensor's only consumer) down to its last result."""
    while len(tensor.outputs) == 1 and tensor.outputs[0].op in VIEW_OPS - {"Split"} \
            and tensor.outputs[0].inputs[0] is tensor:
        tensor = tensor.outputs[0].outputs[0]
    return tensor


def _tokens_and_width(qkv: gs.Tensor) -> tuple[int, int]:
    width = int(qkv.shape[-1])
    return int(np.prod(qkv.shape)) // width, width


def _reshaped(graph: gs.Graph, tensor: gs.Tensor, shape: list[int], name: str) -> gs.Tensor:
    if list(tensor.shape) == shape:
        return tensor
    result = gs.Variable(fresh_name(graph, f"{name}/qkv:0"), np.float32, shape)
    constant = gs.Constant(fresh_name(graph, f"{name}.qkv_shape"), np.array(shape, np.int64))
    graph.nodes.append(gs.Node("Reshape", name=fresh_node_name(graph, name + "/qkv"),
                               inputs=[tensor, constant], outputs=[result]))
    return result


def _match_by_computation(graph: gs.Graph, softmax: gs.Node
                          ) -> tuple[gs.Tensor, int, float, gs.Tensor] | None:
    """Attention in any spelling, checked numerically; batch 1 (as m3c compiles)."""
    if softmax.attrs.get("axis", -1) not in (-1, len(softmax.inputs[0].shape or []) - 1):
        return None
    scores, score_scale = _unscaled(softmax.inputs[0])
    qk = producer(scores, "MatMul")
    pv = _sole_consumer(softmax.outputs[0], "MatMul")
    if qk is None or pv is None or pv.inputs[0] is not softmax.outputs[0]:
        return None
    (q, q_scale), (k, k_scale), (v, _) = (_view_source(t) for t in (*qk.inputs, pv.inputs[1]))
    if not (q is k is v) or q.shape is None or scores.shape is None:
        return None
    qkv, tokens = q, scores.shape[-1]
    if not all(isinstance(d, int) for d in [*qkv.shape, *scores.shape]) or qkv.shape[-1] % 3:
        return None
    dim = qkv.shape[-1] // 3
    heads = int(np.prod(scores.shape)) // (tokens * tokens)
    output = _view_end(pv.outputs[0])
    if _tokens_and_width(qkv)[0] != tokens or heads < 1 or dim % heads or output.shape is None \
            or int(np.prod(output.shape)) != tokens * dim:
        return None
    scale = score_scale * q_scale * k_scale
    if _difference(graph, qkv, output, heads, scale) > TOLERANCE:
        return None
    return qkv, heads, scale, output


def _difference(graph: gs.Graph, qkv: gs.Tensor, output: gs.Tensor, heads: int,
                scale: float) -> float:
    """How far the subgraph qkv -> output is from m3c.Attention, on random inputs."""
    from m3c.ir.graph import Graph
    from m3c.ir.ops.attention import attention
    from m3c.ir.sessions import ort_session

    sub = graph.copy()
    tensors = sub.tensors()
    source = tensors[qkv.name]
    source.inputs.clear()
    sub.inputs, sub.outputs = [source], [tensors[output.name]]
    sub.cleanup()
    if any(isinstance(t, gs.Variable) and t.name and not t.inputs and t is not source
           for node in sub.nodes for t in node.inputs):
        return np.inf  # it reads something besides qkv
    tokens, width = _tokens_and_width(qkv)
    value = np.random.default_rng(0).standard_normal(qkv.shape).astype(np.float32)
    got = ort_session(Graph(sub).to_onnx()).run(None, {source.name: value})[0]
    want = attention(value.reshape(1, tokens, width), heads, scale)
    return float(np.abs(got.reshape(want.shape) - want).max()) / max(1.0, float(np.abs(want).max()))
