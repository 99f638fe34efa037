"""The lowering's analyses: what the accelerator cannot run, and whether the expert-major
schedule keeps its two-buffer promise. Each returns findings (m3c.ir.analysis)."""

from __future__ import annotations

from m3c.ir.analysis import Finding
from m3c.ir.graph import Graph
from m3c.lowering.expert_major import WEIGHT_SLOTS, analyse_schedule

# Standard ops the accelerator runs: norms and residual adds, and views that move no data.
ACCELERATOR_OPS = {"LayerNormalization", "Add", "Reshape", "Squeeze", "Unsqueeze", "Identity"}


# Ops that only move data: when one is unsupported, the op it serves is the one to name.
LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"}

REMEDY = ("m3c supports ViT encoders with MoE blocks; rewrite this op with supported ones ("
          + ", ".join(sorted(ACCELERATOR_OPS)) + ", Linear, GELU, attention, MoE) or keep it "
          "in the task heads")

BATCHNORM_REMEDY = ("the accelerator's blocks normalise tokens with LayerNormalization: use "
                    "nn.LayerNorm in the encoder's blocks (an inference BatchNorm after a "
                    "linear layer or the patch embedding folds into it; one on the residual "
                    "stream does not)")


def unsupported_ops(graph: Graph) -> list[Finding]:
    """Every node of the accelerator graph that is neither an m3c op nor a supported
    standard op; ops that compute first (the transposes around a BatchNorm serve it)."""
    found: list[tuple[bool, Finding]] = []
    for position, node in enumerate(graph.graph.nodes):
        if node.domain == "m3c" or ((node.domain or "") in ("", "ai.onnx")
                                    and node.op in ACCELERATOR_OPS):
            continue
        if node.op == "BatchNormalization":
            finding = Finding(node.name, f"a BatchNormalization in the encoder: node "
                              f"{node.name!r} (position {position})", remedy=BATCHNORM_REMEDY)
        else:
            op = f"{node.domain + '::' if node.domain else ''}{node.op}"
            finding = Finding(node.name, f"unsupported op in the encoder: node {node.name!r} "
                              f"(op {op}, position {position})", remedy=REMEDY)
        found.append((node.op in LAYOUT_OPS, finding))
    return [finding for _, finding in sorted(found, key=lambda pair: pair[0])]


def expert_buffer_overuse(graph: Graph) -> list[Finding]:
    """Expert-major layers that could hold more than two experts' weights at once, for some
    valid order of their nodes."""
    return [Finding(layer.layer, f"MoE layer {layer.layer}: up to {layer.max_live_buffers} "
                                 "expert weight buffers live at once",
                    remedy="report this: the expert-major lowering is broken")
            for layer in analyse_schedule(graph.graph)
            if layer.max_live_buffers > WEIGHT_SLOTS or not layer.slot_reuse_ordered]
