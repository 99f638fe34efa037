"""The MoE family: token-major `MoE` and the expert-major ops it lowers to.

Semantics (numpy references, also what the HLS templates compute):
- MoE(X[N,D], task, RouterW[Tw,D,E], RouterB[Tb,E], W1[E,D,H], B1[E,H], W2[E,H,D], B2[E,D])
  router row r = min(task, rows-1); probs = softmax(X @ RouterW[r] + RouterB[r]); top-k with
  ties to the lower index; Y = Σ_selected p · act(X @ W1[e] + B1[e]) @ W2[e] + B2[e]; the
  top-k probabilities are used as they are (M3ViT, V-MoE) or, with `renormalise` = 1, divided
  by their sum (Mixtral, DeepSeek: the same as a softmax over the top-k logits).
- Route -> TopkIdx[N,k], TopkScore[N,k]; ExpertQueues -> QueueTokens[E,N] (ascending, padded
  with 0), QueueScores[E,N] (padded with 0), QueueLen[E]; RenormaliseScores -> TopkScore rows
  divided by their sums (a renormalised MoE only); LoadExpert(e) -> expert e's weights;
  ExpertGather -> rows of X in queue order (zero past the queue length); ExpertMLP -> act MLP
  on the gathered rows (zero past the length); ScatterAdd -> Acc[tok] += score · Ye row.
"""

from __future__ import annotations

import math

import numpy as np

from m3c.ir.ops.base import M3COp
from m3c.runtime.emulator import erf

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """Expert activation in float32 arithmetic: GELU (erf or tanh form) or ReLU. erf's
    1.5e-7 is float32's own rounding; math.erf per element cost half of a compile."""
    if name == "gelu":
        return (0.5 * x * (1.0 + erf(x * _SQRT_HALF))).astype(x.dtype)
    if name == "gelu_tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return (0.5 * x * (1.0 + np.tanh(inner))).astype(x.dtype)
    if name == "relu":
        return np.maximum(x, 0).astype(x.dtype)
    raise ValueError(f"unknown activation {name!r}")


def router_probs(x, task, router_w, router_b) -> np.ndarray:
    """Softmax over all experts of the task's router logits."""
    task = int(np.asarray(task).reshape(-1)[0])
    logits = (x.astype(np.float64) @ router_w[min(task, len(router_w) - 1)]
              + router_b[min(task, len(router_b) - 1)])
    logits = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row, largest first, ties to the lower index (as ONNX TopK)."""
    index = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return index.astype(np.int64), np.take_along_axis(probs, index, axis=-1)


def expert_mlp(x, w1, b1, w2, b2, act: str) -> np.ndarray:
    hidden = activation(act, x.astype(np.float64) @ w1 + b1)
    return (hidden @ w2 + b2).astype(x.dtype)


class MoE(M3COp):
    template = "hls/units/moe.h.j2"

    @staticmethod
    def shape_rule(node):
        return [(node.inputs[0].shape, np.float32)]

    def _run(self, x, task, router_w, router_b, w1, b1, w2, b2,
             top_k=None, num_experts=None, activation="gelu", renormalise=0):  # noqa: ARG002
        return (moe(x, task, router_w, router_b, w1, b1, w2, b2, int(top_k), activation,
                    bool(renormalise)),)


def moe(x, task, router_w, router_b, w1, b1, w2, b2, k: int, act: str,
        renormalise: bool = False) -> np.ndarray:
    """The token-major MoE layer (the semantics above)."""
    index, score = top_k_route(x, task, router_w, router_b, k)
    if renormalise:
        score = renormalised(score)
    out = np.zeros_like(x)
    for e in range(w1.shape[0]):
        rows, slots = np.nonzero(index == e)
        if len(rows):
            y = expert_mlp(x[rows], w1[e], b1[e], w2[e], b2[e], act)
            out[rows] += score[rows, slots, None] * y
    return out


def top_k_route(x, task, router_w, router_b, k):
    index, score = top_k(router_probs(x, task, router_w, router_b), int(k))
    return index, score.astype(x.dtype)


class Route(M3COp):
    template = "hls/units/moe.h.j2"

    @staticmethod
    def shape_rule(node):
        tokens, k = node.inputs[0].shape[0], node.attrs["top_k"]
        return [([tokens, k], np.int64), ([tokens, k], np.float32)]

    def _run(self, x, task, router_w, router_b, top_k=None):
        return top_k_route(x, task, router_w, router_b, top_k)


def renormalised(score: np.ndarray) -> np.ndarray:
    """Each token's top-k gate values divided by their sum (they then add up to one)."""
    return (score / score.sum(axis=-1, keepdims=True)).astype(score.dtype)


class RenormaliseScores(M3COp):
    # No hardware unit yet: the router unit writes the top-k probabilities as they are, so
    # compile stops at this node (codegen has no implementation for it).

    @staticmethod
    def shape_rule(node):
        return [(node.inputs[0].shape, np.float32)]

    def _run(self, score):
        return (renormalised(score),)


class ExpertQueues(M3COp):
    template = "hls/units/moe.h.j2"

    @staticmethod
    def shape_rule(node):
        tokens, experts = node.inputs[0].shape[0], node.attrs["num_experts"]
        return [([experts, tokens], np.int64), ([experts, tokens], np.float32),
                ([experts], np.int64)]

    def _run(self, index, score, num_experts=None):
        tokens = index.shape[0]
        queue_tokens = np.zeros((num_experts, tokens), np.int64)
        queue_scores = np.zeros((num_experts, tokens), score.dtype)
        queue_len = np.zeros(num_experts, np.int64)
        for e in range(num_experts):
            rows, slots = np.nonzero(index == e)  # rows ascend: tokens in order
            queue_len[e] = len(rows)
            queue_tokens[e, : len(rows)] = rows
            queue_scores[e, : len(rows)] = score[rows, slots]
        return queue_tokens, queue_scores, queue_len


class LoadExpert(M3COp):
    template = "hls/units/moe.h.j2"

    @staticmethod
    def shape_rule(node):
        return [(list(t.shape[1:]), np.float32) for t in node.inputs[:4]]

    def _run(self, w1, b1, w2, b2, release=None, expert=None, slot=None):  # noqa: ARG002
        # `release` only orders the load after the slot's previous user; it carries no data.
        return w1[expert], b1[expert], w2[expert], b2[expert]


class ExpertGather(M3COp):
    template = "hls/units/moe.h.j2"

    @staticmethod
    def shape_rule(node):
        return [(node.inputs[0].shape, np.float32)]

    def _run(self, x, queue_tokens, queue_len, expert=None):
        count = int(queue_len[expert])
        gathered = np.zeros_like(x)
        gathered[:count] = x[queue_tokens[expert, :count]]
        return (gathered,)


class ExpertMLP(M3COp):
    template = "hls/units/moe.h.j2"

    @staticmethod
    def shape_rule(node):
        return [([node.inputs[0].shape[0], node.inputs[3].shape[-1]], np.float32)]

    def _run(self, x, w1, b1, w2, b2, queue_len, expert=None, activation="gelu"):
        count = int(queue_len[expert])
        out = np.zeros((x.shape[0], w2.shape[-1]), x.dtype)
        out[:count] = expert_mlp(x[:count], w1, b1, w2, b2, activation)
        return (out,)


class ScatterAdd(M3COp):
    template = "hls/units/moe.h.j2"

    @staticmethod
    def shape_rule(node):
        return [(node.inputs[1].shape, np.float32)]

    def _run(self, acc, y, queue_tokens, queue_scores, queue_len, expert=None):
        count = int(queue_len[expert])
        out = np.zeros_like(y) if acc is None else acc.copy()
        rows = queue_tokens[expert, :count]
        out[rows] += queue_scores[expert, :count, None] * y[:count]
        return (out,)


OPS = [MoE, Route, RenormaliseScores, ExpertQueues, LoadExpert, ExpertGather, ExpertMLP, ScatterAdd]
