"""The kernel's DDR weight blob and its top function's calls, for a chosen MAC array.

Every call's segments (m3c/hw/units/) are laid out one after the other in call order, each
starting on a DDR word, in the order the units read them; each call then becomes one line of
the top function (a query/key/value projection with its attention, an MLP's two layers and a
router with its experts are one unit call each).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3c.hw import units
from m3c.hw.geometry import Geometry
from m3c.hw.units.base import Rendering, Weights


@dataclass
class DdrLayout:
    """The blob as lanes (weight codes or fp32 values) and each call's segments in words."""

    lanes: np.ndarray
    segments: list[dict[str, list[int]]]  # per call: segment -> [first word, words]

    @property
    def words(self) -> int:
        return len(self.lanes) // self.port_lanes

    port_lanes: int = 1


def layout_weights(calls: list[dict], g: Geometry, values: np.ndarray) -> DdrLayout:
    """`values`: the kernel's constants at their kernel.json offsets (raw weight_t codes in
    fixed point, fp32 values in float), packed into DDR lanes."""
    read = Weights(values)
    parts, segments, offset = [], [], 0
    for call in calls:
        placed = {}
        for name, lanes in units.segments(call, g, read).items():
            words = len(lanes) // g.port_lanes
            placed[name] = [offset, words]
            parts.append(lanes)
            offset += words
        segments.append(placed)
    lanes = np.concatenate(parts) if parts else np.zeros(g.port_lanes, values.dtype)
    return DdrLayout(lanes, segments, g.port_lanes)


def narrow_kinds(calls: list[dict]) -> list[str]:
    """The types the kernel rounds to (m3c::narrowed's cases): layers' result types and the
    8-bit layers' operand types."""
    kinds = {call["narrow"]["cpp"] for call in calls if "narrow" in call}
    for call in calls:
        spec = call.get("mac8", {})
        kinds |= {spec[key]["cpp"] for key in ("x", "x2") if key in spec}
    return sorted(kinds)


def render_calls(calls: list[dict], layout: DdrLayout, g: Geometry, sizes: dict,
                 kinds: list[str]) -> list[str]:
    """The top function's unit calls, in order (a unit's call may cover two kernel calls)."""
    rendering = Rendering(calls, layout.segments, g, sizes, kinds)
    lines, index = [], 0
    while index < len(calls):
        line, covered = units.unit_of(calls[index]["op"]).render(rendering, index)
        lines.append(line)
        index += covered
    return lines
