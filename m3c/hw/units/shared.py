"""The units every layer shares: the MAC array (templates/hls/units/matmul.h.j2), the banked
on-chip memories (memory.h.j2), the activation tables (arith.h.j2), the DDR interfaces of the
top function (kernel.cpp.j2), and the store of the encoder's output."""

from __future__ import annotations

import math

from m3c.hw.resources import (
    BUNDLES,
    DSP_ACC_BITS,
    GELU_TABLE_BRAM18,
    MAXI_BUNDLE,
    Array,
    Resources,
    control,
    fabric,
)
from m3c.hw.units.base import Cost, Rendering, Unit, loop_cost, unit_call


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
        if not p.floating and s["SUM_BITS"] > DSP_ACC_BITS:
            array = array + Resources(lut=g.macs * s["SUM_BITS"])  # the sum leaves the cascade
        data = 32 if p.floating else p.data
        # epilogue multipliers, and the scaling of the other key groups' scores
        return control(2) + array + fabric((3 + s["SCORE_GROUPS"]) * g.tm, data, 24)


class Memory(Unit):
    """The residual stream and the layers' working tensors, in BANKS banks."""

    name = "memory"
    template = "hls/units/memory.h.j2"

    def arrays(self, design) -> list[Array]:
        g, s = design.geometry, design.sizes
        return [Array("memory", "resid", s["RESID_DEPTH"], 64, banks=g.banks),
                Array("memory", "act", s["ACT_DEPTH"], 64, banks=g.banks)]


class Activations(Unit):
    """GELU lookup tables, a dual-ported copy per two of the array's TM columns."""

    name = "activations"
    template = "hls/units/arith.h.j2"

    def logic(self, design):
        return Resources(bram18=math.ceil(design.geometry.tm / 2) * GELU_TABLE_BRAM18)


class Interfaces(Unit):
    """The top function's m_axi bundles (weights, image, features)."""

    name = "interfaces"
    template = "hls/kernel/kernel.cpp.j2"

    def logic(self, design):
        return Resources(lut=BUNDLES * MAXI_BUNDLE[0], ff=BUNDLES * MAXI_BUNDLE[1])


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
