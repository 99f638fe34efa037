"""MoE recognition: each MoE layer, in any of the three forms m3c reads, -> one m3c.MoE.

The forms (m3c's dense export, onnxruntime's com.microsoft::MoE, the sparse NonZero/ScatterND
form of a traced token loop) are described in `m3c.frontend.moe_forms`. Routers become a
task-indexed table (multi-gate) or shared weights with a per-task bias (task-conditioned,
folded exactly), so switching tasks changes only which router row is read.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from m3c.frontend.moe_forms import (
    find_computed_moes,
    find_contrib_moes,
    find_dense_moes,
    find_sparse_moes,
)
from m3c.frontend.moe_match import check_match, replace_with_moe
from m3c.ir.graph import Graph, fresh_name, fresh_node_name
from m3c.ir.passmanager import Pass

# The spelled-out forms first; whatever top-k routing is left is read by what it computes.
FINDERS = {"dense": find_dense_moes, "contrib": find_contrib_moes, "sparse": find_sparse_moes,
           "computed": find_computed_moes}
CHECK_THREADS = 2


class RecognizeMoE(Pass):
    name = "recognize_moe"
    description = "MoE layers (dense export, com.microsoft::MoE, sparse token loop) -> m3c.MoE"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        found = 0
        for form, finder in FINDERS.items():
            matches = list(finder(graph.graph))
            wheres = [f"MoE layer {found + i} ({form} form)" for i in range(len(matches))]
            for match, where in zip(matches, wheres, strict=True):
                match.check(where)
            # Each check runs its own layer's subgraph (onnxruntime, numpy: both release the
            # GIL) on the graph as found, which no replacement has touched yet.
            with ThreadPoolExecutor(CHECK_THREADS) as pool:
                list(pool.map(check_match, [graph.graph] * len(matches), matches, wheres))
            for match in matches:
                replace_with_moe(graph.graph, match, found)
                found += 1
            graph.graph.cleanup()  # a replaced layer's routing is not found again
        if found:
            graph.graph.cleanup().toposort()
            _number_layers_in_order(graph)
        return graph, found > 0


def _number_layers_in_order(graph: Graph) -> None:
    """Name layers moe0, moe1, ... in execution order whatever order the forms were found in."""
    layers = [node for node in graph.graph.nodes if node.domain == "m3c" and node.op == "MoE"]
    for index, node in enumerate(layers):
        node.name = fresh_node_name(graph.graph, f"moe{index}/MoE")
        for tensor in node.inputs[2:]:
            tensor.name = fresh_name(graph.graph, f"moe{index}.{tensor.name.split('.', 1)[1]}")
