"""The lowering's analyses: what the accelerator cannot run, and whether the expert-major
schedule keeps its two-buffer promise. Each returns findings (m3c.ir.analysis)."""

from __future__ import annotations

from m3c.ir.analysis import Finding
from m3c.ir.graph import Graph
from m3c.lowering.expert_major import WEIGHT_SLOTS, analyse_schedule

# Standard ops the accelerator runs: norms and residual adds, and views that move no data.
ACCELERATOR_OPS = {"LayerNormalization", "Add", "Reshape", "Squeeze", "Unsqueeze", "Identity"}


def unsupported_ops(graph: Graph) -> list[Finding]:
    """Every node of the accelerator graph that is neither an m3c op nor a supported
    standard op."""
    findings = []
    for position, node in enumerate(graph.graph.nodes):
        if node.domain == "m3c" or ((node.domain or "") in ("", "ai.onnx")
                                    and node.op in ACCELERATOR_OPS):
            continue
        findings.append(Finding(
            node.name,
            f"unsupported op in the encoder: node {node.name!r} "
            f"(op {node.domain + '::' if node.domain else ''}{node.op}, position {position})",
            remedy="m3c supports ViT encoders with MoE blocks; rewrite this op with supported "
                   "ones (" + ", ".join(sorted(ACCELERATOR_OPS)) + ", Linear, GELU, attention, "
                   "MoE) or keep it in the task heads"))
    return findings


def expert_buffer_overuse(graph: Graph) -> list[Finding]:
    """Expert-major layers that could hold more than two experts' weights at once, for some
    valid order of their nodes."""
    return [Finding(layer.layer, f"MoE layer {layer.layer}: up to {layer.max_live_buffers} "
                                 "expert weight buffers live at once",
                    remedy="report this: the expert-major lowering is broken")
            for layer in analyse_schedule(graph.graph)
            if layer.max_live_buffers > WEIGHT_SLOTS or not layer.slot_reuse_ordered]
