"""Gelu(X) = 0.5 X (1 + erf(X / sqrt 2))."""

from __future__ import annotations

from m3c.ir.ops.base import M3COp
from m3c.ir.ops.moe import activation


class Gelu(M3COp):
    template = "hls/units/arith.h.j2"

    @staticmethod
    def shape_rule(node):
        return [(node.inputs[0].shape, node.inputs[0].dtype)]

    def _run(self, x):
        return (activation("gelu", x),)
