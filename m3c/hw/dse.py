"""Design-space exploration: the design point that minimises latency within a budget.

The MAC array's TK (inputs per cycle: multiples of the memories' lanes) and TM (outputs per
cycle: a multiple of the lanes, at least a DDR word's elements, at most TK) with the rows of a
matmul tile (`ROW_TILES`) and attention's query tile (`QUERY_TILES`) are estimated with
m3c.hw.estimate; designs whose resources exceed `budget` x the caps (m3c.hw.resources.CAPS: the
share of each resource a placed design can meet) are dropped; the fastest remaining design
wins, ties going to the one with fewer DSPs, then fewer BRAM18.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from m3c.errors import CodegenError
from m3c.hw.design import Design, EstimateError, Precision
from m3c.hw.estimate import total_cycles
from m3c.hw.fit import check_fit, multiplier_trades, overflow_table, unit_resources
from m3c.hw.geometry import BANK_BITS, lane_bits
from m3c.hw.resources import Resources, limits, overflows, total_resources
from m3c.hw.target import Target

TK_CHOICES = (8, 16, 32, 48, 64, 96, 128)
TM_CHOICES = (4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64)
ROW_TILES = (32, 64, 128, 256, 320, 384)
QUERY_TILES = (32, 64, 96, 128)
DEFAULT_BUDGET = 1.0  # the caps themselves


@dataclass
class Choice:
    """The chosen design point and what it costs."""

    design: Design
    cycles: int
    resources: Resources
    budget: float
    forced: bool
    candidates: int


def check_budget(budget: float) -> float:
    if not 0 < budget <= 1:
        raise EstimateError(f"budget {budget} is not in (0, 1]",
                            remedy="pass a fraction of the caps, e.g. --budget 0.9")
    return float(budget)


def parse_tiles(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """'32x16' (or a pair) -> (32, 16); None stays None (let the exploration choose)."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.lower().replace(",", "x").split("x")
        try:
            tiles = tuple(int(part) for part in parts)
        except ValueError:
            tiles = ()
    else:
        tiles = tuple(int(t) for t in text)
    if len(tiles) != 2 or min(tiles) < 1:
        raise EstimateError(f"tiles {text!r} are not two positive integers",
                            remedy="write them as TKxTM, e.g. --tiles 48x32")
    return tiles


def _candidates(capacities: dict, precision: Precision, port_bits: int,
                tiles: tuple[int, int] | None, row_tile: int | None,
                query_tile: int | None) -> list[tuple[tuple[int, int], int, int]]:
    """(tiles, row tile, query tile) to try; a forced value is the only choice of its axis."""
    lanes = BANK_BITS // lane_bits(precision)
    port_lanes = port_bits // lane_bits(precision)
    widest = max(capacities["max_in"], capacities["max_dim"])
    ins = [t for t in TK_CHOICES if t % lanes == 0 and t < 2 * widest] or [lanes]
    pairs = [tiles] if tiles is not None else [
        (tk, tm) for tk in ins for tm in TM_CHOICES
        if tm % lanes == 0 and port_lanes <= tm <= tk]
    tokens = capacities["max_tokens"]
    rows = [row_tile] if row_tile else [r for r in ROW_TILES if r < 2 * tokens] or [ROW_TILES[0]]
    queries = [query_tile] if query_tile else [q for q in QUERY_TILES if q < 2 * tokens] or [
        QUERY_TILES[0]]
    return [(pair, r, q) for pair in pairs for r in rows for q in queries]


def _fitted(design: Design, limit: float) -> tuple[Design, Resources] | None:
    used = total_resources(unit_resources(design, limit))
    return None if overflows(used, design.target, limit) else (design, used)


def _bind_multipliers(design: Design, limit: float, forced: frozenset[str] | None
                      ) -> tuple[Design, Resources] | None:
    """The design with its multiplier groups bound to fit `limit` x the caps, and its
    resources; None if it cannot fit. All in fabric if that fits (the DSPs are the array's);
    a fixed-point design over its LUTs alone moves groups to the DSPs its array leaves free,
    the most LUTs saved per DSP first (skipping a group the DSPs left cannot take), until its
    LUTs fit. `forced`: the binding to take."""
    if forced is not None:
        return _fitted(replace(design, dsp_multipliers=forced), limit)
    used = total_resources(unit_resources(design, limit))
    over = {row["resource"] for row in overflows(used, design.target, limit)}
    if not over:
        return design, used
    if over != {"lut"} or design.precision.floating:
        return None
    allowed = limits(design.target, limit)
    spare_dsps, excess_luts = allowed.dsp - used.dsp, used.lut - allowed.lut
    chosen: set[str] = set()
    for group, luts, dsps in multiplier_trades(design):
        if excess_luts <= 0:
            break
        if dsps <= spare_dsps:
            chosen.add(group)
            spare_dsps -= dsps
            excess_luts -= luts
    return _fitted(replace(design, dsp_multipliers=frozenset(chosen)), limit)


def choose_design(calls: Sequence[dict], capacities: dict, target: Target,
                  precision: Precision, budget: float = DEFAULT_BUDGET,
                  tiles: tuple[int, int] | None = None, routing: dict | None = None,
                  row_tile: int | None = None, query_tile: int | None = None,
                  dsp_multipliers: frozenset[str] | None = None) -> Choice:
    """The fastest design within `budget` x the caps. Forced `tiles` are checked against the
    caps themselves (the row and query tiles are still explored unless forced too); the
    multipliers beside the array go to DSPs only as far as a design needs to fit its LUTs
    (unless `dsp_multipliers` forces the groups)."""
    budget = check_budget(budget)
    limit = 1.0 if tiles is not None else budget
    try:
        candidates = _candidates(capacities, precision, target.hp_port_bits, tiles, row_tile,
                                 query_tile)
        best: tuple | None = None
        memo: dict = {}
        for pair, rows, queries in candidates:
            bare = Design(target, capacities, pair, precision, rows, queries)
            fitted = _bind_multipliers(bare, limit, dsp_multipliers)
            if fitted is None:
                continue
            design, used = fitted
            cycles = total_cycles(calls, design, routing, memo)
            key = (cycles, used.dsp, used.bram18, pair, rows, queries)
            if best is None or key < best[0]:
                best = (key, design, used)
        if best is None and tiles is not None:
            check_fit(Design(target, capacities, tiles, precision, row_tile or ROW_TILES[0],
                             query_tile or QUERY_TILES[0]), 1.0)
    except CodegenError as error:
        raise EstimateError(error.message, remedy=error.remedy) from None
    if best is None:
        lanes = BANK_BITS // lane_bits(precision)
        smallest = Design(target, capacities, (lanes, lanes), precision, ROW_TILES[0],
                          QUERY_TILES[0])
        raise EstimateError(
            f"no array size fits {target.name} within {budget:.0%} of its caps; even "
            f"{lanes}x{lanes} overflows:\n{overflow_table(smallest, budget)}",
            remedy="use a narrower --precision, a larger target, or a higher --budget")
    (cycles, *_), design, used = best
    return Choice(design, cycles, used, budget, tiles is not None, len(candidates))
