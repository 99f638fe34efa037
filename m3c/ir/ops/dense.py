"""Dense(X[..., K], W[K, M], B[M]) -> X @ W + B, optionally followed by GELU (erf form).

Every Linear of the encoder (qkv, attention projection, dense MLP) runs on the linear unit.
"""

from __future__ import annotations

import numpy as np

from m3c.ir.ops.base import M3COp
from m3c.ir.ops.moe import activation as apply_activation
from m3c.ir.ops.shapes import shape as _shape


class Dense(M3COp):
    template = "hls/units/matmul.h.j2"

    @staticmethod
    def shape_rule(node):
        x, weight = node.inputs[:2]
        return [(_shape(x)[:-1] + [weight.shape[-1]], x.dtype)] if x.shape else []

    def _run(self, x, weight, bias, activation="none"):
        # float64 accumulation: closer to exact than any float32 order, so near-tied routing
        # decisions downstream follow the oracle's.
        y = (x.astype(np.float64) @ weight + bias).astype(x.dtype)
        return (y if activation == "none" else apply_activation(activation, y),)
