"""What every hardware unit shares: the `Unit` interface, the MAC array's cost of a product
(`tile_cost`), a loop's cost, and the DDR packing of products and vectors.

Costs mirror the loops of the templates trip for trip: a product of a tile of rows is the
first panel's fill, then per (output, input) panel step max(rows, the next panel's fill,
min_span) array cycles, then the chain's drain (its last row's sums leave the array's column
chains chain - 1 cycles after it entered), all steps in one pipeline that pays the array's
depth once. The C-simulation
trace (m3c_trace.h) counts the same array cycles and DDR beats, and tests hold the two equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from m3c.errors import CodegenError
from m3c.hw.calls import Call
from m3c.hw.codegen import ACTIVATIONS
from m3c.hw.geometry import Geometry
from m3c.hw.memories import MEMORY_ARGS
from m3c.hw.resources import Array, Multipliers, Resources

MAC_DEPTH = 12  # cycles from a row's sums to its epilogue's write (assumed; Vitis tells)
LOOP_DEPTH = 8  # pipeline depth of the other loops
STATS_DEPTH = 48  # a layer norm row's divider and reciprocal square root
ROUTE_DEPTH = 48  # a token's softmax, reciprocal and top-k
BUNDLES = ("gmem_w", "gmem_in", "gmem_out")


@dataclass
class Cost:
    """Cycles of a call, the MAC array's issued cycles among them, and DDR beats per bundle."""

    cycles: int = 0
    array_cycles: int = 0
    beats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUNDLES, 0))

    def __iadd__(self, other: Cost) -> Cost:
        self.cycles += other.cycles
        self.array_cycles += other.array_cycles
        for bundle, beats in other.beats.items():
            self.beats[bundle] += beats
        return self

    def scaled(self, count: int) -> Cost:
        """The cost of `count` runs of this one (identical heads or tiles)."""
        return Cost(self.cycles * count, self.array_cycles * count,
                    {bundle: beats * count for bundle, beats in self.beats.items()})


def min_span(g: Geometry) -> int:
    """Array cycles a step's row loop runs at least: a row's sums are written back before the
    next step reads them (MAC_DEPTH), and a panel stays in place until the step's first row
    has passed the last stage of the column chains (matmul.h.j2 mac_row)."""
    return max(MAC_DEPTH, g.chain)


def drain(g: Geometry) -> int:
    """Array cycles after a tile's last row enters until its sums leave the column chains."""
    return g.chain - 1


def _fill(g: Geometry, panels: str, narrow: bool, groups: int) -> tuple[int, int]:
    """(items to fill a first-input-panel step, items for the other steps)."""
    if panels == "keys":
        return groups * g.tm, groups * g.tm
    if panels == "values":
        return g.tk, g.tk
    return g.bias_words + g.panel_words_of(narrow), g.panel_words_of(narrow)


def mac8(call: Call) -> bool:
    """Whether the call's products have 8-bit operands (two per DSP on a packed array)."""
    return call.mac8 is not None


def tile_cost(g: Geometry, rows: int, in_dim: int, out_cols: int, panels: str = "ddr",
              narrow: bool = False, groups: int = 1) -> Cost:
    """One product of `rows` (<= ROW_TILE) rows: matmul in matmul.h.j2 (a fresh copy of the
    memoised figure: callers add to it). `narrow`: 8-bit operands and panels; `groups`: key
    groups a scores step computes (score_groups)."""
    cost = _tile_cost(g, rows, in_dim, out_cols, panels, narrow, groups)
    return Cost(cost.cycles, cost.array_cycles, dict(cost.beats))


def sweep(g: Geometry, rows: int, narrow: bool) -> int:
    """Array cycles a step spends on its rows: a second pass starts once the first pass's
    sums are written back (at least min_span cycles after)."""
    passes = g.passes(narrow)
    return rows if passes == 1 else passes * max(rows, min_span(g))


@lru_cache(maxsize=65536)
def _tile_cost(g: Geometry, rows: int, in_dim: int, out_cols: int, panels: str,
               narrow: bool, groups: int) -> Cost:
    k_panels, m_panels = g.panels(in_dim, math.ceil(out_cols / groups))
    steps = k_panels * m_panels
    first, other = _fill(g, panels, narrow, groups)
    rows = sweep(g, rows, narrow)
    # Steps before an output panel's first input panel fill `first` items, the others `other`.
    to_first = m_panels - 1
    shortest = min_span(g)
    spans = (to_first * max(rows, first, shortest)
             + (steps - 1 - to_first) * max(rows, other, shortest) + max(rows, shortest))
    array = first + spans + drain(g)
    cost = Cost(array + LOOP_DEPTH + MAC_DEPTH, array)
    if panels == "ddr":
        cost.beats["gmem_w"] = g.matmul_words(in_dim, out_cols, narrow)
    return cost


def loop_cost(trip: int, bundle: str | None = None) -> Cost:
    cost = Cost(trip + LOOP_DEPTH if trip else 0)
    if bundle:
        cost.beats[bundle] = trip
    return cost


# ------------------------------------------------------------------------- DDR segments

def pack_matmul(g: Geometry, weights: np.ndarray, bias: np.ndarray, out_cols: int,
                w_shift: int | None = None) -> np.ndarray:
    """A product's blob in consumption order: per output panel its TM biases (at the end of
    BIAS_WORDS words: the shadow registers keep the last lanes shifted in), then its input
    panels, each TK x TM row-major. With `w_shift` (an 8-bit layer) the panels' weight_t codes
    become 8-bit codes (shifted right: their low bits are zero), two to a lane."""
    in_dim, out_dim = weights.shape
    k_panels, m_panels = g.panels(in_dim, out_cols)
    padded = np.zeros((k_panels * g.tk, m_panels * g.tm), weights.dtype)
    padded[:in_dim, :out_dim] = weights
    panels = padded.reshape(k_panels, g.tk, m_panels, g.tm).transpose(2, 0, 1, 3)
    biases = np.zeros((m_panels, g.bias_words * g.port_lanes), weights.dtype)
    full = np.zeros(m_panels * g.tm, weights.dtype)
    full[:out_dim] = bias
    biases[:, -g.tm:] = full.reshape(m_panels, g.tm)
    panels = panels.reshape(m_panels, -1)
    if w_shift is not None:
        panels = pair_codes(panels >> w_shift)
    return np.concatenate([biases, panels], axis=1).reshape(-1)


def pair_codes(codes: np.ndarray) -> np.ndarray:
    """8-bit codes, consecutive pairs (even, odd) as one 16-bit lane: odd << 8 | even (the
    pair the array's fill unpacks into one DSP's two weights)."""
    pairs = codes.reshape(*codes.shape[:-1], -1, 2)
    return (pairs[..., 1] << 8) | (pairs[..., 0] & 0xFF)


def pack_vector(g: Geometry, values: np.ndarray, length: int | None = None) -> np.ndarray:
    """A vector padded with zeros to `length` (default its own) and then to whole words."""
    length = values.size if length is None else length
    out = np.zeros(g.words(length) * g.port_lanes, values.dtype)
    out[:values.size] = values.reshape(-1)
    return out


def pack_rows(g: Geometry, rows: np.ndarray) -> np.ndarray:
    """A matrix with each row padded to whole words."""
    count, width = rows.shape
    out = np.zeros((count, g.words(width) * g.port_lanes), rows.dtype)
    out[:, :width] = rows
    return out.reshape(-1)


class Weights:
    """The kernel's constants by kernel.json offset (float values or raw weight_t codes)."""

    def __init__(self, blob: np.ndarray) -> None:
        self.blob = blob

    def __call__(self, offset: int, shape: Sequence[int]) -> np.ndarray:
        return self.blob[offset:offset + int(np.prod(shape))].reshape(shape)


def w_shift(call: dict) -> int | None:
    """An 8-bit layer's weight shift (weight_t code -> its 8-bit code), else None."""
    return call.mac8["w_shift"] if mac8(call) else None


@dataclass
class Rendering:
    """What a unit needs to write its top-function call: the DDR layout's segments per call,
    the array, the kernel's sizes and the narrowing kinds (m3c.hw.layout)."""

    calls: list[dict]
    segments: list[dict[str, list[int]]]
    geometry: Geometry
    sizes: dict
    kinds: list[str]

    def call(self, index: int) -> Call:
        return Call.of(self.calls[index])

    def following(self, index: int) -> Call | None:
        return self.call(index + 1) if index + 1 < len(self.calls) else None

    def narrow(self, call: dict) -> int:
        """The call's result type as m3c::narrowed's case (0: not narrowed)."""
        return self.kinds.index(call.narrow["cpp"]) + 1 if call.narrow is not None else 0

    def mac(self, call: dict, second: bool = False) -> int:
        return mac_code(call, self.kinds, second)

    @staticmethod
    def activation(call: dict) -> str:
        return ACTIVATIONS[call.activation]


MAC_CODE_BITS = 4  # an operand shift (0 ... 8) in the unit calls' packed mac argument


def mac_code(call: dict, kinds: list[str], second: bool = False) -> int:
    """One matmul's 8-bit operands as the int its unit call passes (m3c::set_mac decodes):
    bit 0 set for 8 bits, then the operand and weight shifts, then the operand's narrowing
    kind; 0 for a 16-bit product. `second`: an expert layer's fc2."""
    if call.mac8 is None:
        return 0
    spec = call.mac8
    x, w = ("x2", "w2") if second else ("x", "w")
    kind = kinds.index(spec[x]["cpp"]) + 1
    if max(spec[f"{x}_shift"], spec[f"{w}_shift"]) >= 1 << MAC_CODE_BITS:
        raise CodegenError(f"layer {call.layer!r}: an 8-bit operand {spec[f'{x}_shift']} / "
                           f"{spec[f'{w}_shift']} bits below its 16-bit type's binary point",
                           remedy="keep data and weight types at most 16 bits wide with "
                                  "--precision int8 or mixed")
    return (1 | spec[f"{x}_shift"] << 1 | spec[f"{w}_shift"] << (1 + MAC_CODE_BITS)
            | kind << (1 + 2 * MAC_CODE_BITS))


class Unit:
    """A hardware unit: its template, the HLS functions it defines (`functions`: never inlined,
    one instance each; `layers`: inlined into the top function's program), the kernel.json
    ops it runs and, per op, the constants it reads, its DDR segments, its cycles
    and MACs, its top-function call, its on-chip arrays and its logic. Its methods take a
    call as its typed record (m3c.hw.calls; the registry's functions convert kernel.json).
    The numpy emulation of an op is runtime/emulator.py's `OPS[op]`."""

    name = "unit"
    template = ""  # under templates/
    functions: tuple[str, ...] = ()
    # The layer functions the top function's program calls: inlined into its one call site
    # there, so every shared function they call (the MAC array) sits in the top's scope.
    layers: tuple[str, ...] = ()
    # Inlined helpers with loops of their own (a mode's step loops, a once-per-layer setup):
    # inlined into a unit function, never called from a pipelined loop.
    helpers: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    weight_args: dict[str, tuple[str, ...]] = {}  # per op: the keys holding blob offsets
    narrowable: frozenset[str] = frozenset()  # ops whose results a `result` type narrows

    def segments(self, call: Call, g: Geometry, read: Weights) -> dict[str, np.ndarray]:
        """The DDR lanes of each of `call`'s segments, in the order they are laid out."""
        del call, g, read
        return {}

    def cost(self, call: Call, g: Geometry, sizes: dict,
             queues: Sequence[int] | None = None) -> Cost:
        """Cycles, array cycles and DDR beats of one call, mirroring the template's loops."""
        raise NotImplementedError(f"unit {self.name} runs no op {call.OP!r}")

    def macs(self, call: Call, top_k: int = 1) -> int:
        """Multiply-accumulates of one call."""
        del call, top_k
        return 0

    def render(self, r: Rendering, index: int) -> tuple[str, int]:
        """The top function's call for `r.calls[index]` and how many calls it covers."""
        raise NotImplementedError(f"unit {self.name} has no call of its own")

    def arrays(self, design) -> list[Array]:
        """Its on-chip arrays, named as their kernel variables, sized for `design`."""
        del design
        return []

    def logic(self, design) -> Resources | None:
        """Its arithmetic and control (DSP, LUT, FF, ROM copies), without its arrays and its
        multipliers; None for a unit with no resource row of its own."""
        del design
        return None

    def multipliers(self, design) -> list[Multipliers]:
        """Its multipliers beside the array, by bind_op group (fabric or DSPs: `unit_logic`
        binds them as `design.dsp_multipliers` says)."""
        del design
        return []


TASK = "task"  # an argument that is the kernel's task register, not a constant


@dataclass(frozen=True)
class UnitCall:
    """One layer of the top function's program: the unit's layer function, the DDR buffers it
    takes and its arguments (ints, C++ integer constant expressions, TASK, or a typed
    constant such as `var_t(1e-06f)`); every on-chip memory follows (m3c.hw.memories)."""

    function: str
    buffers: str
    args: tuple

    def line(self) -> str:
        rendered = ", ".join(str(arg) for arg in self.args)
        return f"m3c::{self.function}({self.buffers}, {rendered}, {MEMORY_ARGS});"


def unit_call(function: str, buffers: str, args: list) -> UnitCall:
    return UnitCall(function, buffers, tuple(args))


def expect_next(call: Call, following: Call | None, op: str) -> None:
    """A unit whose call covers two kernel.json calls checks the second is there."""
    if following is None or following.OP != op:
        raise CodegenError(f"call {call.layer!r} ({call.OP}) must be followed by {op}",
                           remedy="report this as an m3c issue")
