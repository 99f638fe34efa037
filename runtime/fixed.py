"""ap_fixed arithmetic in numpy, bit for bit as the Xilinx ap_types headers compute it.

A fixed-point value is carried as its raw two's-complement integer (int64) plus the type that
says where the binary point is. Only what the kernel uses is modelled: the quantization modes
AP_TRN (floor) and AP_RND_CONV (round half to even), the overflow modes AP_WRAP and AP_SAT, and
conversion from double. Products are exact in int64 because the kernel never multiplies operands
wider than 32 bits; sums are exact because accumulators are sized so no term is rounded.

Numpy only: this module also ships inside generated projects (host/m3c_runtime).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

_SPELLING = re.compile(
    r"^ap_(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*(AP_\w+)\s*)?(?:,\s*(AP_\w+)\s*)?>$")
QUANT_MODES = ("AP_TRN", "AP_RND_CONV")
OVERFLOW_MODES = ("AP_WRAP", "AP_SAT")


@dataclass(frozen=True)
class FixedType:
    """ap_fixed<width, integer, quant, overflow> (or ap_ufixed when not signed)."""

    width: int
    integer: int
    signed: bool = True
    quant: str = "AP_TRN"
    overflow: str = "AP_WRAP"

    def __post_init__(self) -> None:
        if not 1 <= self.width <= 64 or self.quant not in QUANT_MODES or (
                self.overflow not in OVERFLOW_MODES):
            raise ValueError(f"unsupported fixed-point type {self.cpp()}")

    @property
    def frac(self) -> int:
        return self.width - self.integer

    @property
    def raw_min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        return (1 << (self.width - (1 if self.signed else 0))) - 1

    @property
    def spec(self) -> np.ndarray:
        """(round half to even?, saturate?, raw_min, raw_max, width) as int64, for the
        compiled casts of runtime/fused.py (which know only these two modes' alternatives:
        truncation and wrap-around)."""
        return np.array([self.quant == "AP_RND_CONV", self.overflow == "AP_SAT", self.raw_min,
                         self.raw_max, self.width], dtype=np.int64)

    @property
    def magnitude(self) -> float:
        """The largest magnitude of a raw code (a float: it bounds float64 sums)."""
        return float(max(-self.raw_min, self.raw_max))

    def cpp(self) -> str:
        base = "ap_fixed" if self.signed else "ap_ufixed"
        return f"{base}<{self.width}, {self.integer}, {self.quant}, {self.overflow}>"

    def to_json(self) -> dict:
        return {"cpp": self.cpp(), "width": self.width, "integer": self.integer,
                "frac": self.frac, "signed": self.signed, "quant": self.quant,
                "overflow": self.overflow}

    @classmethod
    def from_json(cls, data: dict) -> FixedType:
        return cls(data["width"], data["integer"], data["signed"], data["quant"],
                   data["overflow"])

    @classmethod
    def parse(cls, spelling: str, quant: str = "AP_TRN", overflow: str = "AP_WRAP") -> FixedType:
        """'ap_fixed<16,6>' or 'ap_ufixed<18,1,AP_RND_CONV,AP_SAT>' (modes default as given)."""
        match = _SPELLING.match(spelling.replace(" ", ""))
        if match is None:
            raise ValueError(f"{spelling!r} is not an ap_fixed<W,I[,Q[,O]]> type")
        unsigned, width, integer, q, o = match.groups()
        return cls(int(width), int(integer), not unsigned, q or quant, o or overflow)

    # -- conversions, all returning raw integers in this type ------------------------------

    def overflowed(self, raw: np.ndarray) -> np.ndarray:
        """Overflow handling of this type; works in place on int64 arrays it is given."""
        raw = np.asarray(raw, dtype=np.int64)
        if self.overflow == "AP_SAT":
            np.minimum(raw, self.raw_max, out=raw)
            return np.maximum(raw, self.raw_min, out=raw)
        # Two's complement wrap: shift the range to start at 0, keep the low bits, shift back.
        offset = -self.raw_min
        raw += offset
        raw &= (1 << self.width) - 1
        raw -= offset
        return raw

    def cast(self, raw: np.ndarray, frac: int) -> np.ndarray:
        """Raw values with `frac` fractional bits, converted into this type (a new array)."""
        raw = np.asarray(raw, dtype=np.int64)
        shift = frac - self.frac
        if shift <= 0:
            return self.overflowed(raw << -shift)
        if self.quant == "AP_RND_CONV":
            # Round half to even: add half (less one), plus one more when the floor is odd.
            rounded = raw >> shift
            rounded &= 1
            rounded += raw
            rounded += (1 << (shift - 1)) - 1
            rounded >>= shift
            return self.overflowed(rounded)
        return self.overflowed(raw >> shift)

    def cast_float(self, raw: np.ndarray, frac: int, bound: float | None = None) -> np.ndarray:
        """`cast` on raw integers held in float64 (each below 2^53), in place: scaling by a
        power of two is exact there, so one pass replaces cast's shifts and masks. `bound`
        bounds the magnitudes given (see round_float)."""
        scale = 2.0 ** (self.frac - frac)
        if scale != 1.0:
            raw *= scale
        bound = None if bound is None else bound * scale
        if frac > self.frac:
            return self.round_float(raw, bound)
        return self._overflowed_float(raw, bound)

    def round_float(self, scaled: np.ndarray, bound: float | None = None) -> np.ndarray:
        """Values in this type's raw units held in float64 (multiples of a power of two below
        2^53), rounded and overflowed into it in place: np.rint rounds half to even like
        AP_RND_CONV, np.floor truncates like AP_TRN. A `bound` on the magnitudes that this
        signed type holds skips the overflow handling."""
        (np.rint if self.quant == "AP_RND_CONV" else np.floor)(scaled, out=scaled)
        return self._overflowed_float(scaled, bound)

    def _overflowed_float(self, raw: np.ndarray, bound: float | None) -> np.ndarray:
        if bound is not None and self.signed and bound < self.raw_max:
            return raw
        if self.overflow == "AP_SAT":
            return np.clip(raw, self.raw_min, self.raw_max, out=raw)
        if raw.size and (raw.min() < self.raw_min or raw.max() > self.raw_max):
            raw[...] = self.overflowed(raw.astype(np.int64))
        return raw

    def from_float(self, values: np.ndarray) -> np.ndarray:
        """ap_fixed(double): the exact value, quantized and overflowed by this type's modes."""
        scaled = np.ldexp(np.asarray(values, dtype=np.float64), self.frac)
        if self.quant == "AP_RND_CONV":
            rounded = np.rint(scaled)
        else:
            rounded = np.floor(scaled)
        limit = float(1 << 62)
        return self.overflowed(np.clip(rounded, -limit, limit).astype(np.int64))

    def to_float(self, raw: np.ndarray) -> np.ndarray:
        return np.ldexp(np.asarray(raw, dtype=np.float64), -self.frac)


# -- tables for the nonlinear functions, shared by the HLS header and the emulator ------------

EXP_TABLE_BITS = 10  # 2^(i/1024): relative error of the fractional step below 0.07 %
GELU_RANGE = 8  # |x| >= 8: GELU(x) is x or 0 to within 1e-14


def exp2_table(prob: FixedType) -> np.ndarray:
    """Raw prob values of 2^(i / 2^EXP_TABLE_BITS) for i in [0, 2^EXP_TABLE_BITS)."""
    steps = np.arange(1 << EXP_TABLE_BITS, dtype=np.float64)
    return prob.from_float(np.exp2(steps / (1 << EXP_TABLE_BITS)))


def gelu_step_bits(data: FixedType) -> int:
    return min(data.frac, 8)


def gelu_table(data: FixedType, prob: FixedType, kind: str) -> np.ndarray:
    """Raw prob values of g(x) with GELU(x) = x * g(x), x on the data grid's table steps."""
    bits = gelu_step_bits(data)
    x = np.arange(-GELU_RANGE << bits, GELU_RANGE << bits, dtype=np.float64) / (1 << bits)
    if kind == "gelu":
        factor = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    else:
        factor = 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return prob.from_float(factor)


def lookup_tables(data: FixedType, prob: FixedType) -> dict[str, np.ndarray]:
    """Raw prob codes of every table the kernel holds, by name (an activation's own name for
    its GELU factor table), shared by the HLS header and the emulator."""
    return {"exp2": exp2_table(prob), "gelu": gelu_table(data, prob, "gelu"),
            "gelu_tanh": gelu_table(data, prob, "gelu_tanh")}


# -- reciprocal and reciprocal square root in integer arithmetic ------------------------------
# A positive value is normalised to a mantissa m (in [1, 2) for 1/x, [1, 4) for 1/sqrt(x)) and
# a power of two; a table seeds 1/m at the centre of m's step, two Newton steps refine it (each
# squares the relative error: 2^-9 -> 2^-17 -> below 2^-24), the power of two becomes a shift.
# Every product stays below 2^62, so int64 (numpy here, `long long` in the kernel) computes the
# same bits on both sides.

RECIP_TABLE_BITS = 8  # mantissa steps of 1/256
SEED_FRAC = 16  # fractional bits of the table entries
MANTISSA_FRAC = 28  # fractional bits of the normalised mantissa
NEWTON_FRAC = 30  # the Newton steps' intermediate products, truncated to these bits
RESULT_FRAC = 24  # the refined 1/m or 1/sqrt(m)
NEWTON_STEPS = 2


def recip_table() -> np.ndarray:
    """2^SEED_FRAC / m at the centre of each mantissa step of m in [1, 2)."""
    m = 1.0 + (np.arange(1 << RECIP_TABLE_BITS) + 0.5) / (1 << RECIP_TABLE_BITS)
    return np.rint(np.ldexp(1.0 / m, SEED_FRAC)).astype(np.int64)


def rsqrt_table() -> np.ndarray:
    """2^SEED_FRAC / sqrt(m) at the centre of each mantissa step of m in [1, 4)."""
    m = 1.0 + (np.arange(3 << RECIP_TABLE_BITS) + 0.5) / (1 << RECIP_TABLE_BITS)
    return np.rint(np.ldexp(1.0 / np.sqrt(m), SEED_FRAC)).astype(np.int64)


def floor_log2(x: np.ndarray) -> np.ndarray:
    """floor(log2 x) of positive int64 values, exact (float64 may round large x up)."""
    x = np.asarray(x, dtype=np.int64)
    bits = np.frexp(x.astype(np.float64))[1].astype(np.int64) - 1
    return np.where(np.left_shift(np.int64(1), bits) > x, bits - 1, bits)


def _shifted(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """x * 2^shift, truncated (the mantissa's shifts never overflow)."""
    return np.where(shift >= 0, np.left_shift(x, np.maximum(shift, 0)),
                    np.right_shift(x, np.minimum(np.maximum(-shift, 0), 63)))


def _to_result(y: np.ndarray, shift: np.ndarray, out: FixedType) -> np.ndarray:
    """y * 2^shift as raw bits of `out`, truncated, saturating at its largest value."""
    up = np.minimum(np.maximum(shift, 0), 38)
    too_big = (shift > 38) | (y > np.right_shift(np.int64(out.raw_max), up))
    scaled = np.where(shift >= 0, np.left_shift(y, up),
                      np.right_shift(y, np.minimum(np.maximum(-shift, 0), 63)))
    return np.where(too_big, np.int64(out.raw_max), scaled)


def _seed(table: np.ndarray, m: np.ndarray) -> np.ndarray:
    index = np.right_shift(m, MANTISSA_FRAC - RECIP_TABLE_BITS) - (1 << RECIP_TABLE_BITS)
    return np.left_shift(table[index], RESULT_FRAC - SEED_FRAC)


def reciprocal(x: np.ndarray, frac: int, out: FixedType) -> np.ndarray:
    """Raw `out` bits of 1 / (x 2^-frac) for raw x >= 1 (m3c::reciprocal_raw)."""
    x = np.maximum(np.asarray(x, dtype=np.int64), 1)
    exponent = floor_log2(x) - frac
    m = _shifted(x, MANTISSA_FRAC - frac - exponent)
    z = _seed(recip_table(), m)
    for _ in range(NEWTON_STEPS):  # z (2 - m z)
        product = np.right_shift(m * z, MANTISSA_FRAC + RESULT_FRAC - NEWTON_FRAC)
        z = np.right_shift(((2 << NEWTON_FRAC) - product) * z, NEWTON_FRAC)
    return _to_result(z, out.frac - RESULT_FRAC - exponent, out)


def reciprocal_sqrt(x: np.ndarray, frac: int, out: FixedType) -> np.ndarray:
    """Raw `out` bits of 1 / sqrt(x 2^-frac) for raw x >= 1 (m3c::rsqrt_raw)."""
    x = np.maximum(np.asarray(x, dtype=np.int64), 1)
    exponent = floor_log2(x) - frac
    even = exponent - (exponent & 1)
    m = _shifted(x, MANTISSA_FRAC - frac - even)
    y = _seed(rsqrt_table(), m)
    for _ in range(NEWTON_STEPS):  # y (3 - m y^2) / 2
        square = np.right_shift(y * y, 2 * RESULT_FRAC - NEWTON_FRAC)
        product = np.right_shift(m * square, MANTISSA_FRAC)
        y = np.right_shift(((3 << NEWTON_FRAC) - product) * y, NEWTON_FRAC + 1)
    return _to_result(y, out.frac - RESULT_FRAC - even // 2, out)


def rounded_quotient(numerator: np.ndarray, divisor: int) -> np.ndarray:
    """numerator / divisor rounded half to even (divisor > 0), as m3c::rounded_quotient."""
    numerator = np.asarray(numerator, dtype=np.int64)
    magnitude = np.abs(numerator)
    quotient, remainder = np.divmod(magnitude, divisor)
    up = (2 * remainder > divisor) | ((2 * remainder == divisor) & (quotient & 1 == 1))
    quotient = quotient + up
    return np.where(numerator < 0, -quotient, quotient)


PACK_SHIFT = 18  # the low product's field of a packed DSP48E2 multiply (WP486)


def packed_products(x: np.ndarray, hi: np.ndarray, lo: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(x hi, x lo) for 8-bit operands from one multiply of x by hi 2^18 + lo, separated as
    the DSP output is (m3c::packed_products): the low field read as signed, the high part
    shifted down plus the low field's sign bit (the borrow a negative low product took)."""
    x, hi, lo = (np.asarray(v, dtype=np.int64) for v in (x, hi, lo))
    product = ((hi << PACK_SHIFT) + lo) * x
    sign = (product >> (PACK_SHIFT - 1)) & 1
    low = (product & ((1 << PACK_SHIFT) - 1)) - (sign << PACK_SHIFT)
    return (product >> PACK_SHIFT) + sign, low
