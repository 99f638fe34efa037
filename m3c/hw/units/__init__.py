"""Each hardware unit's Python side: its DDR segments and their packing, its cost, and the C++
call the top function makes (templates/hls/units/*.h.j2 are the units; runtime/emulator.py
computes what they compute).

Costs mirror the loops of the templates trip for trip: a product of a tile of rows is the
first panel's fill, then per (output, input) panel step max(rows, the next panel's fill,
MIN_SPAN) array cycles, all steps in one pipeline that pays the array's depth once. The C-simulation
trace (m3c_trace.h) counts the same array cycles and DDR beats, and tests hold the two equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from m3c.hw.geometry import Geometry

MAC_DEPTH = 12  # cycles from a row's operands to its epilogue's write (assumed; Vitis tells)
MIN_SPAN = MAC_DEPTH  # a step's row loop runs at least this long (the sums' write-back)
LOOP_DEPTH = 8  # pipeline depth of the other loops
STATS_DEPTH = 48  # a layer norm row's divider and reciprocal square root
ROUTE_DEPTH = 48  # a token's softmax, reciprocal and top-k
BUNDLES = ("gmem_w", "gmem_in", "gmem_out")


@dataclass
class Cost:
    """Cycles of a call, the MAC array's issued cycles among them, and DDR beats per bundle."""

    cycles: int = 0
    array_cycles: int = 0
    beats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUNDLES, 0))

    def __iadd__(self, other: Cost) -> Cost:
        self.cycles += other.cycles
        self.array_cycles += other.array_cycles
        for bundle, beats in other.beats.items():
            self.beats[bundle] += beats
        return self

    def scaled(self, count: int) -> Cost:
        """The cost of `count` runs of this one (identical heads or tiles)."""
        return Cost(self.cycles * count, self.array_cycles * count,
                    {bundle: beats * count for bundle, beats in self.beats.items()})


def _fill(g: Geometry, panels: str, narrow: bool, groups: int) -> tuple[int, int]:
    """(items to fill a first-input-panel step, items for the other steps)."""
    if panels == "keys":
        return groups * g.tm, groups * g.tm
    if panels == "values":
        return g.tk, g.tk
    return g.bias_words + g.panel_words_of(narrow), g.panel_words_of(narrow)


def mac8(call: dict) -> bool:
    """Whether the call's products have 8-bit operands (two per DSP on a packed array)."""
    return "mac8" in call


def tile_cost(g: Geometry, rows: int, in_dim: int, out_cols: int, panels: str = "ddr",
              narrow: bool = False, groups: int = 1) -> Cost:
    """One product of `rows` (<= ROW_TILE) rows: matmul in matmul.h.j2 (a fresh copy of the
    memoised figure: callers add to it). `narrow`: 8-bit operands and panels; `groups`: key
    groups a scores step computes (score_groups)."""
    cost = _tile_cost(g, rows, in_dim, out_cols, panels, narrow, groups)
    return Cost(cost.cycles, cost.array_cycles, dict(cost.beats))


def sweep(g: Geometry, rows: int, narrow: bool) -> int:
    """Array cycles a step spends on its rows: a second pass starts once the first pass's
    sums are written back (at least MIN_SPAN cycles after)."""
    passes = g.passes(narrow)
    return rows if passes == 1 else passes * max(rows, MIN_SPAN)


@lru_cache(maxsize=65536)
def _tile_cost(g: Geometry, rows: int, in_dim: int, out_cols: int, panels: str,
               narrow: bool, groups: int) -> Cost:
    k_panels, m_panels = g.panels(in_dim, math.ceil(out_cols / groups))
    steps = k_panels * m_panels
    first, other = _fill(g, panels, narrow, groups)
    rows = sweep(g, rows, narrow)
    # Steps before an output panel's first input panel fill `first` items, the others `other`.
    to_first = m_panels - 1
    spans = (to_first * max(rows, first, MIN_SPAN)
             + (steps - 1 - to_first) * max(rows, other, MIN_SPAN) + max(rows, MIN_SPAN))
    array = first + spans
    cost = Cost(first + LOOP_DEPTH + spans + MAC_DEPTH, array)
    if panels == "ddr":
        cost.beats["gmem_w"] = g.matmul_words(in_dim, out_cols, narrow)
    return cost


def _loop(trip: int, bundle: str | None = None) -> Cost:
    cost = Cost(trip + LOOP_DEPTH if trip else 0)
    if bundle:
        cost.beats[bundle] = trip
    return cost


# ------------------------------------------------------------------------- DDR segments

def pack_matmul(g: Geometry, weights: np.ndarray, bias: np.ndarray, out_cols: int,
                w_shift: int | None = None) -> np.ndarray:
    """A product's blob in consumption order: per output panel its TM biases (at the end of
    BIAS_WORDS words: the shadow registers keep the last lanes shifted in), then its input
    panels, each TK x TM row-major. With `w_shift` (an 8-bit layer) the panels' weight_t codes
    become 8-bit codes (shifted right: their low bits are zero), two to a lane."""
    in_dim, out_dim = weights.shape
    k_panels, m_panels = g.panels(in_dim, out_cols)
    padded = np.zeros((k_panels * g.tk, m_panels * g.tm), weights.dtype)
    padded[:in_dim, :out_dim] = weights
    panels = padded.reshape(k_panels, g.tk, m_panels, g.tm).transpose(2, 0, 1, 3)
    biases = np.zeros((m_panels, g.bias_words * g.port_lanes), weights.dtype)
    full = np.zeros(m_panels * g.tm, weights.dtype)
    full[:out_dim] = bias
    biases[:, -g.tm:] = full.reshape(m_panels, g.tm)
    panels = panels.reshape(m_panels, -1)
    if w_shift is not None:
        panels = pair_codes(panels >> w_shift)
    return np.concatenate([biases, panels], axis=1).reshape(-1)


def pair_codes(codes: np.ndarray) -> np.ndarray:
    """8-bit codes, consecutive pairs (even, odd) as one 16-bit lane: odd << 8 | even (the
    pair the array's fill unpacks into one DSP's two weights)."""
    pairs = codes.reshape(*codes.shape[:-1], -1, 2)
    return (pairs[..., 1] << 8) | (pairs[..., 0] & 0xFF)


def pack_vector(g: Geometry, values: np.ndarray, length: int | None = None) -> np.ndarray:
    """A vector padded with zeros to `length` (default its own) and then to whole words."""
    length = values.size if length is None else length
    out = np.zeros(g.words(length) * g.port_lanes, values.dtype)
    out[:values.size] = values.reshape(-1)
    return out


def pack_rows(g: Geometry, rows: np.ndarray) -> np.ndarray:
    """A matrix with each row padded to whole words."""
    count, width = rows.shape
    out = np.zeros((count, g.words(width) * g.port_lanes), rows.dtype)
    out[:, :width] = rows
    return out.reshape(-1)


class Weights:
    """The kernel's constants by kernel.json offset (float values or raw weight_t codes)."""

    def __init__(self, blob: np.ndarray) -> None:
        self.blob = blob

    def __call__(self, offset: int, shape: Sequence[int]) -> np.ndarray:
        return self.blob[offset:offset + int(np.prod(shape))].reshape(shape)


def segments(call: dict, g: Geometry, read: Weights) -> dict[str, np.ndarray]:
    """The DDR lanes of each of `call`'s segments, in the order they are laid out."""
    op = call["op"]
    if op == "embed":
        dim, length = call["dim"], call["channels"] * call["patch"] ** 2
        return {"blob": pack_matmul(g, read(call["w"], (length, dim)), read(call["b"], (dim,)),
                                    dim),
                "cls": pack_vector(g, read(call["cls"], (dim,))),
                "pos": pack_rows(g, read(call["pos"], (call["tokens"], dim)))}
    if op == "layernorm":
        padded = g.padded(call["dim"])
        return {"gamma": pack_vector(g, read(call["gamma"], (call["dim"],)), padded),
                "beta": pack_vector(g, read(call["beta"], (call["dim"],)), padded)}
    if op == "qkv":
        return {"blob": _pack_heads(call, g, read)}
    if op == "linear":
        k, m = call["in_dim"], call["out_dim"]
        cols = g.padded(m) if call["target"] == "hidden" else m
        return {"blob": pack_matmul(g, read(call["w"], (k, m)), read(call["b"], (m,)), cols,
                                    w_shift(call))}
    if op == "route":
        return {"blob": np.concatenate(_pack_routers(call, g, read))}
    if op == "experts":
        return {"blob": np.concatenate(_pack_experts(call, g, read))}
    return {}


def _pack_heads(call: dict, g: Geometry, read: Weights) -> np.ndarray:
    """Per head: its [queries | keys | values] columns."""
    dim, heads, hd = call["dim"], call["heads"], call["head_dim"]
    weights, bias = read(call["w"], (dim, 3 * dim)), read(call["b"], (3 * dim,))
    columns = [np.concatenate([np.arange(part * dim + h * hd, part * dim + (h + 1) * hd)
                               for part in range(3)]) for h in range(heads)]
    return np.concatenate([pack_matmul(g, weights[:, c], bias[c], 3 * hd, w_shift(call))
                           for c in columns])


def w_shift(call: dict) -> int | None:
    """An 8-bit layer's weight shift (weight_t code -> its 8-bit code), else None."""
    return call["mac8"]["w_shift"] if mac8(call) else None


def router_tasks(call: dict) -> int:
    return max(call["weight_rows"], call["bias_rows"])


def _pack_routers(call: dict, g: Geometry, read: Weights) -> list[np.ndarray]:
    """One router blob per task: its weight row and bias row (shared rows repeat)."""
    dim, experts = call["dim"], call["experts"]
    weights = read(call["router_w"], (call["weight_rows"], dim, experts))
    biases = read(call["router_b"], (call["bias_rows"], experts))
    return [pack_matmul(g, weights[min(t, call["weight_rows"] - 1)],
                        biases[min(t, call["bias_rows"] - 1)], experts)
            for t in range(router_tasks(call))]


def _pack_experts(call: dict, g: Geometry, read: Weights) -> list[np.ndarray]:
    experts, dim, hidden = call["experts"], call["dim"], call["hidden"]
    w1, b1 = read(call["w1"], (experts, dim, hidden)), read(call["b1"], (experts, hidden))
    w2, b2 = read(call["w2"], (experts, hidden, dim)), read(call["b2"], (experts, dim))
    blobs = []
    for e in range(experts):
        blobs += [pack_matmul(g, w1[e], b1[e], g.padded(hidden), w_shift(call)),
                  pack_matmul(g, w2[e], b2[e], dim, w_shift(call))]
    return blobs


# --------------------------------------------------------------------------------- costs

def band_rows(call: dict, g: Geometry, act_depth: int) -> int:
    """Patch rows per band of the image: as many as the working memory holds (at least one)."""
    grid_h, grid_w = call["height"] // call["patch"], call["width"] // call["patch"]
    per_row = grid_w * g.chunks(call["channels"] * call["patch"] ** 2)
    return max(1, min(grid_h, act_depth // per_row))


def cost(call: dict, g: Geometry, sizes: dict, queues: Sequence[int] | None = None) -> Cost:
    """Cycles, array cycles and DDR beats of one kernel.json call."""
    return _COSTS[call["op"]](call, g, sizes, queues)


def _embed_cost(call, g, sizes, queues) -> Cost:
    del queues
    patch, dim = call["patch"], call["dim"]
    grid_h, grid_w = call["height"] // patch, call["width"] // patch
    rows = sizes["BAND_ROWS"]
    total = Cost()
    for first in range(0, grid_h, rows):
        lines = min(rows, grid_h - first) * patch
        for _ in range(call["channels"]):  # a burst per channel of the band
            total += _loop(lines * (call["width"] // g.port_lanes), "gmem_in")
        for tile in g.row_tiles(min(rows, grid_h - first) * grid_w):
            total += tile_cost(g, tile, call["channels"] * patch * patch, dim)
    total += _loop(g.words(dim), "gmem_w")  # the class token
    total += _loop(call["tokens"] * g.words(dim), "gmem_w")
    return total


def _layernorm_cost(call, g, sizes, queues) -> Cost:
    del sizes, queues
    total = Cost()
    for _ in range(2):  # gamma, beta
        total += _loop(g.words(g.padded(call["dim"])), "gmem_w")
    for _ in range(2):  # means, deviations
        total += Cost(call["tokens"] * g.chunks(call["dim"]) + LOOP_DEPTH + STATS_DEPTH)
    return total


def _qkv_cost(call, g, sizes, queues) -> Cost:
    del sizes, queues
    head = Cost()
    for rows in g.row_tiles(call["tokens"]):
        head += tile_cost(g, rows, call["dim"], 3 * call["head_dim"], narrow=mac8(call))
    return head.scaled(call["heads"])


def score_groups_of(call: dict, g: Geometry, sizes: dict) -> int:
    """The key groups of the call's scores (attention.h.j2 score_groups): the kernel's
    SCORE_GROUPS, unless its product takes two passes (16-bit on a packed array) or its heads
    are wider than a group."""
    if (g.packed and not mac8(call)) or call["head_dim"] > sizes["GROUP_K"]:
        return 1
    return sizes["SCORE_GROUPS"]


def _attention_cost(call, g, sizes, queues) -> Cost:
    del queues
    tokens, hd = call["tokens"], call["head_dim"]
    groups = score_groups_of(call, g, sizes)

    def block(rows: int) -> Cost:  # a block of queries: their scores, then their mix
        cost = tile_cost(g, rows, hd, tokens, "keys", mac8(call), groups)
        cost += tile_cost(g, rows, tokens, hd, "values", mac8(call))
        return cost

    full, rest = divmod(tokens, g.query_tile)
    head = block(g.query_tile).scaled(full)
    if rest:
        head += block(rest)
    return head.scaled(call["heads"])


def _linear_cost(call, g, sizes, queues) -> Cost:
    del sizes, queues
    cols = g.padded(call["out_dim"]) if call["target"] == "hidden" else call["out_dim"]
    total = Cost()
    for rows in g.row_tiles(call["tokens"]):
        total += tile_cost(g, rows, call["in_dim"], cols, narrow=mac8(call))
    return total


def _route_cost(call, g, sizes, queues) -> Cost:
    """The normalised rows stored for the experts, the router's logits, the routing."""
    del sizes, queues
    total = Cost(call["tokens"] * g.chunks(call["dim"]) + LOOP_DEPTH)
    for rows in g.row_tiles(call["tokens"]):
        total += tile_cost(g, rows, call["dim"], call["experts"])
    total += Cost(call["tokens"] + ROUTE_DEPTH + 2 * call["experts"])
    return total


def _experts_cost(call, g, sizes, queues) -> Cost:
    del sizes
    if queues is None:
        raise ValueError(f"experts {call['layer']!r} need their queue lengths")
    dim, hidden = call["dim"], call["hidden"]
    total = Cost()
    for count in queues:
        for rows in g.row_tiles(int(count)):
            total += tile_cost(g, rows, dim, g.padded(hidden), narrow=mac8(call))
            total += tile_cost(g, rows, hidden, dim, narrow=mac8(call))
    return total


def _features_cost(call, g, sizes, queues) -> Cost:
    del sizes, queues
    return _loop(call["tokens"] * g.words(call["dim"]), "gmem_out")


_COSTS = {"embed": _embed_cost, "layernorm": _layernorm_cost, "qkv": _qkv_cost,
          "attention": _attention_cost, "linear": _linear_cost, "route": _route_cost,
          "experts": _experts_cost, "features": _features_cost}
