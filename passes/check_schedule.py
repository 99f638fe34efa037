"""Analysis: prove each expert-major layer holds at most two experts' weights at any time."""

from __future__ import annotations

from m3c.expert_major import check_schedule
from m3c.graph import Graph
from m3c.passmanager import Pass


class CheckSchedule(Pass):
    name = "check_schedule"
    description = "at most two expert weight buffers live at once, for any valid order"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        check_schedule(graph.graph)
        return graph, False
