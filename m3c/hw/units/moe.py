"""A MoE layer, expert by expert (templates/hls/units/moe.h.j2): the router's logits on the
MAC array, softmax and top-k into per-expert token queues, then per expert its two layers on
its queued tokens, gate-scaled and scatter-added into the residual stream, while the next
expert's panels stream in. One top-function call covers the route and experts calls."""

from __future__ import annotations

import numpy as np

from m3c.hw.resources import Array, Multipliers, Resources, control
from m3c.hw.units.base import (
    ROUTE_DEPTH,
    Cost,
    Rendering,
    Unit,
    expect_next,
    mac8,
    pack_matmul,
    tile_cost,
    unit_call,
    w_shift,
)
from m3c.hw.units.layernorm import normalise_cost
from m3c.hw.units.shared import exp2_copies, exponents


def router_tasks(call: dict) -> int:
    """Router blobs in DDR: one per task (multi-gate weights or task-conditioned biases)."""
    return max(call.weight_rows, call.bias_rows)


def expert_words(g, call: dict) -> tuple[int, int]:
    """DDR words of one expert's fc1 and fc2 blobs."""
    narrow = mac8(call)
    return (g.matmul_words(call.dim, g.padded(call.hidden), narrow),
            g.matmul_words(call.hidden, call.dim, narrow))


class MoE(Unit):
    name = "moe"
    template = "hls/units/moe.h.j2"
    functions = ("route_tokens",)
    layers = ("moe_layer",)
    ops = ("route", "experts")
    weight_args = {"route": ("router_w", "router_b"), "experts": ("w1", "b1", "w2", "b2")}
    narrowable = frozenset({"experts"})

    def segments(self, call, g, read):
        if call.OP == "route":
            return {"blob": np.concatenate(self._routers(call, g, read))}
        return {"blob": np.concatenate(self._experts(call, g, read))}

    @staticmethod
    def _routers(call, g, read) -> list[np.ndarray]:
        """One router blob per task: its weight row and bias row (shared rows repeat)."""
        dim, experts = call.dim, call.experts
        weights = read(call.router_w, (call.weight_rows, dim, experts))
        biases = read(call.router_b, (call.bias_rows, experts))
        return [pack_matmul(g, weights[min(t, call.weight_rows - 1)],
                            biases[min(t, call.bias_rows - 1)], experts)
                for t in range(router_tasks(call))]

    @staticmethod
    def _experts(call, g, read) -> list[np.ndarray]:
        experts, dim, hidden = call.experts, call.dim, call.hidden
        w1, b1 = read(call.w1, (experts, dim, hidden)), read(call.b1, (experts, hidden))
        w2, b2 = read(call.w2, (experts, hidden, dim)), read(call.b2, (experts, dim))
        blobs = []
        for e in range(experts):
            blobs += [pack_matmul(g, w1[e], b1[e], g.padded(hidden), w_shift(call)),
                      pack_matmul(g, w2[e], b2[e], dim, w_shift(call))]
        return blobs

    def cost(self, call, g, sizes, queues=None) -> Cost:
        if call.OP == "route":  # the normalised rows kept for the experts, logits, routing
            total = normalise_cost(call.tokens, call.dim, g)
            for rows in g.row_tiles(call.tokens):
                total += tile_cost(g, rows, call.dim, call.experts)
            total += Cost(call.tokens + ROUTE_DEPTH + 2 * call.experts)
            return total
        if queues is None:
            raise ValueError(f"experts {call.layer!r} need their queue lengths")
        dim, hidden = call.dim, call.hidden
        total = Cost()
        for count in queues:
            for rows in g.row_tiles(int(count)):
                total += tile_cost(g, rows, dim, g.padded(hidden), narrow=mac8(call))
                total += tile_cost(g, rows, hidden, dim, narrow=mac8(call))
        return total

    def macs(self, call, top_k=1) -> int:
        if call.OP == "route":
            return call.tokens * call.dim * call.experts
        return 2 * call.tokens * top_k * call.dim * call.hidden

    def render(self, r: Rendering, index: int) -> tuple[str, int]:
        call = r.call(index)
        seg = r.segments[index]
        following = r.following(index)
        expect_next(call, following, "experts")
        tasks = router_tasks(call)
        fc1, fc2 = expert_words(r.geometry, following)
        args = [seg["blob"][0], seg["blob"][1] // tasks, tasks, "task",
                r.segments[index + 1]["blob"][0], fc1 + fc2, fc1, fc2, call.tokens,
                call.dim, following.hidden, call.experts, call.top_k,
                "true" if call.renormalise else "false", f"m3c::{r.activation(following)}",
                r.narrow(following), r.mac(following),
                r.mac(following, second=True), index, index + 1]
        return unit_call("moe_layer", "weights", args), 2

    def arrays(self, design) -> list[Array]:
        p, s = design.precision, design.sizes
        tokens, experts = design.capacities["max_tokens"], design.capacities["max_experts"]
        return [Array("moe", "logits", tokens, p.logit, banks=experts),
                Array("moe", "queue_tokens", tokens, s["TOKEN_BITS"], banks=experts),
                Array("moe", "queue_scores", tokens, p.prob, banks=experts)]

    def logic(self, design):
        """The router's top-k comparators and its softmax's exp2 table copies."""
        c = design.capacities
        return (control() + Resources(lut=c["max_experts"] * c["max_top_k"] * 40)
                + exp2_copies(c["max_experts"], design))

    def multipliers(self, design) -> list[Multipliers]:
        """The router's: each expert's probability scaled and rescaled by a reciprocal (prob x
        recip_t), the two reciprocals' Newton steps, each logit's x log2(e) (exp_neg)."""
        p, experts = design.precision, design.capacities["max_experts"]
        return [Multipliers("router", 2 * experts, p.prob, 24), Multipliers("scalar", 4, 40, 40),
                *exponents(experts, design)]
