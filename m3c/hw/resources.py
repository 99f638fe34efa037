"""FPGA resources and how arrays are bound to storage.

Resources (UltraScale+):
- the array: TK x TM MACs, one DSP48E2 each for operands up to 27 x 18 bits (`MAC_DSP_FLOAT` =
  5 in fp32); sums wider than the DSP's 48-bit accumulator add a fabric adder per MAC; the two
  panel register sets (shadow and current) are flip-flops. A packed array (capacities
  "packed": some layers are 8-bit) has TK x TM / 2 DSPs, each two 8-bit products per cycle
  (WP486) or one 16-bit product: 8-bit layers run one pass per panel with half the panel's
  DDR words, 16-bit layers two passes (m3c/hw/units/base.py);
- the multipliers beside the array (the layer norm applied as rows are read, the epilogue's
  scale, softmax normalisation, gate and GELU, the exponentials' x log2(e), the router's, the
  Newton steps), each in a bind_op group (`MULTIPLIER_GROUPS`): in fabric they cost about
  `FABRIC_LUT_PER_BIT2` LUTs per product bit pair; a group the design binds to DSPs (when
  its array leaves DSPs free: a packed int8 array) costs `dsp_tiles` DSPs a multiplier;
- every array is bound (bind_storage) to registers (a word per bank), LUTRAM (banks up to
  `REGISTER_MAX_BITS`), URAM (the largest banks from `URAM_MIN_BITS` while the URAMs within
  the caps last) or BRAM18 in their cheapest aspect ratio; lookup tables read several times
  per cycle are counted once per two readers (dual-ported ROM copies) at the width the code
  declares them;
- the logic the code's structure implies (m3c/hw/units/shared.py counts it for the array): a
  multiplexer of N inputs costs N / 4 LUT6s per bit (a LUT6 is a 4:1 mux), an adder one LUT
  per bit; an m_axi bundle buffers its outstanding bursts in BRAM.

Caps: a design that uses a device to the last DSP or LUT does not place and route at its
clock. `CAPS` are the shares of each resource a placed design can meet (congestion and timing
closure on UltraScale+); `budget` scales them (1.0: the caps themselves). Board facts come from
the data sheet (DS891: the xczu7ev has 230,400 LUTs; 504K is its logic-cell count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from m3c.hw.target import Target

BRAM18_SHAPES = [(16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36)]


URAM_DEPTH = 4096


URAM_WIDTH = 72


URAM_MIN_BITS = 128 * 1024  # large banks go to URAM (bind_storage impl=uram)


REGISTER_MAX_BITS = 1024  # smaller banks go to LUTRAM


LUTRAM_BITS_PER_LUT = 32  # a dual-ported LUTRAM holds 32 bits per LUT6 (RAM32X1D-like)


FABRIC_LUT_PER_BIT2 = 0.55  # LUTs of a fabric multiplier per product of operand widths


UNIT_CONTROL = (600, 800)


MAXI_BUNDLE = (1600, 2600)  # an m_axi adapter's LUT and FF besides its buffer


# What a placed and routed design can use of each resource (`budget` scales these).
CAPS = {"dsp": 0.90, "lut": 0.70, "ff": 0.60, "bram18": 0.85, "uram": 0.85}


MUX_INPUTS_PER_LUT = 4  # an N:1 multiplexer: ceil(N / 4) LUT6s per bit


DSP_A_BITS, DSP_B_BITS = 27, 18  # a DSP48E2's multiplier operands (UG579)


def pack_mux_luts(wide_operands: bool) -> int:
    """LUTs of a packed DSP's operand multiplexers (2:1 or 3:1: one LUT6 a bit): its A port's
    (the packed pair or the pass's weight) and, when 16-bit operands take A, its B port's."""
    return DSP_A_BITS + (DSP_B_BITS if wide_operands else 0)


@dataclass
class Resources:
    dsp: int = 0
    lut: int = 0
    ff: int = 0
    bram18: int = 0
    uram: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(**{k: getattr(self, k) + getattr(other, k) for k in KINDS})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


KINDS = ("dsp", "lut", "ff", "bram18", "uram")


def capacity(target: Target) -> Resources:
    return Resources(dsp=target.dsp, lut=target.lut, ff=target.ff, bram18=2 * target.bram36,
                     uram=target.uram)


def limits(target: Target, budget: float = 1.0) -> Resources:
    """What a design may use: `budget` x the caps x the capacity."""
    available = capacity(target)
    return Resources(**{kind: math.floor(getattr(available, kind) * CAPS[kind] * budget)
                        for kind in KINDS})


@dataclass(frozen=True)
class Array:
    """An on-chip array of a unit: `banks` partitions of `depth` x `width` bits each."""

    unit: str
    name: str
    depth: int
    width: int
    banks: int = 1

    @property
    def bank_bits(self) -> int:
        return self.depth * self.width


@dataclass(frozen=True)
class Binding:
    array: Array
    storage: str  # "registers", "lutram", "bram18" or "uram"
    blocks: int  # flip-flops, LUTs, BRAM18s or URAMs, all banks together

    @property
    def impl(self) -> str:
        """The bind_storage `impl` the kernel declares for the array ("registers": none, the
        array is partitioned into scalars)."""
        return {"bram18": "bram"}.get(self.storage, self.storage)


def bram18_blocks(depth: int, width: int) -> int:
    """BRAM18s for one bank in its cheapest aspect ratio (16K x 1 ... 512 x 36)."""
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in BRAM18_SHAPES)


def uram_blocks(depth: int, width: int) -> int:
    return math.ceil(width / URAM_WIDTH) * math.ceil(depth / URAM_DEPTH)


def bind_memories(arrays: Sequence[Array], target: Target, budget: float = 1.0) -> list[Binding]:
    """Storage of every array. Banks of one word are registers; banks up to REGISTER_MAX_BITS
    are LUTRAM; from URAM_MIN_BITS up, the largest banks take URAM while the URAMs within
    `budget` x the caps last; the rest BRAM18."""
    uram_left = limits(target, budget).uram
    bindings = []
    for array in sorted(arrays, key=lambda a: (-a.bank_bits, a.unit, a.name)):
        if array.depth == 1:
            bindings.append(Binding(array, "registers", array.banks * array.bank_bits))
            continue
        if array.bank_bits <= REGISTER_MAX_BITS:
            luts = math.ceil(array.bank_bits / LUTRAM_BITS_PER_LUT)
            bindings.append(Binding(array, "lutram", array.banks * luts))
            continue
        urams = array.banks * uram_blocks(array.depth, array.width)
        if array.bank_bits >= URAM_MIN_BITS and urams <= uram_left:
            uram_left -= urams
            bindings.append(Binding(array, "uram", urams))
        else:
            bindings.append(Binding(array, "bram18",
                                    array.banks * bram18_blocks(array.depth, array.width)))
    return bindings


def multiplexers(bits: int, inputs: int) -> Resources:
    """`bits` outputs each choosing among `inputs` values at runtime."""
    return Resources(lut=bits * math.ceil(inputs / MUX_INPUTS_PER_LUT))


def adders(count: int, bits: int) -> Resources:
    """`count` two-input adders of `bits` bits in fabric, each registered."""
    return Resources(lut=count * bits, ff=count * bits)


def table_copies(readers: int, entries: int, bits: int) -> Resources:
    """A ROM read `readers` times per cycle: a dual-ported copy per two readers."""
    return Resources(bram18=math.ceil(readers / 2) * bram18_blocks(entries, bits))


def burst_buffer(outstanding: int, burst: int, port_bits: int) -> Resources:
    """An m_axi bundle's buffer: `outstanding` bursts of `burst` beats of the port's width."""
    return Resources(bram18=bram18_blocks(outstanding * burst, port_bits))


def fabric(count: int, a: int, b: int) -> Resources:
    return Resources(lut=math.ceil(count * a * b * FABRIC_LUT_PER_BIT2), ff=count * (a + b))


def dsp_tiles(a: int, b: int) -> int:
    """DSP48E2s of an a x b-bit multiplier: its operands split into 27 x 18-bit pieces (the
    DSP's A and B ports), the better way round."""
    return min(math.ceil(a / DSP_A_BITS) * math.ceil(b / DSP_B_BITS),
               math.ceil(b / DSP_A_BITS) * math.ceil(a / DSP_B_BITS))


# The kernel's multipliers beside the array, by the bind_op group the templates bind them in
# (`impl={{ mul_impl.<group> }}`): each group goes to the fabric or, when the array leaves
# DSPs free, to DSPs (Design.dsp_multipliers).
MULTIPLIER_GROUPS = ("norm_scale", "norm_gamma", "square", "scalar", "score_scale", "mix",
                     "gelu", "gate", "router", "exponent")


@dataclass(frozen=True)
class Multipliers:
    """`count` a x b-bit multipliers of one bind_op group (MULTIPLIER_GROUPS)."""

    group: str
    count: int
    a: int
    b: int

    def bound(self, dsp_groups: frozenset[str]) -> Resources:
        """Their resources, on DSPs if their group is among `dsp_groups`, else in fabric."""
        if self.group in dsp_groups:
            return Resources(dsp=self.count * dsp_tiles(self.a, self.b),
                             ff=self.count * (self.a + self.b))
        return fabric(self.count, self.a, self.b)


def control(units: int = 1) -> Resources:
    return Resources(lut=units * UNIT_CONTROL[0], ff=units * UNIT_CONTROL[1])


def total_resources(units: dict[str, Resources]) -> Resources:
    total = Resources()
    for resources in units.values():
        total = total + resources
    return total


def overflows(used: Resources, target: Target, budget: float = 1.0) -> list[dict]:
    """Rows (resource, used, available) for every resource above its limit (`limits`)."""
    allowed = limits(target, budget)
    rows = []
    for kind in KINDS:
        limit = getattr(allowed, kind)
        if getattr(used, kind) > limit:
            rows.append({"resource": kind, "used": getattr(used, kind), "available": limit})
    return rows
