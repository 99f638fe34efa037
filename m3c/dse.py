"""Design-space exploration: the linear unit's tile sizes that minimise latency within a budget.

Every (TILE_IN, TILE_OUT) pair from `TILE_CHOICES` (capped at the largest layer's in/out
widths: bigger tiles only pad) is estimated with m3c.estimate; designs whose resources exceed
`budget` x the target's capacity are dropped; the fastest remaining design wins, ties going to
the one with fewer DSPs, then fewer BRAM18. The other units have no free parameter yet.
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
    estimate_calls,
    overflow_table,
    overflows,
    total_resources,
    unit_resources,
)
from m3c.target import Target

TILE_CHOICES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
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


def _candidates(capacities: dict) -> list[tuple[int, int]]:
    ins = [t for t in TILE_CHOICES if t < capacities["max_in"]] or [1]
    outs = [t for t in TILE_CHOICES if t < capacities["max_out"]] or [1]
    ins += [t for t in TILE_CHOICES if t >= capacities["max_in"]][:1]
    outs += [t for t in TILE_CHOICES if t >= capacities["max_out"]][:1]
    return [(ti, to) for ti in ins for to in outs]


def latency_cycles(calls: Sequence[dict], design: Design, routing: dict | None = None) -> int:
    return sum(e.cycles for e in estimate_calls(calls, design, routing))


def choose_design(calls: Sequence[dict], capacities: dict, target: Target,
                  precision: Precision, budget: float = DEFAULT_BUDGET,
                  tiles: tuple[int, int] | None = None, routing: dict | None = None) -> Choice:
    """Forced `tiles` are checked against the whole target; otherwise explore within budget."""
    budget = check_budget(budget)
    if tiles is not None:
        design = Design(target, capacities, tiles, precision)
        used = check_fit(design, 1.0)
        return Choice(design, latency_cycles(calls, design, routing), used, budget, True, 1)
    best: tuple | None = None
    candidates = _candidates(capacities)
    for pair in candidates:
        design = Design(target, capacities, pair, precision)
        used = total_resources(unit_resources(design, budget))
        if overflows(used, target, budget):
            continue
        cycles = latency_cycles(calls, design, routing)
        key = (cycles, used.dsp, used.bram18, pair)
        if best is None or key < best[0]:
            best = (key, design, used)
    if best is None:
        smallest = Design(target, capacities, (1, 1), precision)
        raise EstimateError(
            f"no tile size fits {target.name} within {budget:.0%} of its resources; even "
            f"1x1 overflows:\n{overflow_table(smallest, budget)}",
            remedy="use a narrower --precision, a larger target, or a higher --budget")
    (cycles, *_), design, used = best
    return Choice(design, cycles, used, budget, False, len(candidates))
