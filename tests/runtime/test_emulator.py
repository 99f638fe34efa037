"""The emulator's float64 fast paths against its cast-for-cast int64 paths.

The int64 paths mirror the C++ kernel cast for cast (tests/project/test_fixed.py holds them to the
C-simulation); the fast paths hold raw integers in float64 and skip casts that the operands'
magnitudes prove to be no-ops. Here both run on the same operands, for type sets where the fast
path applies and ones where a bound forces it back, with operands at the types' extremes.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from m3c.hw.precision import choose_types, quantize_blob
from m3c.runtime import emulator
from m3c.runtime.emulator import FixedArithmetic
from m3c.runtime.fixed import FixedType

CAPACITIES = {"max_in": 768, "max_dim": 384, "max_tokens": 197, "max_expert_hidden": 1536}
TYPE_SETS = {
    "default": {},
    "narrow logits": {"logit": "ap_fixed<20,10,AP_RND_CONV,AP_SAT>"},
    "wide data": {"data": "ap_fixed<25,6,AP_RND_CONV,AP_SAT>"},
    "truncating data": {"data": "ap_fixed<12,4,AP_TRN,AP_SAT>"},
}


# Where runtime/fused.py's casts meet each rounding and overflow mode.
FUSED_TYPE_SETS = {**TYPE_SETS,
                   "wrapping data": {"data": "ap_fixed<16,4,AP_RND_CONV,AP_WRAP>"},
                   "truncating logits": {"logit": "ap_fixed<32,16,AP_TRN,AP_SAT>"}}


def _ops(overrides: dict) -> FixedArithmetic:
    plan = {"capacities": CAPACITIES}
    weights = np.array([1.5])
    return FixedArithmetic(choose_types(plan, weights, 6.0, {"types": overrides}))


def _raw(rng, kind: FixedType, shape, spread: float) -> np.ndarray:
    """Raw codes of `kind`: most within `spread` of its range, some at its two extremes."""
    limit = max(1, int(kind.raw_max * spread))
    raw = rng.integers(-limit, limit + 1, shape, dtype=np.int64)
    corners = rng.random(shape) < 0.02
    raw[corners] = rng.choice([kind.raw_min, kind.raw_max, 0, 1, -1], int(corners.sum()))
    return raw


@pytest.mark.parametrize("name", sorted(TYPE_SETS))
@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_tanh"])
def test_linear_fast_path_equals_the_exact_path(name, activation):
    ops, rng = _ops(TYPE_SETS[name]), np.random.default_rng(1)
    for spread in (1.0, 0.05, 0.002):
        x = _raw(rng, ops.data, (37, 96), spread)
        w = _raw(rng, ops.weight, (96, 53), spread).astype(np.int32)
        b = _raw(rng, ops.weight, (53,), spread).astype(np.int32)
        np.testing.assert_array_equal(ops.linear(x, w, b, activation),
                                      ops.exact_linear(x, w, b, activation))


@pytest.mark.parametrize("name", sorted(TYPE_SETS))
@pytest.mark.parametrize("probs8", [None, FixedType(8, 1, False, "AP_RND_CONV", "AP_SAT")])
def test_attention_fast_path_equals_the_exact_path(name, probs8):
    """Also with the softmax numerators rounded to 8 bits (an 8-bit attention layer)."""
    ops, rng = _ops(TYPE_SETS[name]), np.random.default_rng(2)
    for spread in (1.0, 0.1, 0.01, 0.0005):
        q, k, v = (_raw(rng, ops.data, (301, 32), spread) for _ in range(3))
        for scale in (32 ** -0.5, 1.0):
            code = int(ops.norm.from_float(np.float32(scale)))
            np.testing.assert_array_equal(ops.attention_head(q, k, v, scale, probs8),
                                          ops.exact_attention_head(q, k, v, code, probs8))


def test_the_fast_paths_run_where_they_should():
    """The default types take the float64 paths; with 25-bit data a q.k partial sum can pass
    2^53, so attention falls back to int64."""
    rng = np.random.default_rng(3)
    default, wide = _ops({}), _ops(TYPE_SETS["wide data"])
    q = _raw(rng, default.data, (50, 32), 1.0)
    assert default._float_attention(q, q, q, 1 << default.norm.frac) is not None
    q = _raw(rng, wide.data, (50, 32), 1.0)
    assert wide._float_attention(q, q, q, 1 << wide.norm.frac) is None


@pytest.mark.parametrize("spelling", ["ap_fixed<16,2,AP_RND_CONV,AP_SAT>",
                                      "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
                                      "ap_fixed<24,3,AP_RND_CONV,AP_SAT>",
                                      "ap_ufixed<12,2,AP_RND_CONV,AP_SAT>",
                                      "ap_fixed<16,2,AP_TRN,AP_WRAP>"])
def test_the_float32_weight_quantisation_equals_from_float(spelling):
    """Ties, the saturation points, huge values and signed zeros included."""
    kind = FixedType.parse(spelling)
    rng = np.random.default_rng(4)
    step = 2.0 ** -kind.frac
    ties = (np.arange(-40, 40) + 0.5) * step
    corners = [kind.raw_max * step, kind.raw_min * step, (kind.raw_max + 0.5) * step,
               (kind.raw_min - 0.5) * step, 1e30, -1e30, 0.0, -0.0]
    values = np.concatenate([rng.standard_normal(20000) * 2.0 ** (kind.width - kind.frac - 2),
                             ties, corners]).astype(np.float32)
    np.testing.assert_array_equal(quantize_blob(values, {}, {}, kind, {}),
                                  kind.from_float(values))


KERNELS = ("softmax_numerators", "linear_epilogue", "linear_gelu_epilogue", "centred_squares",
           "layernorm_rows")  # what the emulator calls in fused.py


def _counting(loops, calls: dict):
    """fused.py's `KERNELS` with each call counted in `calls` by name."""
    def counted(name):
        def call(*args):
            calls[name] = calls.get(name, 0) + 1
            return getattr(loops, name)(*args)
        return call
    return SimpleNamespace(**{name: counted(name) for name in KERNELS})


@pytest.mark.skipif(emulator.fused_loops() is None, reason="numba is not installed")
@pytest.mark.parametrize("name", sorted(FUSED_TYPE_SETS))
def test_the_compiled_loops_equal_the_numpy_passes(name, monkeypatch):
    """linear (every activation), attention (also with 8-bit numerators) and layer norm with
    runtime/fused.py's loops and without them, on the same operands at the types' extremes."""
    ops, rng = _ops(FUSED_TYPE_SETS[name]), np.random.default_rng(5)
    probs8 = FixedType(8, 1, False, "AP_RND_CONV", "AP_SAT")
    operands = []
    for spread in (1.0, 0.05, 0.002):
        x = _raw(rng, ops.data, (37, 96), spread)
        w = _raw(rng, ops.weight, (96, 53), spread).astype(np.int32)
        gamma, beta = (_raw(rng, ops.weight, (96,), spread).astype(np.int32) for _ in range(2))
        q, k, v = (_raw(rng, ops.data, (301, 32), spread) for _ in range(3))
        operands.append((x, w, gamma, beta, q, k, v))

    def results():
        out = []
        for x, w, gamma, beta, q, k, v in operands:
            out += [ops.linear(x, w, gamma[:53], activation)
                    for activation in ("none", "relu", "gelu", "gelu_tanh")]
            out += [ops.attention_head(q, k, v, 32 ** -0.5, p) for p in (None, probs8)]
            out.append(ops.layernorm(x, gamma, beta, 1e-6))
        return out

    calls: dict[str, int] = {}
    loops = emulator.fused_loops()
    monkeypatch.setattr(emulator, "fused_loops", lambda: _counting(loops, calls))
    compiled = results()
    monkeypatch.setattr(emulator, "fused_loops", lambda: None)
    for got, expected in zip(compiled, results(), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert calls.get("layernorm_rows")  # every type set has a compiled layer norm
    if name == "default":  # and there every loop runs
        assert set(calls) == set(KERNELS)
