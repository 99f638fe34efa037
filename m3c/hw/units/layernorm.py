"""Layer norm statistics of the residual stream (templates/hls/units/layernorm.h.j2): gamma
and beta onto the chip, each row's mean and 1/std; consumers normalise as they read."""

from __future__ import annotations

from m3c.hw.resources import Array, control, fabric
from m3c.hw.units.base import (
    LOOP_DEPTH,
    STATS_DEPTH,
    Cost,
    Rendering,
    Unit,
    loop_cost,
    pack_vector,
    unit_call,
)


class LayerNorm(Unit):
    name = "layernorm"
    template = "hls/units/layernorm.h.j2"
    functions = ("load_vector",)
    layers = ("layernorm_stats",)
    ops = ("layernorm",)
    weight_args = {"layernorm": ("gamma", "beta")}

    def segments(self, call, g, read):
        padded = g.padded(call.dim)
        return {"gamma": pack_vector(g, read(call.gamma, (call.dim,)), padded),
                "beta": pack_vector(g, read(call.beta, (call.dim,)), padded)}

    def cost(self, call, g, sizes, queues=None) -> Cost:
        del sizes, queues
        total = Cost()
        for _ in range(2):  # gamma, beta
            total += loop_cost(g.words(g.padded(call.dim)), "gmem_w")
        for _ in range(2):  # means, deviations
            total += Cost(call.tokens * g.chunks(call.dim) + LOOP_DEPTH + STATS_DEPTH)
        return total

    def render(self, r: Rendering, index: int) -> tuple[str, int]:
        call = r.call(index)
        seg = r.segments[index]
        args = [seg["gamma"][0], seg["beta"][0], call.tokens, call.dim,
                f"var_t({call.epsilon!r}f)", index]
        return unit_call("layernorm_stats", "weights", args), 1

    def arrays(self, design) -> list[Array]:
        p, g, s = design.precision, design.geometry, design.sizes
        tokens = design.capacities["max_tokens"]
        return [Array("layernorm", "ln_mean", tokens, p.data),
                Array("layernorm", "ln_inv", tokens, 24),
                Array("layernorm", "gamma", s["NORM_WIDTH"] // g.tk, p.weight, banks=g.tk),
                Array("layernorm", "beta", s["NORM_WIDTH"] // g.tk, p.weight, banks=g.tk)]

    def logic(self, design):
        data = 32 if design.precision.floating else design.precision.data
        return control() + fabric(2 * design.geometry.tk, data + 1, 24) + fabric(6, 40, 40)
