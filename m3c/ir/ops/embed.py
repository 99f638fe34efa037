"""Embed: image -> patch tokens with the class token in front and position embedding added.

Embed(Image[1,C,H,W], W[C*p*p, D], B[D], Cls[D], Pos[1+H/p*W/p, D]) -> Tokens[1, 1+N, D]
Patch (i, j) is flattened channel-major (c, ky, kx), the order of a Conv2d weight, so the
patch projection is the linear unit's x @ W; token 0 is the class token.
"""

from __future__ import annotations

import numpy as np

from m3c.ir.ops.base import M3COp


def patches(image: np.ndarray, patch: int) -> np.ndarray:
    """[1, C, H, W] -> [H/p * W/p, C*p*p], row-major over the patch grid."""
    _, channels, height, width = image.shape
    grid = image[0].reshape(channels, height // patch, patch, width // patch, patch)
    return grid.transpose(1, 3, 0, 2, 4).reshape((height // patch) * (width // patch), -1)


class Embed(M3COp):
    template = "hls/units/embed.h.j2"

    @staticmethod
    def shape_rule(node):
        _, weight, _, _, pos = node.inputs
        return [([1, pos.shape[0], weight.shape[1]], np.float32)]

    def _run(self, image, weight, bias, cls, pos, patch_size=None):
        tokens = patches(image, int(patch_size)).astype(np.float64) @ weight + bias
        return (np.concatenate([cls[None], tokens])[None] + pos[None]).astype(image.dtype),
