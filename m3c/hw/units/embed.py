"""The patch embedding (templates/hls/units/embed.h.j2): the image read from DDR in bands of
patch rows, projected on the MAC array into the residual stream, plus class token and
position embedding."""

from __future__ import annotations

from m3c.hw.resources import control
from m3c.hw.units.base import (
    LOOP_DEPTH,
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
    grid_h, grid_w = call.height // call.patch, call.width // call.patch
    per_row = grid_w * g.chunks(call.channels * call.patch ** 2)
    return max(1, min(grid_h, act_depth // per_row))


def pixels_by_lane(call: dict, g) -> bool:
    """Whether the band loader places the image a pixel (lane) at a time. A DDR word's
    PORT_LANES pixels lie in one line of one patch, and an image row starts on a word, only
    when the patch is a multiple of PORT_LANES pixels; then a word is one window of one
    patch row (embed.h.j2 load_band). Otherwise a word holds pixels of several patches (or
    image rows), each bound for its own patch row and column."""
    return call.patch % g.port_lanes != 0


def band_load(call: dict, g, first_line: int, lines: int) -> Cost:
    """Reading `lines` image rows from `first_line` on, a burst per channel (load_band)."""
    height, width = call.height, call.width
    total = Cost()
    for channel in range(call.channels):
        if not pixels_by_lane(call, g):
            total += loop_cost(lines * (width // g.port_lanes), "gmem_in")
            continue
        first = (channel * height + first_line) * width  # the band's first pixel
        words = (first + lines * width - 1) // g.port_lanes - first // g.port_lanes + 1
        # One pixel a cycle: a word's pixels go to bank words of different patch rows.
        cost = Cost(words * g.port_lanes + LOOP_DEPTH)
        cost.beats["gmem_in"] = words
        total += cost
    return total


class Embed(Unit):
    name = "embed"
    template = "hls/units/embed.h.j2"
    functions = ("load_band",)
    layers = ("embed_layer", "add_positions")
    ops = ("embed",)
    weight_args = {"embed": ("w", "b", "cls", "pos")}

    def segments(self, call, g, read: Weights):
        dim, length = call.dim, call.channels * call.patch ** 2
        return {"blob": pack_matmul(g, read(call.w, (length, dim)), read(call.b, (dim,)),
                                    dim),
                "cls": pack_vector(g, read(call.cls, (dim,))),
                "pos": pack_rows(g, read(call.pos, (call.tokens, dim)))}

    def cost(self, call, g, sizes, queues=None) -> Cost:
        del queues
        patch, dim = call.patch, call.dim
        grid_h, grid_w = call.height // patch, call.width // patch
        rows = sizes["BAND_ROWS"]
        total = Cost()
        for first in range(0, grid_h, rows):
            total += band_load(call, g, first * patch, min(rows, grid_h - first) * patch)
            for tile in g.row_tiles(min(rows, grid_h - first) * grid_w):
                total += tile_cost(g, tile, call.channels * patch * patch, dim)
        total += loop_cost(g.words(dim), "gmem_w")  # the class token
        total += loop_cost(call.tokens * g.words(dim), "gmem_w")
        return total

    def macs(self, call, top_k=1) -> int:
        return call.patches * call.channels * call.patch ** 2 * call.dim

    def render(self, r: Rendering, index: int) -> tuple[str, int]:
        call = r.call(index)
        seg = r.segments[index]
        args = [*seg["blob"], seg["cls"][0], seg["pos"][0], call.channels, call.height,
                call.width, call.patch, call.dim, r.sizes["BAND_ROWS"], index]
        return unit_call("embed_layer", "weights, image", args), 1

    def logic(self, design):
        return control(2)
