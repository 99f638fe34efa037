"""The accelerator's call sequence (kernel.json) executed in numpy, in the project's types.

In fixed point this reproduces the C++ kernel bit for bit: every op below mirrors its
counterpart in templates/hls/kernel/m3c_ops.h.j2 cast for cast (raw integers, runtime/fixed.py).
Integer matrix products go through float64 BLAS, which is exact because every operand is an
integer below 2^18 and every partial sum stays below 2^53. In float precision the same ops run in
float32, like the float kernel: a reference for it to within rounding, used for calibration.

The hottest element-wise passes (the attention softmax, linear epilogues, layer norm) run as
compiled loops from fused.py when numba is installed, bit for bit the same as the numpy passes
kept beside them, which run without it: this module also ships inside generated projects
(host/m3c_runtime), where numpy alone suffices.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .fixed import (
    EXP_TABLE_BITS,
    GELU_RANGE,
    FixedType,
    gelu_step_bits,
    lookup_tables,
    reciprocal,
    reciprocal_sqrt,
    rounded_quotient,
)

Observer = Callable[[dict, str, np.ndarray], None]
LOG2E = 1.4426950408889634
ATTENTION_ROWS = 128
EXACT_FLOAT64 = float(2**53)  # every integer below this is a float64


def erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26): numpy has none, and a per-element
    math.erf costs more than the rest of a float run."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


@functools.cache
def fused_loops():
    """runtime/fused.py's compiled loops, or None where numba is not installed."""
    try:
        from . import fused
    except ImportError:
        return None
    return fused


class FloatArithmetic:
    """Float32 semantics of the kernel's ops: values are plain floats."""

    fixed = False
    dtype = np.float32

    def data_in(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, np.float32)

    weight_in = data_in
    data_out = data_in

    def linear(self, x, w, b, activation):
        return self.activate(x @ w + b, activation)

    def activate(self, pre, activation):
        if activation == "gelu":
            return 0.5 * pre * (1.0 + erf(pre / np.float32(math.sqrt(2.0))))
        if activation == "gelu_tanh":
            inner = np.float32(math.sqrt(2.0 / math.pi)) * (pre + np.float32(0.044715) * pre ** 3)
            return 0.5 * pre * (1.0 + np.tanh(inner))
        if activation == "relu":
            return np.maximum(pre, 0.0)
        return pre

    def layernorm(self, x, gamma, beta, epsilon):
        mean = x.mean(axis=-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(variance + np.float32(epsilon)) * gamma + beta

    def softmax_rows(self, logits):
        """Unnormalised softmax weights (in place over `logits`) and their rows' 1 / sum."""
        logits -= logits.max(axis=-1, keepdims=True)
        weights = np.exp(logits, out=logits)
        return weights, 1.0 / weights.sum(axis=-1, keepdims=True)

    def attention_head(self, q, k, v, scale):
        scores = q @ k.T
        scores *= np.float32(scale)
        weights, inverse = self.softmax_rows(scores)
        mixed = weights @ v
        mixed *= inverse
        return mixed

    def route_probs(self, x, w, b):
        weights, inverse = self.softmax_rows(x @ w + b)
        return weights * inverse

    def renormalise(self, probs, chosen):
        """The `chosen` probabilities of each row divided by their sum (the others as they
        are: no queue takes them)."""
        total = np.where(chosen, probs, 0).sum(axis=-1, keepdims=True)
        return np.where(chosen, probs * (1.0 / total), probs).astype(probs.dtype)

    def add(self, a, b):
        return a + b

    def scatter_add(self, out_rows, scores, result):
        return out_rows + scores[:, None] * result

    def finish_embedding(self, tokens, cls, pos):
        return np.concatenate([cls[None], tokens[1:]]) + pos


class FixedArithmetic:
    """ap_fixed semantics: values are raw integers of the classes in `types`."""

    fixed = True
    dtype = np.int64

    def __init__(self, types: dict[str, FixedType]) -> None:
        self.t = types
        self.data, self.weight, self.acc = types["data"], types["weight"], types["acc"]
        self.logit, self.prob, self.recip = types["logit"], types["prob"], types["recip"]
        self.norm, self.exp_arg, self.var = types["norm"], types["exp_arg"], types["var"]
        self.tables = lookup_tables(self.data, self.prob)
        self.log2e = int(self.prob.from_float(LOG2E))
        self.exp_by_index = self._exp_by_index()
        self.gelu_by_index = self._gelu_by_index()

    def data_in(self, values: np.ndarray) -> np.ndarray:
        return self.data.from_float(values)

    def weight_in(self, values: np.ndarray) -> np.ndarray:
        raw = self.weight.from_float(values)
        return raw.astype(np.int32) if self.weight.width <= 32 else raw  # half the memory

    def data_out(self, raw: np.ndarray) -> np.ndarray:
        return self.data.to_float(raw)

    def _acc(self, raw, frac):
        """acc_t(value with `frac` fractional bits): exact shift, then the wrap of acc_t."""
        return self.acc.cast(raw, frac)

    def _acc_holds(self, bound: float, frac: int) -> bool:
        """Whether acc_t holds every value of magnitude <= `bound` with `frac` fractional bits
        exactly: then the casts through it change nothing and can be skipped."""
        return frac <= self.acc.frac and bound * 2.0 ** (self.acc.frac - frac) < self.acc.raw_max

    @staticmethod
    def _matmul(a, b):
        """The exact integer product a @ b as int64: by float64 BLAS unless a partial sum could
        reach 2^53 (the operands' magnitudes bound every sum)."""
        bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * a.shape[-1]
        if bound >= EXACT_FLOAT64:
            return a.astype(np.int64) @ b.astype(np.int64)
        return (np.asarray(a, np.float64) @ np.asarray(b, np.float64)).astype(np.int64)

    def linear(self, x, w, b, activation):
        fd, fw = self.data.frac, self.weight.frac
        bias = np.ldexp(np.asarray(b, np.float64), fd)
        if not self._linear_exact_in_float(x, w, bias):
            return self.exact_linear(x, w, b, activation)
        # acc_t would hold the biased sums exactly: round them straight into data_t.
        product = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
        fast = self._fused_linear(product, bias, activation)
        if fast is not None:
            return fast
        product += bias
        x = self.data.cast_float(product, fd + fw)
        if activation in self.gelu_by_index:
            return self._float_gelu(x, self.gelu_by_index[activation])
        return self._activated(x.astype(np.int64), activation)

    def _linear_exact_in_float(self, x, w, bias) -> bool:
        """Whether every partial sum of x @ w + bias (data_t and weight_t codes, the bias in
        their product's units) stays below 2^53 and acc_t holds the sums: by the types' ranges
        where they show it, which spares a pass over both operands, else by their magnitudes."""
        biggest, frac = float(np.abs(bias).max(initial=0)), self.data.frac + self.weight.frac

        def holds(bound: float) -> bool:
            return bound + biggest < EXACT_FLOAT64 and self._acc_holds(bound + biggest, frac)

        by_types = self.data.magnitude * self.weight.magnitude * x.shape[-1]
        return holds(by_types) or holds(float(np.abs(x).max(initial=0))
                                        * float(np.abs(w).max(initial=0)) * x.shape[-1])

    def _fused_linear(self, product, bias, activation) -> np.ndarray | None:
        """linear's rounding into data_t and its activation in one compiled loop (fused.py),
        or None where numba is missing or the types or activation have no such loop."""
        compiled = fused_loops()
        if (compiled is None or self.data.overflow != "AP_SAT"
                or activation not in ("none", *self.gelu_by_index)):
            return None
        out = np.empty(product.shape, np.int64)
        rounding = (2.0 ** -self.weight.frac, self.data.quant == "AP_RND_CONV",
                    float(self.data.raw_min), float(self.data.raw_max))
        if activation == "none":
            compiled.linear_epilogue(product, bias, *rounding, out)
        else:
            bits = gelu_step_bits(self.data)
            compiled.linear_gelu_epilogue(product, bias, *rounding, 2.0 ** (bits - self.data.frac),
                                          float((GELU_RANGE << bits) + 1),
                                          self.gelu_by_index[activation], out)
        return out

    def exact_linear(self, x, w, b, activation):
        """linear cast for cast through acc_t on int64."""
        pre = self._acc(self._matmul(x, w), self.data.frac + self.weight.frac)
        pre = self.acc.overflowed(pre + self._acc(b, self.weight.frac))
        return self.activate(pre, activation)

    def activate(self, pre, activation):
        return self._activated(self.data.cast(pre, self.acc.frac), activation)

    def _activated(self, x, activation):
        """The activation of data_t values x."""
        if activation == "none":
            return x
        if activation == "relu":
            return np.maximum(x, 0)
        fd, bits = self.data.frac, gelu_step_bits(self.data)
        limit = GELU_RANGE << fd
        inside = (x >= -limit) & (x < limit)
        index = np.where(inside, x + limit, 0) >> (fd - bits)
        g = self.tables[activation][index]
        y = self.data.cast(x * g, fd + self.prob.frac)
        return np.where(x >= limit, x, np.where(inside, y, 0))

    def _gelu_by_index(self) -> dict[str, np.ndarray]:
        """Per GELU form, its factor tables (prob_t codes / 2^prob frac, float64) with one entry
        before them for x below the table (factor 0) and one after for x above it (factor 1):
        indexed by floor((x + limit) / step) + 1 clipped into the table, see _activated."""
        one = 1 << self.prob.frac
        if one > self.prob.raw_max:
            return {}
        return {kind: np.ldexp(np.concatenate([[0], self.tables[kind], [one]]).astype(np.float64),
                               -self.prob.frac) for kind in ("gelu", "gelu_tanh")}

    def _float_gelu(self, x, factors):
        """_activated's GELU on data_t values held in float64 (in place), to int64."""
        fd, bits = self.data.frac, gelu_step_bits(self.data)
        step = 2.0 ** (bits - fd)
        index = x * step
        index += (GELU_RANGE << bits) + 1
        # astype truncates: below the table lands at or below 0, which the clipping take reads
        # as index 0, as it reads what lies past the table as its last entry.
        x *= factors.take(index.astype(np.intp), mode="clip")
        return self.data.round_float(x).astype(np.int64)

    def layernorm(self, x, gamma, beta, epsilon):
        """Integer statistics: the mean is the sum / dim rounded to the data grid, 1/std the
        integer reciprocal square root of squares / dim + epsilon (m3c::layernorm)."""
        fd, fa, dim = self.data.frac, self.acc.frac, x.shape[-1]
        total = self._acc(x.sum(axis=-1, keepdims=True), fd)
        mean = self.data.overflowed(rounded_quotient(total, dim << (fa - fd)))
        compiled = fused_loops()
        if compiled is None:
            centred = x - mean
            squares = (centred * centred).sum(axis=-1, keepdims=True)  # var_t: exact, 2 fd bits
        else:
            squares = np.empty(mean.shape, np.int64)
            compiled.centred_squares(x, mean[:, 0], squares[:, 0])
        epsilon_raw = int(self.var.from_float(np.float32(epsilon)))
        inv_std = reciprocal_sqrt(squares // dim + epsilon_raw, 2 * fd, self.norm)
        if compiled is not None:
            out = np.empty(x.shape, np.int64)
            shifts = np.array([self.norm.frac, fd + self.weight.frac - fa, fa - fd])
            compiled.layernorm_rows(x, mean[:, 0], inv_std[:, 0], gamma,
                                    self._acc(beta, self.weight.frac), shifts, self.data.spec,
                                    self.acc.spec, out)
            return out
        normed = self.data.cast(centred * inv_std, fd + self.norm.frac)
        scaled = self._acc(normed * gamma, fd + self.weight.frac)
        return self.data.cast(scaled + self._acc(beta, self.weight.frac), self.acc.frac)

    def exp_neg(self, x):
        """exp(x) for logit_t x <= 0, as 2^(x log2 e) with a table (m3c::exp_neg)."""
        fe = self.exp_arg.frac
        t = self.exp_arg.cast(x * self.log2e, self.logit.frac + self.prob.frac)
        index = t & ((1 << fe) - 1)
        index >>= fe - EXP_TABLE_BITS
        # -whole >= prob's width shifts every table value (< 2^width) to 0, as the C++ returns.
        t >>= fe
        np.negative(t, out=t)
        np.minimum(t, self.prob.width, out=t)
        return self.tables["exp2"][index] >> t

    def _exp_by_index(self) -> np.ndarray | None:
        """exp_neg's results (float64) by j + n - 1 for j = floor(t / 2^(fe - EXP_TABLE_BITS)),
        t its exp_arg_t argument: j from -(n - 1) = -prob width x 2^EXP_TABLE_BITS (0 there and
        below) to 0. None when exp_arg_t's modes make exp_neg anything else than a function of
        j, or when logit_t's lowest value does not reach the 0 at index 0."""
        fe, width = self.exp_arg.frac, self.prob.width
        if (self.exp_arg.quant != "AP_TRN" or self.exp_arg.overflow != "AP_SAT"
                or fe < EXP_TABLE_BITS or self.exp_arg.raw_min >> fe > -width):
            return None
        j = np.arange(-width << EXP_TABLE_BITS, 1, dtype=np.int64)
        lowest = self.logit.raw_min * self.log2e * 2.0 ** (
            EXP_TABLE_BITS - self.logit.frac - self.prob.frac)
        if math.floor(lowest) > j[0]:
            return None
        shift = np.minimum(-(j >> EXP_TABLE_BITS), width)
        return (self.tables["exp2"][j & ((1 << EXP_TABLE_BITS) - 1)] >> shift).astype(np.float64)

    def softmax_rows(self, logits):
        """(exp weights, recip_t of their sum) per row, as attention and route compute them."""
        best = logits.max(axis=-1, keepdims=True)
        weights = self.exp_neg(self.logit.cast(logits - best, self.logit.frac))
        total = self._acc(weights.sum(axis=-1, keepdims=True), self.prob.frac)
        return weights, reciprocal(total, self.acc.frac, self.recip)

    def attention_head(self, q, k, v, scale, probs8: FixedType | None = None):
        """`probs8`: the 8-bit type the softmax numerators are rounded to as the array's
        operand (an 8-bit attention layer; their sum keeps prob_t)."""
        scale = int(self.norm.from_float(np.float32(scale)))
        fast = self._float_attention(q, k, v, scale, probs8)
        return self.exact_attention_head(q, k, v, scale, probs8) if fast is None else fast

    def exact_attention_head(self, q, k, v, scale, probs8=None):
        """attention_head cast for cast on int64 (`scale`: norm_t's raw code)."""
        # Rows are independent; blocks of them keep the temporaries in cache.
        return np.concatenate([self._attention_rows(q[start:start + ATTENTION_ROWS], k, v, scale,
                                                    probs8)
                               for start in range(0, q.shape[0], ATTENTION_ROWS)])

    def _attention_rows(self, q, k, v, scale, probs8=None):
        fd, fl = self.data.frac, self.logit.frac
        dot = self.logit.cast(self._acc(self._matmul(q, k.T), 2 * fd), self.acc.frac)
        scores = self.logit.cast(dot * scale, fl + self.norm.frac)
        weights, inverse = self.softmax_rows(scores)
        if probs8 is not None:  # prob_t(prob8_t(p)): rounded, back on prob_t's grid
            weights = probs8.cast(weights, self.prob.frac) << (self.prob.frac - probs8.frac)
        mixed = self._acc(self._matmul(weights, v), self.prob.frac + fd)
        mixed = self.logit.cast(mixed, self.acc.frac)
        return self._mixed_out(mixed, inverse)

    def _mixed_out(self, mixed, inverse):
        return self.data.cast(mixed * inverse, self.logit.frac + self.recip.frac)

    def _float_attention(self, q, k, v, scale, probs8=None):
        """_attention_rows on integers held in float64, when the operands' magnitudes show
        that acc_t never rounds or wraps and every product stays below 2^53 (else None)."""
        if self.exp_by_index is None:
            return None
        fd, fp = self.data.frac, self.prob.frac
        keys = np.abs(k).max(initial=0)
        dot_bound = float(np.abs(q).max(initial=0)) * float(keys) * k.shape[1]
        weight_max = self.prob.raw_max if probs8 is None else max(
            self.prob.raw_max, probs8.raw_max << (fp - probs8.frac))
        mix_bound = float(weight_max) * float(np.abs(v).max(initial=0)) * k.shape[0]
        logit_bound = float(1 << (self.logit.width - 1))
        index_bound = len(self.exp_by_index) * 2.0 ** (self.logit.frac + fp - EXP_TABLE_BITS)
        if (max(dot_bound, mix_bound) >= EXACT_FLOAT64 or logit_bound * scale >= EXACT_FLOAT64
                or 2 * logit_bound * self.log2e + index_bound >= EXACT_FLOAT64
                or not self._acc_holds(dot_bound, 2 * fd)
                or not self._acc_holds(mix_bound, fp + fd)):
            return None
        # Powers of two folded into an operand keep every product and sum exact.
        rows = np.ldexp(np.asarray(q, np.float64), self.logit.frac - 2 * fd)
        keys_t = np.asarray(k, np.float64).T.copy()
        values = np.ldexp(np.asarray(v, np.float64), self.logit.frac - fp - fd)
        dot_bound *= 2.0 ** (self.logit.frac - 2 * fd)
        blocks = [self._float_attention_rows(rows[start:start + ATTENTION_ROWS], keys_t, values,
                                             scale, dot_bound, probs8)
                  for start in range(0, q.shape[0], ATTENTION_ROWS)]
        total = self._acc(np.concatenate([t for _, t in blocks]).astype(np.int64), fp)
        mixed = np.concatenate([m for m, _ in blocks]).astype(np.int64)
        return self._mixed_out(mixed, reciprocal(total, self.acc.frac, self.recip))

    def _float_attention_rows(self, rows, keys_t, values, scale, dot_bound, probs8):
        """The logit_t mixes and the exp sums of a block of rows: `rows` @ `keys_t` are their
        logit_t dot products before rounding, bounded by `dot_bound`; `values` give the mixes."""
        fl, fp = self.logit.frac, self.prob.frac
        log2e = self.log2e * 2.0 ** (EXP_TABLE_BITS - fl - fp)
        compiled = fused_loops()
        if compiled is not None and self.logit.overflow == "AP_SAT":
            weights, total = rows @ keys_t, np.empty((rows.shape[0], 1))
            compiled.softmax_numerators(
                weights, scale * 2.0 ** -self.norm.frac, log2e, len(self.exp_by_index) - 1.0,
                self.logit.quant == "AP_RND_CONV", float(self.logit.raw_min),
                float(self.logit.raw_max), self.exp_by_index, total[:, 0])
        else:
            weights, total = self._softmax_numerators(rows @ keys_t, scale, dot_bound, log2e)
        if probs8 is not None:  # prob_t(prob8_t(p)): rounded, back on prob_t's grid
            weights = probs8.cast_float(weights, fp)
            weights *= 2.0 ** (fp - probs8.frac)
        return self.logit.round_float(weights @ values), total

    def _softmax_numerators(self, scores, scale, dot_bound, log2e):
        """_float_attention_rows' numpy passes between its products (fused.py fuses them)."""
        scores = self.logit.round_float(scores, dot_bound)
        scores *= scale * 2.0 ** -self.norm.frac
        scale_bound = (dot_bound + 1) * scale * 2.0 ** -self.norm.frac
        scores = self.logit.round_float(scores, scale_bound)
        # exp_neg's table index in one step, floor((x - max) log2e / 2^s) + n - 1, since
        # floor(floor(y) / 2^s) = floor(y / 2^s); a logit_t difference saturated in the kernel
        # reaches index 0 (exp 0) here too. astype truncates: it floors what is >= 0, and
        # what is below lands at or below 0, which the clipping take reads as index 0.
        scores *= log2e
        top = scores.max(axis=-1, keepdims=True)
        top -= len(self.exp_by_index) - 1
        scores -= top
        weights = self.exp_by_index.take(scores.astype(np.intp), mode="clip")
        return weights, weights.sum(axis=-1, keepdims=True)

    def route_probs(self, x, w, b):
        pre = self._acc(self._matmul(x, w), self.data.frac + self.weight.frac)
        pre = self.acc.overflowed(pre + self._acc(b, self.weight.frac))
        weights, inverse = self.softmax_rows(self.logit.cast(pre, self.acc.frac))
        return self.prob.cast(weights * inverse, self.prob.frac + self.recip.frac)

    def renormalise(self, probs, chosen):
        """route_tokens: the chosen prob_t codes summed in acc_t, recip_t of the sum, each
        chosen code times it rounded to prob_t (the others as they are)."""
        total = self._acc(np.where(chosen, probs, 0).sum(axis=-1, keepdims=True),
                          self.prob.frac)
        again = reciprocal(total, self.acc.frac, self.recip)
        rescaled = self.prob.cast(probs * again, self.prob.frac + self.recip.frac)
        return np.where(chosen, rescaled, probs)

    def add(self, a, b):
        return self.data.cast(a + b, self.data.frac)

    def narrow(self, x, kind: FixedType):
        """data_t(Narrow(x)): round and saturate to `kind`, then back into data_t."""
        return self.data.cast(kind.cast(x, self.data.frac), kind.frac)

    def scatter_add(self, out_rows, scores, result):
        fd, fa = self.data.frac, self.acc.frac
        weighted = self._acc(scores[:, None] * result, self.prob.frac + fd)
        return self.data.cast(self._acc(out_rows, fd) + weighted, fa)

    def finish_embedding(self, tokens, cls, pos):
        fw, fa = self.weight.frac, self.acc.frac
        first = self.data.cast(self._acc(cls, fw) + self._acc(pos[0], fw), fa)
        rest = self.data.cast(self._acc(tokens[1:], self.data.frac) + self._acc(pos[1:], fw), fa)
        return np.concatenate([first[None], rest])


class KernelEmulator:
    """Runs kernel.json: the residual stream, its layer norm and a layer's on-chip tensors as
    numpy arrays, each call as the kernel's units compute it."""

    def __init__(self, plan: dict, weights: np.ndarray,
                 types: dict[str, FixedType] | None = None, raw: bool = False) -> None:
        """`weights` are float values, or with `raw` the weight_t codes themselves."""
        self.plan = plan
        self.ops = FixedArithmetic(types) if types else FloatArithmetic()
        self.weights = weights if raw else self.ops.weight_in(np.asarray(weights, np.float32))

    @classmethod
    def from_project(cls, project: str | Path) -> KernelEmulator:
        project = Path(project)
        plan = json.loads((project / "kernel.json").read_text())
        manifest = json.loads((project / "project.json").read_text())
        weights = np.fromfile(project / "weights" / "weights_f32.bin", dtype=np.float32)
        types = None
        if manifest.get("precision") == "fixed":
            types = {name: FixedType.from_json(spec) for name, spec in manifest["types"].items()}
        return cls(plan, weights, types)

    def run(self, image: np.ndarray, task: int, observer: Observer | None = None) -> np.ndarray:
        """Features (float32, flat) for one image and task; `observer` sees every result."""
        state = _State(self, self.ops.data_in(np.asarray(image).reshape(-1)), task, observer)
        for call in self.plan["calls"]:
            OPS[call["op"]](state, call)
        return self.ops.data_out(state.features).astype(np.float32).reshape(-1)

    def run_many(self, samples: list[tuple[np.ndarray, int]],
                 observers: list[Observer] | None = None) -> list[np.ndarray]:
        """`run` on (image, task) pairs; `observers[i]` sees run i."""
        observers = observers or [None] * len(samples)
        # numpy releases the GIL in its array loops, so runs overlap on several cores.
        workers = min(len(samples), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            runs = [pool.submit(self.run, image, task, observer)
                    for (image, task), observer in zip(samples, observers, strict=True)]
            return [run.result() for run in runs]


class _State:
    """What the kernel holds on chip between calls."""

    def __init__(self, emulator: KernelEmulator, image, task, observer) -> None:
        self.ops, self.weights = emulator.ops, emulator.weights
        self.image, self.task, self.observer = image, task, observer
        self.residual = self.normalised = self.qkv = self.attention = self.hidden = None
        self.features = None
        self.queues: list[np.ndarray] = []
        self.scores: np.ndarray | None = None

    def weight(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        return self.weights[offset:offset + int(np.prod(shape))].reshape(shape)

    def source(self, name: str) -> np.ndarray:
        return {"normalised": self.normalised, "attention": self.attention,
                "hidden": self.hidden}[name]

    def narrowed(self, call: dict, values: np.ndarray) -> np.ndarray:
        """A layer's results rounded to its `result` type, as its epilogue does."""
        if "narrow" not in call:
            return values
        return self.ops.narrow(values, FixedType.from_json(call["narrow"]))

    def mac_input(self, call: dict, values: np.ndarray, key: str = "x") -> np.ndarray:
        """An 8-bit layer's operand rows: rounded to its 8-bit type as the array's feed does
        (its raw data_t code then has zero low bits: the 8-bit code shifted up)."""
        if "mac8" not in call or not self.ops.fixed:
            return values
        return self.ops.narrow(values, FixedType.from_json(call["mac8"][key]))

    def observe(self, call: dict, what: str, values: np.ndarray) -> None:
        if self.observer is not None:
            self.observer(call, what, np.asarray(values).reshape(-1))


def _embed(state: _State, c: dict) -> None:
    channels, height, width, patch, dim = (c[k] for k in ("channels", "height", "width",
                                                          "patch", "dim"))
    image = state.image.reshape(channels, height // patch, patch, width // patch, patch)
    patches = image.transpose(1, 3, 0, 2, 4).reshape(-1, channels * patch * patch)
    projected = state.ops.linear(patches, state.weight(c["w"], (patches.shape[1], dim)),
                                 state.weight(c["b"], (dim,)), "none")
    tokens = np.concatenate([np.zeros((1, dim), projected.dtype), projected])
    state.residual = state.ops.finish_embedding(tokens, state.weight(c["cls"], (dim,)),
                                                state.weight(c["pos"], (c["tokens"], dim)))
    state.observe(c, "output", state.residual)


def _layernorm(state: _State, c: dict) -> None:
    dim = c["dim"]
    state.normalised = state.ops.layernorm(state.residual, state.weight(c["gamma"], (dim,)),
                                           state.weight(c["beta"], (dim,)), c["epsilon"])
    state.observe(c, "output", state.normalised)


def _qkv(state: _State, c: dict) -> None:
    k, m = c["in_dim"], c["out_dim"]
    qkv = state.ops.linear(state.mac_input(c, state.normalised), state.weight(c["w"], (k, m)),
                           state.weight(c["b"], (m,)), "none")
    state.qkv = state.narrowed(c, qkv)
    state.observe(c, "output", state.qkv)


def _attention(state: _State, c: dict) -> None:
    n, heads, hd = c["tokens"], c["heads"], c["head_dim"]
    qkv = state.qkv.reshape(n, 3, heads, hd)
    probs8 = FixedType.from_json(c["mac8"]["x2"]) if "mac8" in c and state.ops.fixed else None
    out = np.concatenate([state.ops.attention_head(qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h],
                                                   c["scale"], *([probs8] if probs8 else []))
                          for h in range(heads)], axis=1)
    state.attention = state.narrowed(c, out)
    state.observe(c, "output", state.attention)


def _linear(state: _State, c: dict) -> None:
    k, m = c["in_dim"], c["out_dim"]
    y = state.narrowed(c, state.ops.linear(state.mac_input(c, state.source(c["source"])),
                                           state.weight(c["w"], (k, m)),
                                           state.weight(c["b"], (m,)), c["activation"]))
    state.observe(c, "output", y)
    if c["target"] == "hidden":
        state.hidden = y
    else:
        state.residual = state.ops.add(state.residual, y)
        state.observe(c, "residual", state.residual)


def _route(state: _State, c: dict) -> None:
    n, dim, experts, top_k = c["tokens"], c["dim"], c["experts"], c["top_k"]
    w_row = min(state.task, c["weight_rows"] - 1)
    b_row = min(state.task, c["bias_rows"] - 1)
    w = state.weight(c["router_w"] + w_row * dim * experts, (dim, experts))
    b = state.weight(c["router_b"] + b_row * experts, (experts,))
    probs = state.ops.route_probs(state.normalised, w, b)
    chosen = np.zeros(probs.shape, bool)
    for _ in range(top_k):  # the highest untaken probability, ties to the lower expert
        masked = np.where(chosen, -np.inf, probs.astype(np.float64))
        chosen[np.arange(n), masked.argmax(axis=1)] = True
    if c.get("renormalise"):  # Mixtral / DeepSeek: the chosen probabilities sum to one
        probs = state.ops.renormalise(probs, chosen)
    state.queues = [np.flatnonzero(chosen[:, e]) for e in range(experts)]
    state.scores = probs
    state.observe(c, "queue_lengths", np.array([len(q) for q in state.queues]))


def _experts(state: _State, c: dict) -> None:
    """Experts in index order; each adds its gate-scaled results straight into the residual
    rows of its tokens (the scatter-add is the array's epilogue)."""
    dim, hidden, experts = c["dim"], c["hidden"], c["experts"]
    w1 = state.weight(c["w1"], (experts, dim, hidden))
    b1 = state.weight(c["b1"], (experts, hidden))
    w2 = state.weight(c["w2"], (experts, hidden, dim))
    b2 = state.weight(c["b2"], (experts, dim))
    residual = state.residual.copy()
    for expert, tokens in enumerate(state.queues):
        if tokens.size == 0:
            continue
        hidden_rows = state.ops.linear(state.mac_input(c, state.normalised[tokens]), w1[expert],
                                       b1[expert], c["activation"])
        state.observe(c, "hidden", hidden_rows)
        result = state.narrowed(c, state.ops.linear(state.mac_input(c, hidden_rows, "x2"),
                                                    w2[expert], b2[expert], "none"))
        state.observe(c, "expert_output", result)
        residual[tokens] = state.ops.scatter_add(residual[tokens],
                                                 state.scores[tokens, expert], result)
    state.residual = residual
    state.observe(c, "residual", state.residual)


def _features(state: _State, c: dict) -> None:
    state.features = state.residual if c["source"] == "residual" else state.normalised


OPS = {"embed": _embed, "layernorm": _layernorm, "qkv": _qkv, "attention": _attention,
        "linear": _linear, "route": _route, "experts": _experts, "features": _features}
