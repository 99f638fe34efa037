"""Constant folding: everything computable at compile time becomes an initializer."""

from __future__ import annotations

from m3c.ir.graph import Graph
from m3c.ir.passmanager import Pass
from m3c.passes.infer_shapes import InferShapes


class FoldConstants(Pass):
    name = "fold_constants"
    description = "fold constant subgraphs (shape arithmetic, weight transposes, cls expand)"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for _ in range(4):  # folding exposes shapes, shapes expose more folding
            count = len(graph.graph.nodes)
            graph.graph.fold_constants(error_ok=True).cleanup().toposort()
            graph, _ = InferShapes().apply(graph)
            if len(graph.graph.nodes) == count:
                break
            changed = True
        return graph, changed
