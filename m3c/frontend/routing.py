"""Router analysis shared by the MoE recognisers: from a logits tensor back to a router table.

Every recognised MoE layer ends up with the same router form: RouterW [Tw, D, E] and
RouterB [Tb, E] read at row `task` (row 0 when the table has one row). That form covers
- a single router (Tw = Tb = 1),
- multi-gate routers, one per task, picked by `Gather(table, task)` (Tw = T),
- task-conditioned routing, logits = concat(x, emb(task)) @ W: exactly x @ W[:D] + emb(t) @ W[D:],
  so the embedding folds into a per-task bias (Tb = T) computed here for every task.
Switching tasks then changes only which row the hardware reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from m3c.errors import LoweringError


@dataclass
class Router:
    tokens: gs.Variable  # the [N, D] tensor the router reads
    weights: np.ndarray  # [Tw, D, E]
    bias: np.ndarray  # [Tb, E]


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a tensor fixed at compile time (initializer or Constant/Identity chain)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1:
        node = tensor.inputs[0]
        if node.op == "Constant" and "value" in node.attrs:
            return np.asarray(node.attrs["value"].values)
        if node.op == "Identity":
            return constant_value(node.inputs[0])
    return None


def producer(tensor: gs.Tensor, *ops: str) -> gs.Node | None:
    """The node computing `tensor` if its op is one of `ops` (any op when none given)."""
    if len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    return node if not ops or node.op in ops else None


def skip_shape_ops(tensor: gs.Tensor) -> gs.Tensor:
    """Walk back through ops that only re-view a tensor (Reshape, Identity, Cast, Squeeze...)."""
    while (node := producer(tensor, "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze")):
        tensor = node.inputs[0]
    return tensor


def depends_only_on_task(tensor: gs.Tensor, task_name: str | None) -> bool:
    """Whether `tensor` is computed from the `task` input (and constants) alone."""
    if task_name is None:
        return False
    stack, seen, reached = [tensor], set(), False
    while stack:
        current = stack.pop()
        if id(current) in seen or isinstance(current, gs.Constant):
            continue
        seen.add(id(current))
        if not current.inputs:
            if current.name != task_name:
                return False
            reached = True
            continue
        stack.extend(current.inputs[0].inputs)
    return reached


def task_indexed_table(tensor: gs.Tensor, graph: gs.Graph, task_name: str | None
                       ) -> np.ndarray | None:
    """The constant table [T, ...] read at row `task`, if `tensor` = Gather(table, f(task)).

    The index may be `task` itself or anything computed from it alone (the dynamo exporter
    reshapes `task` and takes its element 0, for `w_gate[task]`): it is evaluated for every
    task, and the table's rows are put in the order the tasks pick them.
    """
    node = producer(tensor, "Gather")
    if node is None or node.attrs.get("axis", 0) != 0:
        return None
    table, index = constant_value(node.inputs[0]), node.inputs[1]
    if table is None or not depends_only_on_task(index, task_name):
        return None
    direct = skip_shape_ops(index)
    if isinstance(direct, gs.Variable) and direct.name == task_name:
        return table
    picks = evaluate_for_each_task(graph, index, task_name, table.shape[0])
    if any(np.asarray(pick).size != 1 for pick in picks):
        return None
    return table[[int(np.asarray(pick).reshape(-1)[0]) for pick in picks]]


def analyse_router(
    logits: gs.Tensor, graph: gs.Graph, task_name: str | None, num_tasks: int, where: str
) -> Router:
    """Recover the router behind `logits` = tokens @ W (+ b), in the table form."""
    bias = 0.0
    add = producer(logits, "Add")
    if add is not None:
        for i, operand in enumerate(add.inputs):
            value = constant_value(operand)
            if value is not None:
                bias, logits = value, add.inputs[1 - i]
                break
    gemm = producer(logits, "Gemm")
    if gemm is not None and not isinstance(bias, np.ndarray):
        tokens, value, bias = _gemm_router(gemm, where)
    else:
        matmul = producer(logits, "MatMul")
        if matmul is None:
            raise LoweringError(f"{where}: router logits are not computed by a MatMul",
                                remedy="route with logits = tokens @ w_gate")
        tokens, weight = matmul.inputs
        table = task_indexed_table(weight, graph, task_name)
        if table is not None:
            return Router(tokens, table.astype(np.float32), _bias_rows(bias, table.shape[-1]))
        value = constant_value(weight)
        if value is None or value.ndim != 2:
            raise LoweringError(f"{where}: router weight {weight.name!r} is neither a constant "
                                "nor a task-indexed table",
                                remedy="export the router weights as constants")
    concat = producer(tokens, "Concat")
    if concat is None:
        return Router(tokens, value[None].astype(np.float32), _bias_rows(bias, value.shape[-1]))
    return _fold_task_embedding(concat, value, bias, graph, task_name, num_tasks, where)


def _gemm_router(gemm: gs.Node, where: str) -> tuple[gs.Tensor, np.ndarray, np.ndarray | float]:
    """(tokens, weight as x @ W, bias) of an `nn.Linear` router: Gemm(tokens, W, b) with
    constant W (maybe transposed) and b."""
    values = [constant_value(t) for t in gemm.inputs[1:]]
    alpha, beta = gemm.attrs.get("alpha", 1.0), gemm.attrs.get("beta", 1.0)
    if values[0] is None or gemm.attrs.get("transA", 0) or any(
            v is None for v in values[1:]):
        raise LoweringError(f"{where}: router Gemm {gemm.name!r} has non-constant weights",
                            remedy="export the router weights as constants")
    weight = values[0].T if gemm.attrs.get("transB", 0) else values[0]
    bias = values[1] * beta if len(values) > 1 else 0.0
    return gemm.inputs[0], weight * alpha, bias


def _bias_rows(bias, experts: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(bias, np.float32), (1, experts)).copy()


def _fold_task_embedding(concat, weight, bias, graph, task_name, num_tasks, where) -> Router:
    if len(concat.inputs) != 2:
        raise LoweringError(f"{where}: the router input concat {concat.name!r} is not "
                            "(tokens, task embedding)", remedy="concatenate tokens first")
    tokens, embedding = concat.inputs
    while (expand := producer(embedding, "Expand")) is not None:
        embedding = expand.inputs[0]  # broadcast over tokens: one row is enough
    constant = constant_value(embedding)
    if constant is not None:  # one task: the embedding was folded to a constant
        per_task = [constant]
    elif task_name is None:
        raise LoweringError(f"{where}: the router input concat {concat.name!r} is not "
                            "(tokens, task embedding)", remedy="concatenate tokens first")
    else:
        per_task = evaluate_for_each_task(graph, embedding, task_name, num_tasks)
    # Every token carries the same embedding row: keep one row per task.
    rows = np.stack([value.reshape(-1, value.shape[-1])[0] for value in per_task])
    dim = weight.shape[0] - rows.shape[-1]
    task_bias = rows @ weight[dim:] + np.asarray(bias, np.float32)
    return Router(tokens, weight[None, :dim].astype(np.float32), task_bias.astype(np.float32))


def evaluate_for_each_task(
    graph: gs.Graph, tensor: gs.Tensor, task_name: str, num_tasks: int
) -> list[np.ndarray]:
    """Run the part of the graph computing `tensor` once per task id; it may read only `task`."""
    import onnxruntime as ort

    sub = graph.copy()
    target = sub.tensors()[tensor.name]
    sub.outputs = [target]
    sub.inputs = [sub.tensors()[task_name]]
    sub.cleanup()
    missing = [t.name for node in sub.nodes for t in node.inputs
               if isinstance(t, gs.Variable) and not t.inputs and t.name != task_name]
    if missing:
        raise LoweringError(f"the task embedding {tensor.name!r} depends on {missing[:3]}, "
                            "not only on the task", remedy="use a task-only router embedding")
    if target.dtype is None:
        target.dtype = np.float32  # task embeddings; indices have their inferred type
    model = gs.export_onnx(sub)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    task = graph.tensors()[task_name]
    shape, dtype = task.shape or [], np.dtype(task.dtype)
    return [session.run(None, {task_name: np.full(shape, t, dtype)})[0] for t in range(num_tasks)]
