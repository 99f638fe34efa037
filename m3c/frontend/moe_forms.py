"""Finding MoE layers in the three forms m3c reads; each finder returns `MoEMatch`es.

- dense (m3c's own export): Softmax -> TopK -> ScatterElements builds a [N, E] combine matrix;
  every expert runs on every token as one batched MatMul over [E, ...] weights; the weighted
  results are summed over experts (Mul + ReduceSum).
- contrib: onnxruntime's `com.microsoft::MoE` node (router logits in, weights [E, out, in]).
- sparse: what tracing a token-loop MoE gives: per expert Equal(top-k index, e) -> NonZero ->
  Gather its tokens -> Linear, act, Linear -> scale -> ScatterND or ScatterElements (torch's
  index_put and index_add) adding into the output.
- any other spelling of a MoE (one-hot combine matrices, einsums, either exporter's
  decompositions, a dense loop over a ModuleList of experts, a gate weighing every expert by
  its full softmax: k = E): recognised by what it computes. The layer is the subgraph from
  the router's tokens to the first token-shaped tensor that gathers everything the routing
  feeds; its two stacked [E, ...] weights, or its E Linear pairs (and biases) are read off,
  and among the layouts they could have, the one that reproduces the subgraph in onnxruntime
  is taken.
Every form's top-k may be renormalised (Mixtral, DeepSeek, normalize_routing_weights=1); where
the graph hints at it (a softmax or sum over the top-k values) both gate forms are tried.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from m3c.errors import LoweringError
from m3c.frontend.moe_match import (
    ACTIVATIONS,
    MATCH_TOLERANCE,
    MoEMatch,
    activation_between,
    find_downstream,
    find_upstream,
    linear_with_constants,
    match_error,
    num_tasks,
    task_tensor,
)
from m3c.frontend.routing import Router, analyse_router, constant_value, producer, skip_shape_ops
from m3c.ir.graph import fresh_name, fresh_node_name


def _where(node: gs.Node, graph: gs.Graph) -> str:
    return f"node {node.name!r} ({node.op}, position {graph.nodes.index(node)})"


@dataclass
class Routing:
    """A routing decision: where it starts (the TopK, or the Softmax of a gate that weighs
    every expert), the router behind it, k, and the gate forms to try, likeliest first
    (False: the top-k probabilities as they are; True: renormalised to sum to one)."""

    start: gs.Node
    router: Router
    top_k: int
    renormalisations: tuple[bool, ...]


def topk_routing(topk: gs.Node, graph: gs.Graph) -> Routing | None:
    """The routing of a TopK over the router's softmax (M3ViT; renormalised after it:
    DeepSeek, Mixtral) or over its logits (then a softmax over the top-k logits, which is the
    renormalised form); None for a TopK over anything else."""
    k = int(np.asarray(constant_value(topk.inputs[1])).reshape(-1)[0])
    softmax = producer(topk.inputs[0], "Softmax")
    try:
        router = _router(softmax.inputs[0] if softmax else topk.inputs[0], graph,
                         _where(topk, graph))
    except LoweringError:
        if softmax is not None:
            raise  # a softmax-then-top-k is routing: say why its router is not read
        return None
    if softmax is None:
        return Routing(topk, router, k, (True, False))
    renormalised = any(find_downstream(topk.outputs[0], op, limit=4)
                       for op in ("ReduceSum", "Softmax"))
    return Routing(topk, router, k, (True, False) if renormalised else (False,))


def _softmax_routing(softmax: gs.Node, graph: gs.Graph) -> Routing | None:
    """A gate weighing every expert by its softmax probability (a dense MoE without top-k:
    top-k with k = E), or None when the softmax is not over router logits (attention)."""
    if any(node.op == "TopK" for node in softmax.outputs[0].outputs):
        return None
    try:
        router = _router(softmax.inputs[0], graph, _where(softmax, graph))
    except LoweringError:
        return None
    return Routing(softmax, router, router.weights.shape[-1], (False,))


def _router(logits: gs.Tensor, graph: gs.Graph, where: str) -> Router:
    _, task_name = task_tensor(graph)
    return analyse_router(logits, graph, task_name, num_tasks(graph), where)


def _fitting(graph: gs.Graph, match: MoEMatch, renormalisations: tuple[bool, ...],
             where: str) -> MoEMatch:
    """`match` with the first gate form that reproduces the subgraph (the first form when
    none does: RecognizeMoE's check then refuses it, naming the difference)."""
    if len(renormalisations) > 1:
        for renormalise in renormalisations:
            match.renormalise = renormalise
            if match_error(graph, match, where)[0] <= MATCH_TOLERANCE:
                return match
    match.renormalise = renormalisations[0]
    return match


def find_dense_moes(graph: gs.Graph) -> list[MoEMatch]:
    matches = []
    for topk in [n for n in graph.nodes if n.op == "TopK"]:
        scatter = find_downstream(topk.outputs[1], "ScatterElements", limit=2)
        routing = topk_routing(topk, graph) if scatter is not None else None
        if routing is None:
            continue
        where = _where(topk, graph)
        match = _dense_experts(scatter, routing.router, routing.top_k, where)
        if match is not None:  # other spellings are left to find_computed_moes
            matches.append(_fitting(graph, match, routing.renormalisations, where))
    return matches


def _dense_experts(scatter: gs.Node, router, k: int, where: str) -> MoEMatch | None:
    mul = find_downstream(scatter.outputs[0], "Mul", limit=4)
    reduce = mul and find_downstream(mul.outputs[0], "ReduceSum", limit=1)
    if reduce is None:
        return None
    second = next((found for t in mul.inputs
                   if (found := linear_with_constants(producer(t))) and found[1].ndim == 3), None)
    pre = find_upstream(second[0], lambda n: _is_stacked_linear(n)) if second else None
    first = linear_with_constants(pre)
    if second is None or first is None:
        return None
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
        if node.attrs.get("use_sparse_mixer", 0):
            raise LoweringError(f"{where}: sparse-mixer routing (use_sparse_mixer=1) is not "
                                "softmax top-k routing", remedy="set use_sparse_mixer=0")
        present = [i for i, t in enumerate(node.inputs) if t.name]
        weights = {i: constant_value(node.inputs[i]) for i in present if i >= 2}
        if any(i > 5 for i in present) or any(w is None for w in weights.values()) \
                or not {2, 4} <= set(weights):
            raise LoweringError(f"{where}: expected constant fc1/fc2 weights (and optional "
                                "biases) only", remedy="gated (fc3) experts are not supported")
        w1, w2 = weights[2], weights[4]
        experts, hidden, dim = w1.shape
        # Absent optional biases add nothing.
        b1 = weights.get(3, np.zeros((experts, hidden), np.float32))
        b2 = weights.get(5, np.zeros((experts, dim), np.float32))
        router = _router(node.inputs[1], graph, where)
        output = _read_router_rows(node, router.tokens, graph)
        activation = {"gelu": "gelu_tanh", "relu": "relu"}.get(
            node.attrs.get("activation_type", "relu"))
        if activation is None:
            raise LoweringError(f"{where}: activation {node.attrs['activation_type']!r} "
                                "is not supported", remedy="use gelu or relu experts")
        matches.append(MoEMatch(
            router=router, output=output, w1=w1.transpose(0, 2, 1), b1=b1,
            w2=w2.transpose(0, 2, 1), b2=b2, top_k=int(node.attrs.get("k", 1)),
            activation=activation,
            renormalise=bool(node.attrs.get("normalize_routing_weights", 0)),
        ))
    return matches


def _read_router_rows(node: gs.Node, rows: gs.Tensor, graph: gs.Graph) -> gs.Tensor:
    """Make a contrib MoE fed the [B, S, D] token tensor read the router's [N, D] rows (the
    same values, reshaped) and reshape its result back; returns its [N, D] output. Its layer
    then runs from the router's rows alone, whatever shape arithmetic sized the reshape."""
    tokens = node.inputs[0]
    if tokens is rows or skip_shape_ops(rows) is not skip_shape_ops(tokens) \
            or rows.shape is None or tokens.shape is None:
        return node.outputs[0]
    result = node.outputs[0]
    flat = gs.Variable(fresh_name(graph, f"{result.name}_rows"), np.float32, list(rows.shape))
    shape = gs.Constant(fresh_name(graph, f"{result.name}_shape"),
                        np.asarray(tokens.shape, np.int64))
    node.inputs[0], node.outputs[0] = rows, flat
    graph.nodes.append(gs.Node("Reshape", name=fresh_node_name(graph, f"{node.name}/rows_back"),
                               inputs=[flat, shape], outputs=[result]))
    return flat


def find_sparse_moes(graph: gs.Graph) -> list[MoEMatch]:
    matches = []
    for topk in [n for n in graph.nodes if n.op == "TopK"]:
        experts = _sparse_expert_branches(topk)
        routing = topk_routing(topk, graph) if experts else None
        if routing is None:
            continue
        where = _where(topk, graph)
        match = _stack_sparse_experts(experts, routing.router, routing.top_k, graph, where)
        matches.append(_fitting(graph, match, routing.renormalisations, where))
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


SCATTERS = ("ScatterND", "ScatterElements")


def _accumulating_node(second_linear: gs.Node, where: str, expert: int) -> gs.Node:
    """The node adding one expert's scattered output into the layer output.

    Scatter(out, idx, y, reduction="add") does it in one step (ScatterND or ScatterElements);
    torch's index_put(accumulate=True) and index_add export as Scatter(zeros, idx, y)
    followed by Add(out, scattered).
    """
    scatter = next((found for op in SCATTERS
                    if (found := find_downstream(second_linear.outputs[0], op, limit=8))), None)
    if scatter is not None and scatter.attrs.get("reduction") == "add":
        return scatter
    add = find_downstream(scatter.outputs[0], "Add", limit=1) if scatter is not None else None
    if add is None or not _is_zeros(scatter.inputs[0]):
        raise LoweringError(f"{where}: expert {expert} output is not scatter-added",
                            remedy="accumulate expert outputs with index_put(accumulate=True) "
                                   "or index_add")
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
            if id(node) in seen or node.op in SCATTERS:
                continue
            seen.add(id(node))
            if linear_with_constants(node) is not None:
                found.append(node)
            queue.extend(node.outputs)
    return sorted(found, key=lambda node: order[id(node)])


def find_computed_moes(graph: gs.Graph) -> list[MoEMatch]:
    """MoE layers the spelled-out forms did not claim, recognised by what they compute: top-k
    routing, or a softmax gate weighing every expert (a dense MoE: k = E)."""
    matches = []
    for node in list(graph.nodes):
        if node.op == "TopK":
            routing = topk_routing(node, graph)
            if routing is not None:
                matches.append(_computed_match(graph, routing))
        elif node.op == "Softmax" and (routing := _softmax_routing(node, graph)) is not None:
            match = _computed_match(graph, routing, required=False)
            if match is not None:
                matches.append(match)
    return matches


def _computed_match(graph: gs.Graph, routing: Routing, required: bool = True
                    ) -> MoEMatch | None:
    """The layer routed by `routing`; with `required` False, None unless the softmax's
    result is a token-shaped combination of expert MLPs (a softmax elsewhere is no MoE)."""
    where = _where(routing.start, graph)
    router = routing.router
    output = _layer_output(graph, routing.start, router.tokens)
    layer = _layer_nodes(graph, router.tokens, output) if output is not None else None
    if layer is None:
        if not required:
            return None
        raise LoweringError(f"{where}: top-k routing whose result is not a token-shaped "
                            "combination computed from the router's tokens alone",
                            remedy="write the MoE as router -> softmax -> top-k -> expert "
                                   "MLPs -> weighted sum")
    experts, dim = router.weights.shape[-1], router.weights.shape[1]
    routing_nodes = {id(n) for n in [routing.start, *_ancestors(routing.start.inputs[0])]}
    found = _stacked_experts(layer, routing_nodes, experts, dim, where) or \
        _expert_modules(layer, routing_nodes, router.tokens, experts, dim, where)
    if found is None:
        if not required:
            return None
        raise LoweringError(f"{where}: expected {experts} experts, as two stacked weights "
                            f"[{experts}, ...] or {experts} Linear pairs reading the tokens",
                            remedy="stack the expert Linears [E, ...] or keep one "
                                   "Linear -> activation -> Linear module per expert")
    first, second, activation, biases = found
    candidates = []
    for w1, w2 in _layouts(first, second, dim):
        b1, b2 = biases(w1.shape[-1])
        for renormalise in routing.renormalisations:
            match = MoEMatch(router=router, output=output, w1=w1, b1=b1, w2=w2, b2=b2,
                             top_k=routing.top_k, activation=activation,
                             renormalise=renormalise)
            if match_error(graph, match, where)[0] <= MATCH_TOLERANCE:
                return match
            candidates.append(match)
    if not candidates:
        raise LoweringError(f"{where}: expert weights {list(first.shape)} and "
                            f"{list(second.shape)} do not chain D -> H -> D (D = {dim})",
                            remedy="stack the expert Linears [E, ...]")
    return candidates[0]  # RecognizeMoE's check refuses it, naming what does not match


def _stacked_experts(layer, routing_nodes, experts: int, dim: int, where: str):
    """(first [E, ...], second [E, ...], activation, biases for a hidden width): the two
    stacked expert weights of an einsum or batched-MatMul MoE, or None when there are not
    two."""
    experts_part = [n for n in layer if id(n) not in routing_nodes]
    stacked = [t for t in _constants_of(experts_part)
               if t.values.ndim == 3 and t.shape[0] == experts and dim in t.shape[1:]
               and min(t.shape[1:]) > 1]
    if len(stacked) != 2:
        return None
    # The router's own nodes (a task embedding's MLP, say) are not the experts' activation.
    ops = {node.op for node in experts_part}
    activations = {name for op, name in ACTIVATIONS.items() if op in ops}
    if len(activations) != 1:
        raise LoweringError(f"{where}: expert activation built from {sorted(ops)} is not "
                            "GELU or ReLU", remedy="use GELU (erf or tanh form) or ReLU experts")
    return (stacked[0].values, stacked[1].values, activations.pop(),
            lambda hidden: _biases(layer, stacked, experts, hidden, dim))


def _expert_modules(layer, routing_nodes, tokens, experts: int, dim: int, where: str):
    """(W1 [E,D,H], W2 [E,H,D], activation, biases) of a loop over a ModuleList computing
    every expert on every token: E Linear -> activation -> Linear chains reading the tokens,
    taken in graph order (the loop's order), or None when there are not E of them."""
    inside = {id(n) for n in layer} - routing_nodes
    firsts = [(node, found) for node in layer if id(node) in inside
              and (found := linear_with_constants(node)) is not None
              and found[1].ndim == 2 and found[1].shape[0] == dim
              and skip_shape_ops(found[0]) is skip_shape_ops(tokens)]
    if len(firsts) != experts:
        return None
    pairs = []
    for node, fc1 in firsts:
        second = _next_linear(node, inside)
        if second is None:
            return None
        fc2 = linear_with_constants(second)
        activation = activation_between(node.outputs[0], fc2[0], where)
        pairs.append((fc1, fc2))
    b1, b2 = (np.stack([np.broadcast_to(fc[2], fc[1].shape[1:]) for fc in linears])
              for linears in zip(*pairs, strict=True))
    return (np.stack([fc1[1] for fc1, _ in pairs]), np.stack([fc2[1] for _, fc2 in pairs]),
            activation, lambda hidden: (b1, b2))  # noqa: ARG005 - read off the Linears


def _next_linear(node: gs.Node, inside: set[int], limit: int = 12) -> gs.Node | None:
    """The nearest constant-weight linear below `node` within the layer (an expert's fc2)."""
    queue, seen = [node.outputs[0]], set()
    while queue and len(seen) < limit:
        for consumer in queue.pop(0).outputs:
            if id(consumer) in seen or id(consumer) not in inside:
                continue
            seen.add(id(consumer))
            if linear_with_constants(consumer) is not None:
                return consumer
            queue.extend(consumer.outputs)
    return None


def _layer_output(graph: gs.Graph, start: gs.Node, tokens: gs.Tensor) -> gs.Tensor | None:
    """The first token-shaped tensor below `start` that every path from it reaches."""
    order = {id(node): i for i, node in enumerate(graph.nodes)}
    below, queue = {}, [start]
    while queue:
        for tensor in queue.pop().outputs:
            for node in tensor.outputs:
                if id(node) not in below:
                    below[id(node)] = node
                    queue.append(node)
    for node in sorted(below.values(), key=lambda n: order[id(n)]):
        tensor = node.outputs[0]
        if tensor.shape is None or list(tensor.shape) != list(tokens.shape):
            continue
        above = {id(n) for n in _ancestors(tensor)}
        earlier = [n for n in below.values() if order[id(n)] < order[id(node)]]
        if all(id(n) in above for n in earlier):
            return tensor
    return None


def _ancestors(tensor: gs.Tensor) -> list[gs.Node]:
    found, stack = {}, [tensor]
    while stack:
        current = stack.pop()
        for node in current.inputs:
            if id(node) not in found:
                found[id(node)] = node
                stack.extend(node.inputs)
    return list(found.values())


def _layer_nodes(graph: gs.Graph, tokens: gs.Tensor, output: gs.Tensor) -> list[gs.Node] | None:
    """The nodes computing `output` from `tokens`, `task` and constants; None if it reads
    anything else."""
    _, task_name = task_tensor(graph)
    found, stack = {}, [output]
    while stack:
        current = stack.pop()
        if current is tokens or isinstance(current, gs.Constant):
            continue
        if not current.inputs:
            if current.name != task_name:
                return None
            continue
        node = current.inputs[0]
        if id(node) not in found:
            found[id(node)] = node
            stack.extend(node.inputs)
    order = {id(node): i for i, node in enumerate(graph.nodes)}
    return sorted(found.values(), key=lambda node: order[id(node)])


def _constants_of(nodes: list[gs.Node]) -> list[gs.Constant]:
    seen, constants = set(), []
    for node in nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) and id(tensor) not in seen:
                seen.add(id(tensor))
                constants.append(tensor)
    return constants


def _layouts(first: np.ndarray, second: np.ndarray, dim: int):
    """(W1 [E,D,H], W2 [E,H,D]) for each way the stored weights could be laid out."""
    for w1 in (first, first.transpose(0, 2, 1)):
        if w1.shape[1] != dim:
            continue
        hidden = w1.shape[2]
        for w2 in (second, second.transpose(0, 2, 1)):
            if w2.shape[1:] == (hidden, dim):
                yield w1, w2


def _biases(layer, stacked, experts: int, hidden: int, dim: int):
    """Per-expert biases [E, H] and [E, D], in the order the layer adds them (zero if absent)."""
    weights = {id(t) for t in stacked}
    candidates = [t.values for t in _constants_of([n for n in layer if n.op == "Add"])
                  if id(t) not in weights and t.values.ndim >= 1
                  and t.values.shape[0] == experts
                  and t.values.size in (experts * hidden, experts * dim)]
    b1 = next((v for v in candidates if v.size == experts * hidden), None)
    b2 = next((v for v in candidates if v is not b1 and v.size == experts * dim), None)
    return (np.zeros((experts, hidden), np.float32) if b1 is None
            else b1.reshape(experts, hidden),
            np.zeros((experts, dim), np.float32) if b2 is None else b2.reshape(experts, dim))
