"""The fixed-point emulator's hottest element-wise passes as single loops, compiled by numba.

Each kernel equals the numpy passes it replaces in FixedArithmetic bit for bit: the same IEEE
operations on the same float64 values, in the same order (tests/runtime/test_emulator.py compares
them in every rounding and overflow mode). The emulator imports this module only where numba is
installed (a board's host may have numpy alone) and runs its numpy passes elsewhere. Compiled on
first use and cached on disk beside this file (numba's cache), so a machine pays numba's compile
time once.
"""

from __future__ import annotations

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True, boundscheck=False)


@jit
def rounded(value, nearest, low, high):
    """FixedType.round_float on one value of a saturating type: half to even (np.rint) or
    floor, then clamped (min/max clamps keep the loops vectorised)."""
    value = np.rint(value) if nearest else np.floor(value)
    return min(max(value, low), high)


@jit
def softmax_numerators(dots, scale, log2e, last, nearest, low, high, table, totals):
    """FixedArithmetic._softmax_numerators in place: `dots` (logit_t dot products before
    rounding) become the rows' exp weights (`table` by index), `totals` their sums.
    `scale`, `log2e`: the folded multipliers of the scaling and of the exp index; `last`:
    len(table) - 1; `nearest`, `low`, `high`: logit_t's rounding and saturation."""
    for r in range(dots.shape[0]):
        row = dots[r]
        # Integers below 2^53 compare as int64 exactly, and an int64 max vectorises.
        top = np.int64(-(2**62))
        for j in range(row.shape[0]):
            score = rounded(rounded(row[j], nearest, low, high) * scale, nearest, low, high)
            row[j] = score
            top = max(top, np.int64(score))
        # max(score x log2e) = max(score) x log2e: rounding a product is monotonic.
        offset = np.float64(top) * log2e - last
        # The table holds integers: their sum is exact in any order, so it runs in int64.
        total = np.int64(0)
        for j in range(row.shape[0]):
            index = np.int64(row[j] * log2e - offset)  # truncated, as numpy's astype
            index = min(max(index, 0), np.int64(last))
            row[j] = table[index]
            total += np.int64(table[index])
        totals[r] = total


@jit
def linear_epilogue(products, bias, scale, nearest, low, high, out):
    """FixedArithmetic.linear's fast path without activation: data_t((x @ w + b) scale)."""
    for i in range(products.shape[0]):
        for j in range(products.shape[1]):
            out[i, j] = np.int64(rounded((products[i, j] + bias[j]) * scale, nearest, low,
                                         high))


@jit
def linear_gelu_epilogue(products, bias, scale, nearest, low, high, step, start, factors,
                         out):
    """linear_epilogue, then FixedArithmetic._float_gelu: x times its table factor, the
    table indexed by x step + start (truncated, clamped into the table)."""
    last = factors.shape[0] - 1
    for i in range(products.shape[0]):
        for j in range(products.shape[1]):
            x = rounded((products[i, j] + bias[j]) * scale, nearest, low, high)
            index = min(max(np.int64(x * step + start), 0), last)
            out[i, j] = np.int64(rounded(x * factors[index], nearest, low, high))


@jit
def cast(raw, shift, kind):
    """FixedType.cast of one raw code with `shift` fractional bits more than the type:
    `kind` = (round half to even?, saturate?, raw_min, raw_max, width), see FixedType.spec."""
    nearest, saturate, low, high, width = kind[0], kind[1], kind[2], kind[3], kind[4]
    if shift <= 0:
        value = raw << -shift
    elif nearest:
        value = (raw + ((raw >> shift) & 1) + (np.int64(1) << (shift - 1)) - 1) >> shift
    else:
        value = raw >> shift
    if saturate:
        return min(max(value, low), high)
    return ((value - low) & ((np.int64(1) << width) - 1)) + low


@jit
def centred_squares(x, mean, squares):
    """Per row, the sum of (x - mean)^2 (int64, exact: var_t's sum)."""
    for r in range(x.shape[0]):
        total = np.int64(0)
        for j in range(x.shape[1]):
            centred = x[r, j] - mean[r]
            total += centred * centred
        squares[r] = total


@jit
def layernorm_rows(x, mean, inv_std, gamma, beta, shifts, data, acc, out):
    """FixedArithmetic.layernorm after its statistics: data_t((x - mean) inv_std) times
    gamma in acc_t, plus beta (already in acc_t), back into data_t. `shifts`: the three
    casts' shifts; `data`, `acc`: the types' FixedType.spec."""
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            normed = cast((x[r, j] - mean[r]) * inv_std[r], shifts[0], data)
            scaled = cast(normed * gamma[j], shifts[1], acc)
            out[r, j] = cast(scaled + beta[j], shifts[2], data)

