"""Split the model: the encoder stays for the accelerator, each task head becomes a host graph."""

from __future__ import annotations

from m3c.graph import Graph
from m3c.partition import partition
from m3c.passmanager import Pass


class Partition(Pass):
    name = "partition"
    description = "encoder -> accelerator graph; task heads -> per-task host graphs"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        if graph.heads:
            return graph, False
        parts = partition(graph.graph)
        return Graph(parts.accelerator, graph.metadata, parts.heads), True
