"""How close is close enough: the error measures and limits every check uses."""

from __future__ import annotations

import math

import numpy as np

from m3c.errors import ProjectError


def max_error(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """The largest |got - want|; infinite when either side holds NaN or Inf, so a broken
    result can never compare as close (max(0.0, nan) is 0.0)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.size != want.size:
        raise ProjectError(f"{what}: {got.size} values to compare with {want.size}",
                           remedy="the two sides must have one shape: recompile a project, or "
                                  "check the model's output shapes")
    if got.size == 0:
        return math.inf  # nothing compared is not a pass
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return math.inf
    return float(np.abs(got.ravel() - want.ravel()).max())


# A router whose k-th and (k+1)-th experts are nearly tied for a token sends it elsewhere
# under any change of rounding (float32 vs onnxruntime as much as fixed point): that token's
# features then differ by far more than the arithmetic does, while every other token follows.
# Up to this share of the tokens may exceed a tolerance (measured: 1.5-3.5% on tiny-nyud and
# tiny-cityscapes in fixed point, each such token 10x past the rest); a wrong weight or a
# saturating layer moves far more, and NaN anywhere fails.
ROUTING_FLIP_SHARE = 0.05


def encoder_error(got: np.ndarray, want: np.ndarray, shape: list[int], what: str
                  ) -> tuple[float, float]:
    """(the error all but ROUTING_FLIP_SHARE of the tokens stay within, the largest error) of
    encoder features of `shape` ([..., tokens, width]); infinite on NaN or Inf."""
    worst = max_error(got, want, what)
    if not math.isfinite(worst):
        return worst, worst
    difference = np.abs(np.asarray(got, np.float64).ravel() - np.asarray(want, np.float64).ravel())
    per_token = difference.reshape(-1, shape[-1]).max(axis=1)
    rank = per_token.size - 1 - int(per_token.size * ROUTING_FLIP_SHARE)
    return float(np.partition(per_token, rank)[rank]), worst


# TVM and onnxruntime agree within 1.9e-7 on every preset measured; far above that is a bug
# in one of them, whatever tolerance the stages are held to.
ORACLE_TOLERANCE = 1e-4
