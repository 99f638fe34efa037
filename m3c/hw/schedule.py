"""The MoE layer's expert-major timeline, for m3c.check.memsim and the report's plot: each
expert's panels stream in while it computes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from m3c.hw.calls import Call, ExpertsCall
from m3c.hw.design import Design
from m3c.hw.units.base import LOOP_DEPTH, MAC_DEPTH, drain, mac8, min_span, sweep, tile_cost
from m3c.hw.units.moe import expert_words


@dataclass
class ExpertStep:
    """One expert of the expert-major loop: its panels stream in while it computes."""

    expert: int
    tokens: int
    load_start: int
    load_end: int
    compute_start: int
    compute_end: int


def expert_load_cycles(call: dict | ExpertsCall, d: Design) -> int:
    """One expert's weights from DDR, a word per cycle (fc1 and fc2 blobs)."""
    return sum(expert_words(d.geometry, Call.of(call)))


def expert_compute_cycles(call: dict | ExpertsCall, d: Design, count: int) -> int:
    """An expert on `count` tokens with its weights at hand: the array's steps without
    waiting for panels (what a design holding every expert on chip would take)."""
    call, g = Call.of(call), d.geometry
    total = 0
    for rows in g.row_tiles(count):
        for in_dim, cols in ((call.dim, g.padded(call.hidden)),
                             (call.hidden, call.dim)):
            k_panels, m_panels = g.panels(in_dim, cols)
            steps = k_panels * m_panels
            span = sweep(g, rows, mac8(call))
            total += steps * (max(span, min_span(g)) + MAC_DEPTH) + drain(g) + LOOP_DEPTH
    return total


def expert_schedule(call: dict | ExpertsCall, d: Design,
                    queue_lengths: Sequence[int]) -> list[ExpertStep]:
    """Timeline of the experts call: experts with queued tokens in index order, each step the
    expert's tiles (panel loads overlapping the array's rows, m3c/hw/units/moe.py)."""
    call, g = Call.of(call), d.geometry
    load = expert_load_cycles(call, d)
    clock = 0
    steps: list[ExpertStep] = []
    for expert, count in enumerate(queue_lengths):
        if count <= 0:
            continue
        compute = 0
        for rows in g.row_tiles(int(count)):
            narrow = mac8(call)
            compute += tile_cost(g, rows, call.dim, g.padded(call.hidden),
                                    narrow=narrow).cycles
            compute += tile_cost(g, rows, call.hidden, call.dim, narrow=narrow).cycles
        steps.append(ExpertStep(expert, int(count), clock, clock + load, clock,
                                clock + compute))
        clock += compute
    return steps
