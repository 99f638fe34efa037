"""Design-space exploration: the design point that minimises latency within a budget.

Every (TILE_IN, TILE_OUT) pair from `TILE_CHOICES` (capped at the largest layer's in/out
widths: bigger tiles only pad; TILE_OUT also sets the expert MLP's lanes) with every attention
QUERY_BLOCK and expert TOKEN_BLOCK from `ROW_BLOCKS` (capped at the token count) is estimated
with m3c.estimate; designs whose resources exceed `budget` x the target's capacity are dropped;
the fastest remaining design wins, ties going to the one with fewer DSPs, then fewer BRAM18.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from m3c.estimate import (
    Design,
    EstimateError,
    Precision,
    Resources,
    check_fit,
    overflow_table,
    overflows,
    total_cycles,
    total_resources,
    unit_resources,
)
from m3c.target import Target

TILE_CHOICES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
ROW_BLOCKS = (1, 2, 4, 8, 16)  # attention queries / expert tokens side by side
DEFAULT_BUDGET = 0.8


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
                            remedy="pass a fraction of the target, e.g. --budget 0.8")
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
                            remedy="write them as TILE_INxTILE_OUT, e.g. --tiles 32x16")
    return tiles


def _candidates(capacities: dict, tiles: tuple[int, int] | None, query_block: int | None,
                token_block: int | None) -> list[tuple[tuple[int, int], int, int]]:
    """(tiles, query block, token block) to try; a forced value is the only choice of its axis."""
    ins = [t for t in TILE_CHOICES if t < capacities["max_in"]] or [1]
    outs = [t for t in TILE_CHOICES if t < capacities["max_out"]] or [1]
    ins += [t for t in TILE_CHOICES if t >= capacities["max_in"]][:1]
    outs += [t for t in TILE_CHOICES if t >= capacities["max_out"]][:1]
    pairs = [tiles] if tiles is not None else [(ti, to) for ti in ins for to in outs]
    blocks = [b for b in ROW_BLOCKS if b <= capacities["max_tokens"]] or [1]
    queries = [query_block] if query_block is not None else blocks
    tokens = [token_block] if token_block is not None else blocks
    return [(pair, q, t) for pair in pairs for q in queries for t in tokens]


def choose_design(calls: Sequence[dict], capacities: dict, target: Target,
                  precision: Precision, budget: float = DEFAULT_BUDGET,
                  tiles: tuple[int, int] | None = None, routing: dict | None = None,
                  query_block: int | None = None, token_block: int | None = None) -> Choice:
    """The fastest design within `budget`. Forced `tiles` are checked against the whole target
    (the row blocks are still explored unless forced too)."""
    budget = check_budget(budget)
    limit = 1.0 if tiles is not None else budget
    candidates = _candidates(capacities, tiles, query_block, token_block)
    best: tuple | None = None
    memo: dict = {}
    for pair, queries, tokens in candidates:
        design = Design(target, capacities, pair, precision, queries, tokens)
        used = total_resources(unit_resources(design, limit))
        if overflows(used, target, limit):
            continue
        cycles = total_cycles(calls, design, routing, memo)
        key = (cycles, used.dsp, used.bram18, pair, queries, tokens)
        if best is None or key < best[0]:
            best = (key, design, used)
    if best is None and tiles is not None:
        check_fit(Design(target, capacities, tiles, precision, query_block or 1,
                         token_block or 1), 1.0)
    if best is None:
        smallest = Design(target, capacities, (1, 1), precision)
        raise EstimateError(
            f"no tile size fits {target.name} within {budget:.0%} of its resources; even "
            f"1x1 overflows:\n{overflow_table(smallest, budget)}",
            remedy="use a narrower --precision, a larger target, or a higher --budget")
    (cycles, *_), design, used = best
    return Choice(design, cycles, used, budget, tiles is not None, len(candidates))
