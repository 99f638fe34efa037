"""The design's resources, unit by unit (each unit's logic and arrays, m3c.hw.units), and
whether they fit the target within a budget."""

from __future__ import annotations

from m3c.hw import units
from m3c.hw.design import Design, EstimateError
from m3c.hw.resources import (
    Array,
    Resources,
    bind_memories,
    overflows,
    total_resources,
)


def unit_arrays(design: Design) -> list[Array]:
    """The kernel's arrays, named as its variables, sized by the capacities and the geometry."""
    return [array for unit in units.UNITS for array in unit.arrays(design)]


def storage_bindings(design: Design, budget: float = 1.0) -> dict[str, str]:
    """"unit.variable" -> the bind_storage impl the kernel declares for each array."""
    return {f"{b.array.unit}.{b.array.name}": b.impl
            for b in bind_memories(unit_arrays(design), design.target, budget)}


def unit_logic(design: Design) -> dict[str, Resources]:
    """Each unit's arithmetic and control (DSP, LUT, FF, ROM copies) with its multipliers
    bound as the design says, without its arrays."""
    logic = {}
    for unit in units.UNITS:
        own, groups = unit.logic(design), unit.multipliers(design)
        if own is None and not groups:
            continue
        total = own if own is not None else Resources()
        for group in groups:
            total = total + group.bound(design.dsp_multipliers)
        logic[unit.name] = total
    return logic


def multiplier_trades(design: Design) -> list[tuple[str, int, int]]:
    """(group, LUTs it takes in fabric, DSPs it takes bound to them) of every multiplier
    group, the most LUTs saved per DSP first."""
    trades: dict[str, tuple[int, int]] = {}
    for unit in units.UNITS:
        for group in unit.multipliers(design):
            luts, dsps = trades.get(group.group, (0, 0))
            fabric, dsp = group.bound(frozenset()), group.bound(frozenset({group.group}))
            trades[group.group] = (luts + fabric.lut, dsps + dsp.dsp)
    return sorted(((name, luts, dsps) for name, (luts, dsps) in trades.items()),
                  key=lambda trade: (-trade[1] / max(trade[2], 1), trade[0]))


def unit_resources(design: Design, budget: float = 1.0) -> dict[str, Resources]:
    """Each unit's logic plus its arrays as bound by `bind_memories`."""
    units = unit_logic(design)
    for binding in bind_memories(unit_arrays(design), design.target, budget):
        field_name = {"registers": "ff", "lutram": "lut"}.get(binding.storage, binding.storage)
        unit = binding.array.unit
        units[unit] = units.get(unit, Resources()) + Resources(**{field_name: binding.blocks})
    return units


def overflow_table(design: Design, budget: float) -> str:
    """What overflows, one line per resource, with the units that use most of it."""
    units = unit_resources(design, budget)
    lines = []
    for row in overflows(total_resources(units), design.target, budget):
        kind = row["resource"]
        users = sorted(units, key=lambda unit: -getattr(units[unit], kind))[:2]
        top = ", ".join(f"{unit} {getattr(units[unit], kind)}" for unit in users)
        lines.append(f"{kind:<7} {row['used']:>8} used > {row['available']:>8} available "
                     f"(most: {top})")
    return "\n".join(lines)


def check_fit(design: Design, budget: float = 1.0) -> Resources:
    """Total resources of `design`; raises EstimateError with a table if it does not fit."""
    used = total_resources(unit_resources(design, budget))
    if overflows(used, design.target, budget):
        raise EstimateError(
            f"array {design.tiles[0]}x{design.tiles[1]} does not fit {design.target.name} "
            f"({budget:.0%} of its resource caps):\n{overflow_table(design, budget)}",
            remedy="choose smaller --tiles, or let m3c pick them (omit --tiles)")
    return used
