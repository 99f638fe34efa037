"""The patch embedding (templates/hls/units/embed.h.j2): the image read from DDR in bands of
patch rows, projected on the MAC array into the residual stream, plus class token and
position embedding."""

from __future__ import annotations

from m3c.hw.resources import control
from m3c.hw.units.base import (
    Cost,
    Rendering,
    Unit,
    Weights,
    loop_cost,
    pack_matmul,
    pack_rows,
    pack_vector,
    tile_cost,
    unit_call,
)


def band_rows(call: dict, g, act_depth: int) -> int:
    """Patch rows per band of the image: as many as the working memory holds (at least one)."""
    grid_h, grid_w = call["height"] // call["patch"], call["width"] // call["patch"]
    per_row = grid_w * g.chunks(call["channels"] * call["patch"] ** 2)
    return max(1, min(grid_h, act_depth // per_row))


class Embed(Unit):
    name = "embed"
    template = "hls/units/embed.h.j2"
    functions = ("embed_layer", "load_band", "add_positions")
    ops = ("embed",)
    weight_args = {"embed": ("w", "b", "cls", "pos")}

    def segments(self, call, g, read: Weights):
        dim, length = call["dim"], call["channels"] * call["patch"] ** 2
        return {"blob": pack_matmul(g, read(call["w"], (length, dim)), read(call["b"], (dim,)),
                                    dim),
                "cls": pack_vector(g, read(call["cls"], (dim,))),
                "pos": pack_rows(g, read(call["pos"], (call["tokens"], dim)))}

    def cost(self, call, g, sizes, queues=None) -> Cost:
        del queues
        patch, dim = call["patch"], call["dim"]
        grid_h, grid_w = call["height"] // patch, call["width"] // patch
        rows = sizes["BAND_ROWS"]
        total = Cost()
        for first in range(0, grid_h, rows):
            lines = min(rows, grid_h - first) * patch
            for _ in range(call["channels"]):  # a burst per channel of the band
                total += loop_cost(lines * (call["width"] // g.port_lanes), "gmem_in")
            for tile in g.row_tiles(min(rows, grid_h - first) * grid_w):
                total += tile_cost(g, tile, call["channels"] * patch * patch, dim)
        total += loop_cost(g.words(dim), "gmem_w")  # the class token
        total += loop_cost(call["tokens"] * g.words(dim), "gmem_w")
        return total

    def macs(self, call, top_k=1) -> int:
        return call["patches"] * call["channels"] * call["patch"] ** 2 * call["dim"]

    def render(self, r: Rendering, index: int) -> tuple[str, int]:
        call, seg = r.calls[index], r.segments[index]
        args = [*seg["blob"], seg["cls"][0], seg["pos"][0], call["channels"], call["height"],
                call["width"], call["patch"], call["dim"], r.sizes["BAND_ROWS"], index]
        return unit_call("embed_layer", "weights, image", args), 1

    def logic(self, design):
        return control(2)
