"""Graph passes, one per file; `PIPELINE` is m3c's lowering order, with the analyses that
check the graph at their places (m3c.lowering.analyses)."""

from m3c.ir.analysis import AnalysisStep
from m3c.ir.passmanager import Pipeline
from m3c.lowering.analyses import expert_buffer_overuse, unsupported_ops
from m3c.passes.fold_constants import FoldConstants
from m3c.passes.fuse_attention import FuseAttention
from m3c.passes.fuse_dense import FuseDense
from m3c.passes.fuse_embed import FuseEmbed
from m3c.passes.fuse_gelu import FuseGelu
from m3c.passes.fuse_layernorm import FuseLayerNorm
from m3c.passes.infer_shapes import InferShapes
from m3c.passes.lower_expert_major import LowerExpertMajor
from m3c.passes.partition import Partition
from m3c.passes.recognize_moe import RecognizeMoE

PIPELINE = [
    InferShapes,
    FoldConstants,
    RecognizeMoE,
    FoldConstants,
    FuseEmbed,
    FuseLayerNorm,
    FuseGelu,
    FuseDense,
    FuseAttention,
    Partition,
    AnalysisStep("check_supported", "every accelerator op is an m3c op or a supported standard op",
                 unsupported_ops),
    LowerExpertMajor,
    AnalysisStep("check_schedule", "at most two expert weight buffers live at once, for any valid "
                 "order", expert_buffer_overuse),
]


def default_pipeline() -> Pipeline:
    """import -> canonical -> partitioned -> expert-major, each pass fresh."""
    return Pipeline([step() if isinstance(step, type) else step for step in PIPELINE])
