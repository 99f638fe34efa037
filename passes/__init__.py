"""Graph passes, one per file; `PIPELINE` is m3c's lowering order."""

from m3c.passes.check_schedule import CheckSchedule
from m3c.passes.check_supported import CheckSupported
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
    CheckSupported,
    LowerExpertMajor,
    CheckSchedule,
]
