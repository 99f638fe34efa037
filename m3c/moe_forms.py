"""Finding MoE layers in the three forms m3c reads; each finder returns `MoEMatch`es.

- dense (m3c's own export): Softmax -> TopK -> ScatterElements builds a [N, E] combine matrix;
  every expert runs on every token as one batched MatMul over [E, ...] weights; the weighted
  results are summed over experts (Mul + ReduceSum).
- contrib: onnxruntime's `com.microsoft::MoE` node (router logits in, weights [E, out, in]).
- sparse: what tracing a token-loop MoE gives: per expert Equal(top-k index, e) -> NonZero ->
  Gather its tokens -> Linear, act, Linear -> scale -> ScatterND(add) into the output.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from m3c.errors import LoweringError
from m3c.moe_match import (
    MoEMatch,
    activation_between,
    find_downstream,
    find_upstream,
    linear_with_constants,
    num_tasks,
    task_tensor,
)
from m3c.routing import analyse_router, constant_value, producer


def _where(node: gs.Node, graph: gs.Graph) -> str:
    return f"node {node.name!r} ({node.op}, position {graph.nodes.index(node)})"


def _router_for(topk: gs.Node, graph: gs.Graph):
    softmax = producer(topk.inputs[0], "Softmax")
    if softmax is None:
        return None, None
    _, task_name = task_tensor(graph)
    k = constant_value(topk.inputs[1])
    where = _where(topk, graph)
    router = analyse_router(softmax.inputs[0], graph, task_name, num_tasks(graph), where)
    return router, int(np.asarray(k).reshape(-1)[0])


def find_dense_moes(graph: gs.Graph) -> list[MoEMatch]:
    matches = []
    for topk in [n for n in graph.nodes if n.op == "TopK"]:
        scatter = find_downstream(topk.outputs[1], "ScatterElements", limit=2)
        if scatter is None or producer(topk.inputs[0], "Softmax") is None:
            continue
        router, k = _router_for(topk, graph)
        matches.append(_dense_experts(scatter, router, k, _where(topk, graph)))
    return matches


def _dense_experts(scatter: gs.Node, router, k: int, where: str) -> MoEMatch:
    mul = find_downstream(scatter.outputs[0], "Mul", limit=4)
    reduce = mul and find_downstream(mul.outputs[0], "ReduceSum", limit=1)
    if reduce is None:
        raise LoweringError(f"{where}: combine weights are not applied with Mul + ReduceSum",
                            remedy="export the MoE with m3c.export")
    second = next((found for t in mul.inputs
                   if (found := linear_with_constants(producer(t))) and found[1].ndim == 3), None)
    pre = find_upstream(second[0], lambda n: _is_stacked_linear(n)) if second else None
    first = linear_with_constants(pre)
    if second is None or first is None:
        raise LoweringError(f"{where}: expert MLP is not Linear -> activation -> Linear over "
                            "stacked [E, ...] weights", remedy="export the MoE with m3c.export")
    hidden_in, w2, b2 = second
    tokens, w1, b1 = first
    return MoEMatch(
        router=router, output=reduce.outputs[0], w1=w1, b1=_squeeze_bias(b1), w2=w2,
        b2=_squeeze_bias(b2), top_k=k,
        activation=activation_between(pre.outputs[0], hidden_in, where),
    )


def _is_stacked_linear(node: gs.Node) -> bool:
    found = linear_with_constants(node)
    return found is not None and found[1].ndim == 3


def _squeeze_bias(bias: np.ndarray) -> np.ndarray:
    return bias.reshape(bias.shape[0], bias.shape[-1])


def find_contrib_moes(graph: gs.Graph) -> list[MoEMatch]:
    matches = []
    for node in [n for n in graph.nodes if n.op == "MoE" and n.domain == "com.microsoft"]:
        where = _where(node, graph)
        if node.attrs.get("normalize_routing_weights", 0) or node.attrs.get("use_sparse_mixer", 0):
            raise LoweringError(f"{where}: renormalised or sparse-mixer routing is not M3ViT "
                                "routing", remedy="set normalize_routing_weights=0")
        weights = [constant_value(t) for t in node.inputs[2:6]]
        if len(node.inputs) > 6 or any(w is None for w in weights):
            raise LoweringError(f"{where}: expected constant fc1/fc2 weights and biases only",
                                remedy="gated (fc3) experts are not supported")
        _, task_name = task_tensor(graph)
        router = analyse_router(node.inputs[1], graph, task_name, num_tasks(graph), where)
        w1, b1, w2, b2 = weights
        activation = {"gelu": "gelu_tanh", "relu": "relu"}.get(
            node.attrs.get("activation_type", "relu"))
        if activation is None:
            raise LoweringError(f"{where}: activation {node.attrs['activation_type']!r} "
                                "is not supported", remedy="use gelu or relu experts")
        matches.append(MoEMatch(
            router=router, output=node.outputs[0], w1=w1.transpose(0, 2, 1), b1=b1,
            w2=w2.transpose(0, 2, 1), b2=b2, top_k=int(node.attrs.get("k", 1)),
            activation=activation,
        ))
    return matches


def find_sparse_moes(graph: gs.Graph) -> list[MoEMatch]:
    matches = []
    for topk in [n for n in graph.nodes if n.op == "TopK"]:
        experts = _sparse_expert_branches(topk)
        if not experts or producer(topk.inputs[0], "Softmax") is None:
            continue
        where = _where(topk, graph)
        router, k = _router_for(topk, graph)
        matches.append(_stack_sparse_experts(experts, router, k, graph, where))
    return matches


def _sparse_expert_branches(topk: gs.Node) -> dict[int, gs.Node]:
    """Expert id -> its Equal(top-k index, id) node."""
    branches = {}
    for node in topk.outputs[1].outputs:
        if node.op == "Equal":
            value = constant_value(node.inputs[1])
            if value is not None and find_downstream(node.outputs[0], "NonZero", limit=1):
                branches[int(np.asarray(value).reshape(-1)[0])] = node
    return branches


def _stack_sparse_experts(branches, router, k, graph, where) -> MoEMatch:
    if sorted(branches) != list(range(len(branches))):
        raise LoweringError(f"{where}: experts {sorted(branches)} are not numbered 0..E-1")
    order = {id(node): i for i, node in enumerate(graph.nodes)}
    layers, activation, last_scatter = [], None, None
    for e in range(len(branches)):
        linears = _branch_linears(branches[e], order)
        if len(linears) != 2:
            raise LoweringError(f"{where}: expert {e} has {len(linears)} linear layers, not 2")
        layers.append([linear_with_constants(node) for node in linears])
        activation = activation_between(linears[0].outputs[0], layers[-1][1][0], where)
        accumulate = _accumulating_node(linears[1], where, e)
        if last_scatter is None or order[id(accumulate)] > order[id(last_scatter)]:
            last_scatter = accumulate
    return MoEMatch(
        router=router, output=last_scatter.outputs[0],
        w1=np.stack([fc1[1] for fc1, _ in layers]), b1=np.stack([fc1[2] for fc1, _ in layers]),
        w2=np.stack([fc2[1] for _, fc2 in layers]), b2=np.stack([fc2[2] for _, fc2 in layers]),
        top_k=k, activation=activation,
    )


def _accumulating_node(second_linear: gs.Node, where: str, expert: int) -> gs.Node:
    """The node adding one expert's scattered output into the layer output.

    ScatterND(out, idx, y, reduction="add") does it in one step; torch's index_put with
    accumulate=True exports as ScatterND(zeros, idx, y) followed by Add(out, scattered).
    """
    scatter = find_downstream(second_linear.outputs[0], "ScatterND", limit=6)
    if scatter is not None and scatter.attrs.get("reduction") == "add":
        return scatter
    add = find_downstream(scatter.outputs[0], "Add", limit=1) if scatter is not None else None
    if add is None or not _is_zeros(scatter.inputs[0]):
        raise LoweringError(f"{where}: expert {expert} output is not scatter-added",
                            remedy="accumulate expert outputs with index_put(accumulate=True)")
    return add


def _is_zeros(tensor: gs.Tensor) -> bool:
    value = constant_value(tensor)
    if value is not None:
        return not np.any(value)
    fill = producer(tensor, "ConstantOfShape")
    if fill is None:
        return False
    value = fill.attrs.get("value")
    return value is None or not np.any(value.values)


def _branch_linears(equal: gs.Node, order: dict[int, int]) -> list[gs.Node]:
    """The constant-weight linear layers downstream of one expert's selection, in order."""
    found, queue, seen = [], [equal.outputs[0]], set()
    while queue:
        for node in queue.pop(0).outputs:
            if id(node) in seen or node.op == "ScatterND":
                continue
            seen.add(id(node))
            if linear_with_constants(node) is not None:
                found.append(node)
            queue.extend(node.outputs)
    return sorted(found, key=lambda node: order[id(node)])
