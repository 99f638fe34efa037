"""Linear layers outside attention's own (templates/hls/units/mlp.h.j2): the attention
projection with the residual added in the epilogue, and an MLP's two layers (one call)."""

from __future__ import annotations

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


def out_columns(call: dict, g) -> int:
    """Hidden rows are stored whole chunks wide; residual rows at their width."""
    return g.padded(call.out_dim) if call.target == "hidden" else call.out_dim


class Linear(Unit):
    name = "linear"
    template = "hls/units/mlp.h.j2"
    layers = ("projection_layer", "mlp_layer", "mlp_tile")
    ops = ("linear",)
    weight_args = {"linear": ("w", "b")}
    narrowable = frozenset({"linear"})

    def segments(self, call, g, read):
        k, m = call.in_dim, call.out_dim
        return {"blob": pack_matmul(g, read(call.w, (k, m)), read(call.b, (m,)),
                                    out_columns(call, g), w_shift(call))}

    def cost(self, call, g, sizes, queues=None) -> Cost:
        del sizes, queues
        total = Cost()
        for rows in g.row_tiles(call.tokens):
            total += tile_cost(g, rows, call.in_dim, out_columns(call, g), narrow=mac8(call))
        return total

    def macs(self, call, top_k=1) -> int:
        return call.tokens * call.in_dim * call.out_dim

    def render(self, r: Rendering, index: int) -> tuple[str, int]:
        call = r.call(index)
        seg = r.segments[index]
        if call.source == "attention":
            args = [*seg["blob"], call.tokens, call.in_dim, call.out_dim,
                    r.narrow(call), r.mac(call), index]
            return unit_call("projection_layer", "weights", args), 1
        following = r.following(index)
        expect_next(call, following, "linear")
        args = [*seg["blob"], *r.segments[index + 1]["blob"], call.tokens, call.in_dim,
                call.out_dim, f"m3c::{r.activation(call)}", r.narrow(call),
                r.narrow(following), r.mac(call), r.mac(following), index, index + 1]
        return unit_call("mlp_layer", "weights", args), 2
