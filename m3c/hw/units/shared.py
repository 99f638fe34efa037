"""The units every layer shares: the MAC array (templates/hls/units/matmul.h.j2), the banked
on-chip memories (memory.h.j2), the activation tables (arith.h.j2), the DDR interfaces of the
top function (kernel.cpp.j2), and the store of the encoder's output."""

from __future__ import annotations

import math

from m3c.hw.resources import (
    MAXI_BUNDLE,
    Array,
    Multipliers,
    Resources,
    adders,
    burst_buffer,
    control,
    fabric,
    multiplexers,
    pack_mux_luts,
    table_copies,
)
from m3c.hw.units.base import BUNDLES, Cost, Rendering, Unit, loop_cost, unit_call
from m3c.hw.units.layernorm import normalise_cost
from m3c.runtime.fixed import EXP_TABLE_BITS, GELU_RANGE, RECIP_TABLE_BITS, SEED_FRAC

EXP2_ENTRIES = 1 << EXP_TABLE_BITS
GELU_ENTRIES = 2 * GELU_RANGE << 8  # the finest step the data type allows (gelu_step_bits)
RECIP_ENTRIES, RSQRT_ENTRIES = 1 << RECIP_TABLE_BITS, 3 << RECIP_TABLE_BITS


def table_bits(precision) -> int:
    """The width the lookup tables are declared at in synthesis (m3c_tables.h.j2 `table_t`):
    their widest entries, prob_t codes or the reciprocal seeds (2^SEED_FRAC / m < 2^(SEED_FRAC
    + 1))."""
    return max(precision.prob, SEED_FRAC + 1)


def exponents(readers: int, design) -> list[Multipliers]:
    """exp_neg's x log2(e) (logit x prob) for `readers` exponentials a cycle (none in float:
    the kernel calls exp)."""
    if design.precision.floating:
        return []
    return [Multipliers("exponent", readers, design.precision.logit, design.precision.prob)]


def exp2_copies(readers: int, design) -> Resources:
    """The exp2 table for `readers` reads per cycle (none in float: the kernel calls exp)."""
    if design.precision.floating:
        return Resources()
    return table_copies(readers, EXP2_ENTRIES, table_bits(design.precision))


PACKED_CHAIN = 4  # packed_mac.h.j2: packed products a cascade sums before they separate
CHAIN8_BITS = 18  # packed_mac.h.j2: a chain's separated sums (the low field's width)
# matmul.h.j2 RowContext: five flags, the row and output panel (16 bits each), a mix's total
CONTEXT_FLAGS, CONTEXT_INDEX_BITS = 5, 2 * 16
DSP_P_BITS = 48  # a DSP48E2's P register: the widest sum a cascade carries
NEWTON_MULTIPLIES = 4  # arith.h.j2 reciprocal_raw: NEWTON_STEPS x (m z, correction)
SHIFT_SOURCES = 4  # matmul.h.j2 fill: shift_panel by PORT_LANES or 2 x, fill_key, fill_value


class Matmul(Unit):
    """The one weight-stationary MAC array: every product's panels, rows and epilogue."""

    name = "matmul"
    template = "hls/units/matmul.h.j2"
    functions = ("matmul", "stream_panels", "mac_array", "mac_row")
    # The step loop's modes (matmul.h.j2 StepMode, a pipelined loop each) and their labels.
    STEP_MODES = (("TO_ACT", "to_act"), ("TO_RESIDUAL", "to_residual"),
                  ("TO_SCORES", "to_scores"), ("TO_MIX", "to_mix"))
    helpers = tuple(f"steps_{label}" for _, label in STEP_MODES)

    def arrays(self, design) -> list[Array]:
        g, s = design.geometry, design.sizes
        return [Array("matmul", "sums", g.row_tile, s["SUM_BITS"], banks=g.tm),
                Array("matmul", "words", design.panel_fifo, g.port_bits)]  # the panel FIFO

    def logic(self, design):
        p, g, s = design.precision, design.geometry, design.sizes
        copies = 2 if p.floating else 3  # the shadow panel, the panel, the stages' live rows
        array = Resources(dsp=g.dsps * p.mac_dsp,
                          ff=copies * (g.macs * g.lane_bits + g.tm * s["SUM_BITS"]))
        return control(2) + array + self.reduction(design) + self.wiring(design)

    def multipliers(self, design) -> list[Multipliers]:
        """The epilogue's, per column: the scores' scale (one per key group, logit x norm_t),
        the mix's normalisation (logit x recip_t), the GELU (data x its prob_t table value) and
        the experts' gate (prob x data); and the row's reciprocal (its Newton steps,
        NEWTON_MULTIPLIES)."""
        p, g, s = design.precision, design.geometry, design.sizes
        if p.floating:
            return [Multipliers("score_scale", s["SCORE_GROUPS"] * g.tm, 32, 24),
                    Multipliers("mix", g.tm, 32, 24), Multipliers("gate", g.tm, 32, 24)]
        return [Multipliers("score_scale", s["SCORE_GROUPS"] * g.tm, p.logit, 24),
                Multipliers("mix", g.tm, p.logit, 24), Multipliers("gelu", g.tm, p.data, p.prob),
                Multipliers("gate", g.tm, p.prob, p.data),
                Multipliers("scalar", NEWTON_MULTIPLIES, 33, 33)]

    @staticmethod
    def reduction(design) -> Resources:
        """Fixed point sums a column's products down a multiply-add chain per key group
        (matmul.h.j2 mac_row), in the DSPs' cascade: no fabric adder (unless its sums outgrow
        the P register: 32-bit lanes). A row's operands wait in delay lines until their stage
        (`skew`: input u of a group waits u cycles) and its context beside them (`line`); per
        key group and column one SUM_BITS adder onto the running sum (finish_row). Packed:
        each chain of PACKED_CHAIN DSPs separates once (an adder corrects the high field),
        onto two running sums per DSP column that travel down with the row (registers at
        every stage, an adder at each chain's end, the low one choosing the separated or the
        whole sum), and the operand muxes of every DSP."""
        p, g, s = design.precision, design.geometry, design.sizes
        if p.floating:  # the fp32 MAC's adder is in its DSPs
            return Resources()
        chain, groups = g.chain, s["SCORE_GROUPS"]
        delays = Resources(ff=groups * chain * (chain - 1) // 2 * s["X_BITS"]
                           + chain * (CONTEXT_FLAGS + CONTEXT_INDEX_BITS + p.acc))
        sums = adders(g.tm * groups, s["SUM_BITS"])
        low_bits = s["X_BITS"] + g.lane_bits + math.ceil(math.log2(chain))  # CHAIN_BITS
        if low_bits > DSP_P_BITS:  # wider than a P register: the chain adds in fabric
            sums = sums + adders(g.tm * groups * (chain - 1), low_bits)
        if not g.packed:
            return delays + sums
        columns = g.tm // 2 * groups  # DSP columns, each key group's own
        ends = math.ceil(chain / PACKED_CHAIN)
        high_bits = CHAIN8_BITS + math.ceil(math.log2(chain))
        runs = (adders(columns * ends, CHAIN8_BITS) + adders(columns * ends, low_bits)
                + adders(columns * ends, high_bits)
                + multiplexers(columns * ends * low_bits, 2)
                + Resources(ff=columns * (chain - ends) * (low_bits + high_bits)))
        return delays + sums + runs + Resources(lut=g.dsps * pack_mux_luts(g.wide_operands))

    @staticmethod
    def wiring(design) -> Resources:
        """Multiplexers the runtime indices imply: each shadow-panel register shifts in from
        one of its neighbours (a DDR word's PORT_LANES or 2 x PORT_LANES along, the next
        column for a key, the next row for a value: SHIFT_SOURCES inputs); read_window rotates
        bank words onto the keys (TK lanes), values and residual rows (TM each); write_window
        places TM lanes into the banks of act and resid."""
        g = design.geometry
        fill = multiplexers(g.macs * g.lane_bits, SHIFT_SOURCES)
        # windows rotate whole bank words (memory.h.j2): among BANKS words for a lane read,
        # among TM / LANES groups of lanes for a bank word written
        reads = multiplexers((g.tk + 2 * g.tm) * g.lane_bits, g.banks)
        writes = multiplexers(2 * g.tk * g.lane_bits, g.tm // g.lanes)
        return fill + reads + writes


class Memory(Unit):
    """The residual stream and the layers' working tensors, in BANKS banks."""

    name = "memory"
    template = "hls/units/memory.h.j2"
    # Index products in the pipelines (memory.h.j2 index_product: a row's address, a score
    # step's first key, a patch's position): about 3 per step loop and 1-3 per other loop; an
    # upper bound.
    INDEX_PRODUCTS = 32

    def logic(self, design):
        s = design.sizes
        return fabric(self.INDEX_PRODUCTS, s["ROW_BITS"], max(s["CHUNK_BITS"], s["PATCH_BITS"]))

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
    outstanding bursts. A bundle streams one burst while the requests of the next wait out the
    read latency its pragma declares (LATENCY cycles, Vitis's default); four bursts of 256
    beats in flight request 1,024 beats ahead, 16 x that latency, so a congested DDR's longer
    latency is hidden too. More would only add buffer BRAM (16 bursts: 32 BRAM18 a bundle)."""

    name = "interfaces"
    template = "hls/kernel/kernel.cpp.j2"
    BURST_BEATS = 256
    LATENCY = 64
    OUTSTANDING = {"gmem_w": 4, "gmem_in": 4, "gmem_out": 4}

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
    layers = ("features_layer",)
    ops = ("features",)
    weight_args = {"features": ()}

    def cost(self, call, g, sizes, queues=None) -> Cost:
        del sizes, queues
        total = loop_cost(call.tokens * g.words(call.dim), "gmem_out")
        if call.source == "normalised":
            total += normalise_cost(call.tokens, call.dim, g)
        return total

    def render(self, r: Rendering, index: int) -> tuple[str, int]:
        call = r.call(index)
        args = [call.tokens, call.dim,
                "true" if call.source == "normalised" else "false", index]
        return unit_call("features_layer", "features", args), 1
