"""The expert-major rewrite: every m3c.MoE -> route, queues, per-expert load/gather/MLP/scatter."""

from __future__ import annotations

from m3c.ir.graph import Graph
from m3c.ir.passmanager import Pass
from m3c.lowering.expert_major import lower_moe_node
from m3c.passes.infer_shapes import InferShapes


class LowerExpertMajor(Pass):
    name = "lower_expert_major"
    description = "m3c.MoE -> Route, ExpertQueues, double-buffered LoadExpert/Gather/MLP/Scatter"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        layers = [n for n in graph.graph.nodes if n.domain == "m3c" and n.op == "MoE"]
        for node in layers:
            lower_moe_node(graph.graph, node)
        if not layers:
            return graph, False
        graph.graph.cleanup().toposort()
        graph, _ = InferShapes().apply(graph)
        return graph, True
