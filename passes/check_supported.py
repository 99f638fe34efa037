"""Refuse, with the node named, anything in the accelerator graph the hardware cannot run."""

from __future__ import annotations

from m3c.errors import LoweringError
from m3c.graph import Graph
from m3c.passmanager import Pass

# Standard ops the accelerator runs: norms and residual adds, and views that move no data.
ACCELERATOR_OPS = {"LayerNormalization", "Add", "Reshape", "Squeeze", "Unsqueeze", "Identity"}


class CheckSupported(Pass):
    name = "check_supported"
    description = "every accelerator op is an m3c op or a supported standard op"

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        for position, node in enumerate(graph.graph.nodes):
            if node.domain == "m3c" or ((node.domain or "") in ("", "ai.onnx")
                                        and node.op in ACCELERATOR_OPS):
                continue
            raise LoweringError(
                f"unsupported op in the encoder: node {node.name!r} "
                f"(op {node.domain + '::' if node.domain else ''}{node.op}, position {position})",
                remedy="m3c supports ViT encoders with MoE blocks; rewrite this op with "
                       "supported ones (" + ", ".join(sorted(ACCELERATOR_OPS)) + ", Linear, "
                       "GELU, attention, MoE) or keep it in the task heads")
        return graph, False
