"""Layer norm statistics of the residual stream (templates/hls/units/layernorm.h.j2): gamma
and beta onto the chip, each row's mean and 1/std; products normalise the rows as they read
them, except the experts and the encoder's features, which read them stored in act
(normalise_rows, `normalise_cost`)."""

from __future__ import annotations

from m3c.hw.resources import Array, Multipliers, control
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


def normalise_halves(g) -> int:
    """normalise_rows takes a chunk in two halves of the banks (one when they are odd)."""
    return 2 if g.banks % 2 == 0 else 1


def normalise_cost(tokens: int, dim: int, g) -> Cost:
    """normalise_rows: the normalised rows into act, half a chunk a cycle."""
    return Cost(tokens * g.chunks(dim) * normalise_halves(g) + LOOP_DEPTH)


class LayerNorm(Unit):
    name = "layernorm"
    template = "hls/units/layernorm.h.j2"
    functions = ("load_vector", "normalise_rows")
    layers = ("layernorm_stats",)
    helpers = ("width_divider",)  # arith.h.j2: the exact division's constants, once a layer
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
        return control()

    def multipliers(self, design) -> list[Multipliers]:
        """TK normalise() a cycle in the array's feed and TK / normalise_halves in
        normalise_rows, each (x - mean) x 1/std and the result x gamma; the deviations' TK
        squares ((data + 1) bits); the statistics' Newton steps (rsqrt: 3 a step) and their
        divisions by multiplication."""
        p, g = design.precision, design.geometry
        data, weight = (32, 32) if p.floating else (p.data, p.weight)
        lanes = g.tk + g.tk // normalise_halves(g)
        return [Multipliers("norm_scale", lanes, data + 1, 24),
                Multipliers("norm_gamma", lanes, data, weight),
                Multipliers("square", g.tk, data + 1, data + 1),
                Multipliers("scalar", 6, 33, 33), Multipliers("scalar", 2, 45, 45)]
