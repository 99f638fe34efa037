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
