"""The units every layer shares: the MAC array (templates/hls/units/matmul.h.j2), the banked
on-chip memories (memory.h.j2), the activation tables (arith.h.j2), the DDR interfaces of the
top function (kernel.cpp.j2), and the store of the encoder's output."""

from __future__ import annotations

from m3c.hw.resources import (
    MAXI_BUNDLE,
    PACK_LUT_PER_DSP,
    Array,
    Resources,
    adders,
    burst_buffer,
    control,
    fabric,
    multiplexers,
    table_copies,
)
from m3c.hw.units.base import BUNDLES, Cost, Rendering, Unit, loop_cost, unit_call
from m3c.runtime.fixed import EXP_TABLE_BITS, GELU_RANGE, RECIP_TABLE_BITS, SEED_FRAC

EXP2_ENTRIES = 1 << EXP_TABLE_BITS
GELU_ENTRIES = 2 * GELU_RANGE << 8  # the finest step the data type allows (gelu_step_bits)
RECIP_ENTRIES, RSQRT_ENTRIES = 1 << RECIP_TABLE_BITS, 3 << RECIP_TABLE_BITS


def table_bits(precision) -> int:
    """The width the lookup tables are declared at in synthesis (m3c_tables.h.j2 `table_t`):
    their widest entries, prob_t codes or the reciprocal seeds (2^SEED_FRAC / m < 2^(SEED_FRAC
    + 1))."""
    return max(precision.prob, SEED_FRAC + 1)


def exp2_copies(readers: int, design) -> Resources:
    """The exp2 table for `readers` reads per cycle (none in float: the kernel calls exp)."""
    if design.precision.floating:
        return Resources()
    return table_copies(readers, EXP2_ENTRIES, table_bits(design.precision))


class Matmul(Unit):
    """The one weight-stationary MAC array: every product's panels, rows and epilogue."""

    name = "matmul"
    template = "hls/units/matmul.h.j2"
    functions = ("matmul", "stream_panels", "mac_array")

    def arrays(self, design) -> list[Array]:
        g, s = design.geometry, design.sizes
        return [Array("matmul", "sums", g.row_tile, s["SUM_BITS"], banks=g.tm),
                Array("matmul", "words", design.panel_fifo, g.port_bits)]  # the panel FIFO

    def logic(self, design):
        p, g, s = design.precision, design.geometry, design.sizes
        array = Resources(dsp=g.dsps * p.mac_dsp,
                          ff=2 * g.macs * g.lane_bits + 2 * g.tm * s["SUM_BITS"])
        data = 32 if p.floating else p.data
        # epilogue multipliers, and the scaling of the other key groups' scores
        return (control(2) + array + fabric((3 + s["SCORE_GROUPS"]) * g.tm, data, 24)
                + self.reduction(design) + self.wiring(design))

    @staticmethod
    def reduction(design) -> Resources:
        """Fixed point sums a column's products in fabric: `part += x * w` over an unrolled
        loop is an adder tree after HLS balances it, not a DSP cascade (one adder per product
        beyond the first of each key group). A packed array adds its operand muxes and the
        product split in front of and behind every DSP."""
        p, g, s = design.precision, design.geometry, design.sizes
        if p.floating:  # the fp32 MAC's adder is in its DSPs
            return Resources()
        tree = adders((g.tk - s["SCORE_GROUPS"]) * g.tm, s["SUM_BITS"])
        if g.packed:
            tree = tree + Resources(lut=g.dsps * PACK_LUT_PER_DSP)
        return tree

    @staticmethod
    def wiring(design) -> Resources:
        """Multiplexers the runtime indices imply: each shadow-panel register picks its lane of
        a DDR word; read_window rotates TK lanes onto the keys (TK), values and residual rows
        (TM each); write_window places TM lanes into the banks of act and resid."""
        g = design.geometry
        fill = multiplexers(g.macs * g.lane_bits, g.port_lanes)
        reads = multiplexers((g.tk + 2 * g.tm) * g.lane_bits, g.tk)
        writes = multiplexers(2 * g.tk * g.lane_bits, g.tm)
        return fill + reads + writes


class Memory(Unit):
    """The residual stream and the layers' working tensors, in BANKS banks."""

    name = "memory"
    template = "hls/units/memory.h.j2"

    def arrays(self, design) -> list[Array]:
        g, s = design.geometry, design.sizes
        return [Array("memory", "resid", s["RESID_DEPTH"], 64, banks=g.banks),
                Array("memory", "act", s["ACT_DEPTH"], 64, banks=g.banks)]


class Activations(Unit):
    """The GELU lookup tables, a dual-ported copy per two of the array's TM columns for each
    GELU form the model uses (the epilogue reads each), and the reciprocal seeds (one reader
    each)."""

    name = "activations"
    template = "hls/units/arith.h.j2"

    def logic(self, design):
        if design.precision.floating:
            return Resources()
        bits = table_bits(design.precision)
        gelu = table_copies(design.geometry.tm, GELU_ENTRIES, bits)
        total = table_copies(1, RECIP_ENTRIES, bits) + table_copies(1, RSQRT_ENTRIES, bits)
        for _ in range(design.capacities.get("gelu_forms", 2)):  # older plans held both
            total = total + gelu
        return total


class Interfaces(Unit):
    """The top function's m_axi bundles (weights, image, features): each buffers its
    outstanding bursts. The weights stream all the time and keep 16 bursts in flight; the
    image and the features move once per frame and need few."""

    name = "interfaces"
    template = "hls/kernel/kernel.cpp.j2"
    BURST_BEATS = 256
    OUTSTANDING = {"gmem_w": 16, "gmem_in": 4, "gmem_out": 4}

    def logic(self, design):
        port = design.target.hp_port_bits
        total = Resources()
        for bundle in BUNDLES:
            total = total + burst_buffer(self.OUTSTANDING[bundle], self.BURST_BEATS, port)
        return total + Resources(lut=len(BUNDLES) * MAXI_BUNDLE[0],
                                 ff=len(BUNDLES) * MAXI_BUNDLE[1])


class Features(Unit):
    """The encoder's output rows (the residual stream, or its layer norm) to DDR."""

    name = "features"
    template = "hls/units/embed.h.j2"
    functions = ("store_features",)
    ops = ("features",)
    weight_args = {"features": ()}

    def cost(self, call, g, sizes, queues=None) -> Cost:
        del sizes, queues
        return loop_cost(call.tokens * g.words(call.dim), "gmem_out")

    def render(self, r: Rendering, index: int) -> tuple[str, int]:
        call = r.call(index)
        args = [call.tokens, call.dim,
                "true" if call.source == "normalised" else "false", index]
        return unit_call("store_features", "features", args), 1
