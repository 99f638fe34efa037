"""Split the model: the encoder stays for the accelerator, each task head becomes a host graph."""

from __future__ import annotations

from m3c.ir.graph import Graph
from m3c.ir.passmanager import Pass
from m3c.lowering.partition import partition


class Partition(Pass):
    name = "partition"
    description = "encoder -> accelerator graph; task heads -> per-task host graphs"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        if graph.heads:
            return graph, False
        parts = partition(graph.graph)
        # The original model's name for the encoder output, so oracles can probe it.
        metadata = {**graph.metadata, "m3c.features_tensor": parts.boundary}
        return Graph(parts.accelerator, metadata, parts.heads), True
