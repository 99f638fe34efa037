"""Attention(QKV[..., N, 3D]) -> [..., N, D]: multi-head softmax(q k^T * scale) v.

QKV columns are [q | k | v], each D wide; head h reads columns h*hd .. (h+1)*hd of each third
(the layout of timm's fused qkv Linear). Heads are concatenated along the last axis.
"""

from __future__ import annotations

import numpy as np

from m3c.ir.ops.base import M3COp


def attention(qkv: np.ndarray, num_heads: int, scale: float) -> np.ndarray:
    *batch, tokens, width = qkv.shape
    dim = width // 3
    # float32 like the models it checks, the softmax in place: a ViT-small layer's scores are
    # 12 x 1201 x 1201 values, and float64 copies of them dominated a compile.
    heads = qkv.astype(np.float32).reshape(*batch, tokens, 3, num_heads, dim // num_heads)
    q, k, v = (np.moveaxis(heads[..., i, :, :], -2, -3) for i in range(3))  # [..., h, N, hd]
    scores = q @ np.swapaxes(k, -1, -2)
    scores *= np.float32(scale)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    out = scores @ v
    return np.moveaxis(out, -3, -2).reshape(*batch, tokens, dim).astype(qkv.dtype)


class Attention(M3COp):
    template = "hls/units/attention.h.j2"

    @staticmethod
    def shape_rule(node):
        qkv = node.inputs[0]
        return [(list(qkv.shape[:-1]) + [qkv.shape[-1] // 3], qkv.dtype)] if qkv.shape else []

    def _run(self, qkv, num_heads=None, scale=None):
        return (attention(qkv, int(num_heads), float(scale)),)
