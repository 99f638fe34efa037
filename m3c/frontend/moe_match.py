"""What every MoE recogniser finds, and how a found layer becomes one `m3c.MoE` node."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from m3c.errors import LoweringError
from m3c.frontend.routing import Router, constant_value, depends_only_on_task, producer
from m3c.ir.graph import fresh_name

ACTIVATIONS = {"Erf": "gelu", "Tanh": "gelu_tanh", "Relu": "relu"}


@dataclass
class MoEMatch:
    """One MoE layer in m3c's layout: experts as x @ W (W1 [E,D,H], W2 [E,H,D])."""

    router: Router
    output: gs.Variable
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    top_k: int
    activation: str
    renormalise: bool = False  # the top-k gate values divided by their sum (Mixtral, DeepSeek)

    def check(self, where: str) -> None:
        experts, dim, hidden = self.w1.shape
        expected = {
            "b1": (self.b1.shape, (experts, hidden)),
            "w2": (self.w2.shape, (experts, hidden, dim)),
            "b2": (self.b2.shape, (experts, dim)),
            "router weights": (self.router.weights.shape[1:], (dim, experts)),
        }
        wrong = [f"{k} {got} != {want}" for k, (got, want) in expected.items() if got != want]
        if wrong:
            raise LoweringError(f"{where}: inconsistent expert shapes: {'; '.join(wrong)}")
        if not 1 <= self.top_k <= experts:
            raise LoweringError(f"{where}: top-k {self.top_k} outside 1..{experts}")


# What MoE layers are built of, in every form m3c reads: a node outside this list inside a
# layer that does not check out numerically is what the match failed to account for.
MOE_VOCABULARY = {
    "Add", "Cast", "Concat", "Constant", "ConstantOfShape", "Div", "Einsum", "Equal", "Erf",
    "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Gemm", "Identity", "MatMul",
    "MoE", "Mul", "NonZero", "OneHot", "Pow", "ReduceSum", "Relu", "Reshape", "ScatterElements",
    "ScatterND", "Shape", "Slice", "Softmax", "Split", "Squeeze", "Sub", "Tanh", "Tile", "TopK",
    "Transpose", "Unsqueeze", "Where",
}
# Routing decisions closer than this (between the k-th and the next probability) may flip
# with float32 rounding; such tokens are left out of the comparison.
NEAR_TIE = 1e-5
MATCH_TOLERANCE = 1e-4


def check_match(graph: gs.Graph, match: MoEMatch, where: str) -> None:
    """Refuse a match that does not compute what the subgraph it replaces computes.

    The subgraph from the router's tokens (and `task`) to the layer output runs in
    onnxruntime on random tokens for every task and is compared with m3c.MoE's reference on
    the matched weights. A node the recogniser did not understand (and would have dropped)
    shows up here as a difference, and is named.
    """
    worst, sub = match_error(graph, match, where)
    if worst > MATCH_TOLERANCE:
        unknown = sorted({f"{n.name!r} ({n.op})" for n in sub.nodes
                          if n.op not in MOE_VOCABULARY})
        raise LoweringError(
            f"{where}: the recognised MoE layer differs from the graph by {worst:.2e}; "
            + (f"nodes not accounted for: {', '.join(unknown[:5])}" if unknown else
               "its routing or expert MLP is not the M3ViT form"),
            remedy="keep the MoE layer to router -> softmax -> top-k (optionally "
                   "renormalised) -> expert MLPs -> weighted sum, with any extra computation "
                   "outside it")


def match_error(graph: gs.Graph, match: MoEMatch, where: str, seed: int = 0
                ) -> tuple[float, gs.Graph]:
    """(largest relative difference between the match and the graph, the layer subgraph)."""
    from m3c.ir.graph import Graph
    from m3c.ir.ops.moe import moe, router_probs
    from m3c.ir.sessions import ort_session

    sub, feeds_for = _layer_subgraph(graph, match, where)
    session = ort_session(Graph(sub).to_onnx(), threads=1)  # the layers are checked side by side
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal(match.router.tokens.shape).astype(np.float32)
    args = (match.router.weights, match.router.bias, match.w1, match.b1, match.w2, match.b2)
    worst = 0.0
    for task in range(num_tasks(graph)):
        got = session.run(None, feeds_for(tokens, task))[0].reshape(tokens.shape)
        want = moe(tokens, np.array(task), *args, match.top_k, match.activation,
                   match.renormalise)
        ranked = np.sort(router_probs(tokens, task, *args[:2]), axis=-1)[:, ::-1]
        decided = np.ones(len(tokens), bool)
        if match.top_k < ranked.shape[1]:
            decided = ranked[:, match.top_k - 1] - ranked[:, match.top_k] > NEAR_TIE
        scale = max(1.0, float(np.abs(want).max()))
        worst = max(worst, float(np.abs(got - want)[decided].max(initial=0.0)) / scale)
    return worst, sub


def _layer_subgraph(graph: gs.Graph, match: MoEMatch, where: str):
    """The graph cut to the MoE layer: inputs tokens (and task), output the layer output."""
    sub = graph.copy()
    tensors = sub.tensors()
    tokens = tensors[match.router.tokens.name]
    if tokens.shape is None or any(not isinstance(d, int) for d in tokens.shape):
        raise LoweringError(f"{where}: the router input {tokens.name!r} has no static shape",
                            remedy="export with static shapes")
    tokens.inputs.clear()
    _, task_name = task_tensor(graph)
    sub.inputs = [tokens] + ([tensors[task_name]] if task_name else [])
    output = tensors[match.output.name]
    output.dtype = output.dtype or np.float32
    sub.outputs = [output]
    sub.cleanup()
    extra = [t.name for node in sub.nodes for t in node.inputs
             if isinstance(t, gs.Variable) and t.name and not t.inputs and t not in sub.inputs]
    if extra:
        raise LoweringError(f"{where}: the MoE layer reads {sorted(set(extra))[:3]} besides "
                            "its tokens and the task", remedy="compute the MoE from its tokens")

    def feeds_for(tokens_value: np.ndarray, task: int) -> dict[str, np.ndarray]:
        feeds = {tokens.name: tokens_value}
        if task_name:
            shape = tensors[task_name].shape or []
            feeds[task_name] = np.full(shape, task, np.int64)
        return feeds

    return sub, feeds_for


def activation_between(start: gs.Tensor, end: gs.Tensor, where: str) -> str:
    """Name the elementwise activation computing `end` from `start` (GELU erf/tanh, ReLU)."""
    ops = {node.op for node in nodes_between(start, end)}
    found = {name for op, name in ACTIVATIONS.items() if op in ops}
    if len(found) != 1:
        raise LoweringError(f"{where}: expert activation built from {sorted(ops)} is not "
                            "GELU or ReLU", remedy="use GELU (erf or tanh form) or ReLU experts")
    return found.pop()


def nodes_between(start: gs.Tensor, end: gs.Tensor) -> list[gs.Node]:
    """Nodes on some path from `start` to `end` (walking back from `end`)."""
    found: dict[int, gs.Node] = {}
    stack = [end]
    while stack:
        tensor = stack.pop()
        if tensor is start or len(tensor.inputs) != 1:
            continue
        node = tensor.inputs[0]
        if id(node) in found:
            continue
        found[id(node)] = node
        stack.extend(node.inputs)
    return list(found.values())


def task_tensor(graph: gs.Graph) -> tuple[gs.Tensor, str | None]:
    """The graph's `task` input, or a constant 0 for single-task models."""
    for tensor in graph.inputs:
        if tensor.name == "task":
            return tensor, tensor.name
    return gs.Constant(fresh_name(graph, "m3c_task_zero"), np.array(0, dtype=np.int64)), None


def num_tasks(graph: gs.Graph) -> int:
    """How many tasks the graph distinguishes: rows of the tables that `task` indexes."""
    _, name = task_tensor(graph)
    if name is None:
        return 1
    rows = [1]
    for node in graph.nodes:
        if node.op == "Gather" and len(node.inputs) == 2:
            table = constant_value(node.inputs[0])
            if table is not None and depends_only_on_task(node.inputs[1], name):
                rows.append(table.shape[0])
    return max(rows)


def replace_with_moe(graph: gs.Graph, match: MoEMatch, index: int) -> gs.Node:
    """Put one m3c.MoE node in place of the matched subgraph (cleanup removes the rest)."""
    # Provisional names; RecognizeMoE renames the layers moe0, moe1, ... in execution order.
    prefix = f"m3c_moe_found{index}"
    task, _ = task_tensor(graph)
    weights = {
        "router_w": match.router.weights, "router_b": match.router.bias,
        "w1": match.w1, "b1": match.b1, "w2": match.w2, "b2": match.b2,
    }
    constants = [gs.Constant(fresh_name(graph, f"{prefix}.{name}"),
                             np.ascontiguousarray(value, np.float32))
                 for name, value in weights.items()]
    match.output.inputs.clear()
    node = gs.Node(
        "MoE", name=f"{prefix}/MoE", domain="m3c",
        attrs={"top_k": int(match.top_k), "num_experts": int(match.w1.shape[0]),
               "activation": match.activation,
               **({"renormalise": 1} if match.renormalise else {})},
        inputs=[match.router.tokens, task, *constants], outputs=[match.output],
    )
    graph.nodes.append(node)
    return node


def find_upstream(tensor: gs.Tensor, predicate, limit: int = 24) -> gs.Node | None:
    """The nearest node above `tensor` (breadth first, at most `limit` nodes) matching."""
    queue, seen = [tensor], set()
    while queue and len(seen) < limit:
        current = queue.pop(0)
        node = producer(current)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if predicate(node):
            return node
        queue.extend(node.inputs)
    return None


def find_downstream(tensor: gs.Tensor, op: str, limit: int = 8) -> gs.Node | None:
    """The nearest consumer of `tensor` with op `op`, looking through at most `limit` nodes."""
    queue, seen = [tensor], set()
    while queue and len(seen) < limit:
        for node in queue.pop(0).outputs:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op == op:
                return node
            queue.extend(node.outputs)
    return None


def linear_with_constants(node: gs.Node | None) -> tuple[gs.Tensor, np.ndarray, np.ndarray] | None:
    """(input, weight as x@W, bias) for Add(MatMul(x, W), b) or Gemm(x, W, b)."""
    if node is None:
        return None
    if node.op == "Gemm":
        return _gemm(node)
    if node.op != "Add":
        return None
    for i, operand in enumerate(node.inputs):
        bias = constant_value(operand)
        matmul = producer(node.inputs[1 - i], "MatMul", "Gemm")
        if bias is None or matmul is None:
            continue
        if matmul.op == "Gemm":  # a Gemm without bias input, its bias added after it
            found = _gemm(matmul)
            if found is not None and not np.any(found[2]):
                return found[0], found[1], bias
            continue
        weight = constant_value(matmul.inputs[1])
        if weight is not None:
            return matmul.inputs[0], weight, bias
    return None


def _gemm(node: gs.Node) -> tuple[gs.Tensor, np.ndarray, np.ndarray] | None:
    """(input, weight as x@W, bias) for Gemm(x, W[, b]) with constants (zero bias if absent)."""
    values = [constant_value(t) for t in node.inputs[1:]]
    if values[0] is None or any(v is None for v in values[1:]) or node.attrs.get("transA", 0):
        return None
    weight = values[0].T if node.attrs.get("transB", 0) else values[0]
    weight = weight * node.attrs.get("alpha", 1.0)
    bias = values[1] * node.attrs.get("beta", 1.0) if len(values) > 1 \
        else np.zeros(weight.shape[1], np.float32)
    return node.inputs[0], weight, bias
