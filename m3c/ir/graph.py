"""The graph users hold: an onnx-graphsurgeon graph plus the model's metadata, executable.

Standard-op graphs run in onnxruntime; graphs with `m3c` ops run in
`onnx.reference.ReferenceEvaluator` with the numpy references from `m3c.ir.ops`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from m3c.errors import LoweringError
from m3c.ir.sessions import OPSET, ort_session

M3C_DOMAIN = "m3c"


class Graph:
    """An executable, saveable ONNX graph with m3c metadata (`m3c.tasks`, `m3c.config`)."""

    def __init__(self, graph: gs.Graph, metadata: dict[str, str] | None = None,
                 heads: dict[str, gs.Graph] | None = None) -> None:
        self.graph = graph
        self.metadata = dict(metadata or {})
        self.heads = heads or {}  # per-task host graphs once partitioned

    def copy(self) -> Graph:
        return Graph(self.graph.copy(), self.metadata,
                     {name: head.copy() for name, head in self.heads.items()})

    def to_onnx(self, graph: gs.Graph | None = None) -> onnx.ModelProto:
        graph = self.graph if graph is None else graph
        model = gs.export_onnx(graph, do_type_check=False)
        opsets = {entry.domain: entry for entry in model.opset_import}
        if "" in opsets:
            opsets[""].version = max(opsets[""].version, OPSET)
        if any(node.domain == M3C_DOMAIN for node in graph.nodes) and M3C_DOMAIN not in opsets:
            model.opset_import.append(onnx.helper.make_opsetid(M3C_DOMAIN, 1))
        model.ir_version = min(model.ir_version, 10)
        for key, value in sorted(self.metadata.items()):
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        model.producer_name = "m3c"
        return model

    def save(self, path: str | os.PathLike, with_heads: bool = True, store=None) -> Path:
        """Write the graph (and its head graphs beside it, as `<stem>.head_<task>.onnx`).

        With a `StageStore`, large weights go to its shared external-data file.
        """
        path = Path(path)
        graphs = {path: self.graph}
        for task, head in (self.heads if with_heads else {}).items():
            graphs[path.with_name(f"{path.stem}.head_{task}.onnx")] = head
        for target, graph in graphs.items():
            if store is None:
                onnx.save(self.to_onnx(graph), str(target))
            else:
                store.save(graph, self.to_onnx, target)
        return path

    def op_types(self) -> list[str]:
        """Every node's op type, `m3c.`-prefixed for m3c ops."""
        return [_qualified(node) for node in self.graph.nodes]

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.op_types()).items()))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute this graph (the accelerator part once partitioned)."""
        return run_graph(self.to_onnx(), feeds)

    def run_output(self, feeds: dict[str, np.ndarray], name: str) -> np.ndarray:
        """One model output (a task's), computing only what it needs."""
        if self.heads:
            features = next(iter(self.run(feeds).values()))
            head = self.heads[name]
            return run_graph(self.to_onnx(head), {head.inputs[0].name: features})[name]
        pruned = self.graph.copy()
        pruned.outputs = [pruned.tensors()[name]]
        pruned.cleanup()
        return run_graph(self.to_onnx(pruned), feeds)[name]

    def run_end_to_end(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of the whole model: this graph, then every task head on its result."""
        outputs = self.run(feeds)
        if not self.heads:
            return outputs
        (features,) = outputs.values()
        return {task: run_graph(self.to_onnx(head), {head.inputs[0].name: features})[task]
                for task, head in self.heads.items()}

    def __str__(self) -> str:
        lines = [f"m3c.Graph {self.graph.name or ''}".rstrip()]
        for tensor in self.graph.inputs:
            lines.append(f"  input  {tensor.name}: {tensor.dtype} {tensor.shape}")
        for tensor in self.graph.outputs:
            lines.append(f"  output {tensor.name}: {tensor.dtype} {tensor.shape}")
        counts = ", ".join(f"{op} x{n}" for op, n in self.op_counts().items())
        lines.append(f"  {len(self.graph.nodes)} nodes: {counts}")
        if self.heads:
            lines.append(f"  host heads: {', '.join(self.heads)}")
        return "\n".join(lines)


def fresh_name(graph: gs.Graph, base: str) -> str:
    """`base`, or `base_1`, `base_2`, ... : a tensor name no tensor of `graph` has yet.

    Passes name the constants they create after the nodes they fuse, and exporters reuse node
    name prefixes (`/MatMul`, `/MatMul_1` share the prefix ""); two distinct constants under
    one name would be merged by name downstream (one weight silently replacing the other).
    """
    return _unused(base, graph.tensors().keys())


def fresh_node_name(graph: gs.Graph, base: str) -> str:
    """`base` made unique among the node names of `graph` (layers are named after nodes)."""
    return _unused(base, {node.name for node in graph.nodes})


def _unused(base: str, taken) -> str:
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    return name


def check_unique_names(graph: gs.Graph, where: str) -> None:
    """Refuse a graph in which two different tensors share a name."""
    seen: dict[str, gs.Tensor] = {}
    for node in graph.nodes:
        for tensor in [*node.inputs, *node.outputs]:
            if tensor.name and seen.setdefault(tensor.name, tensor) is not tensor:
                raise LoweringError(f"{where}: two different tensors are named {tensor.name!r} "
                                    f"(one used by node {node.name!r})",
                                    remedy="report this: a pass created a duplicate name")


def _qualified(node: gs.Node) -> str:
    return f"m3c.{node.op}" if node.domain == M3C_DOMAIN else node.op


def run_graph(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return graph_runner(model)(feeds)


def graph_runner(model: onnx.ModelProto) -> Callable[[dict[str, np.ndarray]], dict]:
    """A function running `model` on feeds (outputs by name), loaded once: in m3c's numpy
    references when it holds m3c ops, else in onnxruntime."""
    names = [output.name for output in model.graph.output]
    if any(node.domain == M3C_DOMAIN for node in model.graph.node):
        from onnx.reference import ReferenceEvaluator

        from m3c.ir.ops import reference_ops

        session = ReferenceEvaluator(model, new_ops=reference_ops())
    else:
        session = ort_session(model)
    return lambda feeds: dict(zip(names, session.run(None, feeds), strict=True))
