"""The `m3c` op domain: each op's numpy reference, registered for onnx.reference.

One module per op (or op family): the semantics in its docstring, the reference implementation
as an `OpRun` subclass, and the HLS template that implements it in hardware.
"""

from __future__ import annotations

from onnx.reference.op_run import OpRun


def reference_ops() -> list[type[OpRun]]:
    """Every m3c op implementation, for `ReferenceEvaluator(model, new_ops=...)`."""
    from m3c.ir.ops.attention import Attention
    from m3c.ir.ops.dense import Dense
    from m3c.ir.ops.embed import Embed
    from m3c.ir.ops.gelu import Gelu
    from m3c.ir.ops.moe import OPS as MOE_OPS
    from m3c.ir.ops.ort_backed import ORT_BACKED

    return [Attention, Dense, Embed, Gelu, *MOE_OPS, *ORT_BACKED]


def shape_rules() -> dict:
    """Op name -> rule giving [(shape, dtype)] of its outputs from a gs.Node."""
    return {op.__name__: op.shape_rule for op in reference_ops() if op.op_domain == "m3c"}
