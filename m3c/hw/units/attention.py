"""Self-attention (templates/hls/units/attention.h.j2): per head, its query/key/value
projection, the scores Q.K^T and the mix P.V on the MAC array, the softmax in between; one
top-function call covers a block's qkv and attention calls."""

from __future__ import annotations

import numpy as np

from m3c.errors import CodegenError
from m3c.hw.resources import Array, Multipliers, control
from m3c.hw.units.base import (
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
from m3c.hw.units.shared import exp2_copies, exponents


def score_groups_of(call: dict, g, sizes: dict) -> int:
    """The key groups of the call's scores (attention.h.j2 score_groups): the kernel's
    SCORE_GROUPS, unless its product takes two passes (16-bit on a packed array) or its heads
    are wider than a group."""
    if (g.packed and not mac8(call)) or call.head_dim > sizes["GROUP_K"]:
        return 1
    return sizes["SCORE_GROUPS"]


def check_head_widths(calls: list[dict], g) -> None:
    """A head's queries, keys and values start at multiples of its width in act, and the
    windows that read them rotate whole bank words (memory.h.j2): the width must be a
    multiple of the bank's LANES elements."""
    for call in calls:
        if call["op"] in Attention.ops and call["head_dim"] % g.lanes:
            raise CodegenError(
                f"{call['layer']}: heads of {call['head_dim']} elements are not a multiple of "
                f"the {g.lanes} {g.lane_bits}-bit lanes of an on-chip bank word",
                remedy=f"use a head count that makes dim / heads a multiple of {g.lanes}")


class Attention(Unit):
    name = "attention"
    template = "hls/units/attention.h.j2"
    layers = ("attention_layer",)
    ops = ("qkv", "attention")
    weight_args = {"qkv": ("w", "b"), "attention": ()}
    narrowable = frozenset({"qkv", "attention"})

    def segments(self, call, g, read):
        if call.OP != "qkv":
            return {}
        # Per head: its [queries | keys | values] columns.
        dim, heads, hd = call.dim, call.heads, call.head_dim
        weights, bias = read(call.w, (dim, 3 * dim)), read(call.b, (3 * dim,))
        columns = [np.concatenate([np.arange(part * dim + h * hd, part * dim + (h + 1) * hd)
                                   for part in range(3)]) for h in range(heads)]
        return {"blob": np.concatenate([pack_matmul(g, weights[:, c], bias[c], 3 * hd,
                                                    w_shift(call)) for c in columns])}

    def cost(self, call, g, sizes, queues=None) -> Cost:
        del queues
        if call.OP == "qkv":
            head = Cost()
            for rows in g.row_tiles(call.tokens):
                head += tile_cost(g, rows, call.dim, 3 * call.head_dim,
                                  narrow=mac8(call))
            return head.scaled(call.heads)
        tokens, hd = call.tokens, call.head_dim
        groups = score_groups_of(call, g, sizes)

        def block(rows: int) -> Cost:  # a block of queries: their scores, then their mix
            cost = tile_cost(g, rows, hd, tokens, "keys", mac8(call), groups)
            cost += tile_cost(g, rows, tokens, hd, "values", mac8(call))
            return cost

        full, rest = divmod(tokens, g.query_tile)
        head = block(g.query_tile).scaled(full)
        if rest:
            head += block(rest)
        return head.scaled(call.heads)

    def macs(self, call, top_k=1) -> int:
        if call.OP == "qkv":
            return call.tokens * call.dim * 3 * call.dim
        return 2 * call.tokens ** 2 * call.dim

    def render(self, r: Rendering, index: int) -> tuple[str, int]:
        call = r.call(index)
        seg = r.segments[index]
        following = r.following(index)
        expect_next(call, following, "attention")
        blob = seg["blob"]
        args = [blob[0], blob[1] // call.heads, call.tokens, call.dim,
                call.heads, call.head_dim, f"norm_t({following.scale!r}f)",
                r.narrow(call), r.narrow(following), r.mac(call), r.mac(following),
                r.mac(following, second=True), index, index + 1]
        return unit_call("attention_layer", "weights", args), 2

    def arrays(self, design) -> list[Array]:
        p, g, s = design.precision, design.geometry, design.sizes
        qt = g.query_tile
        return [Array("attention", "scores", qt * s["SCORE_ROWS"], p.logit, banks=g.tk),
                Array("attention", "row_max", qt, p.logit),
                Array("attention", "totals", qt, p.acc),
                Array("attention", "inverses", qt, p.prob + 6)]

    def logic(self, design):
        return control() + exp2_copies(design.geometry.tk, design)  # softmax numerators

    def multipliers(self, design) -> list[Multipliers]:
        return exponents(design.geometry.tk, design)  # the softmax's TK exponentials a cycle
