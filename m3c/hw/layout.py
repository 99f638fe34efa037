"""The kernel's DDR weight blob and its top function's calls, for a chosen MAC array.

Every call's segments (m3c/hw/units/) are laid out one after the other in call order, each
starting on a DDR word, in the order the units read them; each call then becomes one line of
the top function (a query/key/value projection with its attention, an MLP's two layers and a
router with its experts are one unit call each).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from m3c.errors import CodegenError
from m3c.hw import units
from m3c.hw.geometry import Geometry
from m3c.hw.units.base import TASK, Rendering, UnitCall, Weights


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
                 kinds: list[str]) -> list[UnitCall]:
    """The top function's layer calls, in order (a unit's call may cover two kernel calls)."""
    rendering = Rendering(calls, layout.segments, g, sizes, kinds)
    lines, index = [], 0
    while index < len(calls):
        line, covered = units.unit_of(calls[index]["op"]).render(rendering, index)
        lines.append(line)
        index += covered
    return lines


# Arguments of these types are constants of their own table (an int row cannot hold them).
TYPED_CONSTANTS = ("var_t", "norm_t")


@dataclass
class Program:
    """The top function's layers as data (kernel.cpp.j2): a row per layer call, its layer
    function's case and then its integer arguments; typed constants (a layer norm's epsilon,
    attention's scale) in a table per type, the row holding their index; and per case the one
    call of its layer function the program loop's switch holds."""

    rows: list[list[str]]
    constants: dict[str, list[str]]
    cases: list[str]

    @property
    def width(self) -> int:
        return len(self.rows[0])


def build_program(calls: list[UnitCall]) -> Program:
    """The program of `calls`; CodegenError if two calls of one layer function take their
    arguments differently (a task register where the other has a constant, say)."""
    functions = list(dict.fromkeys(call.function for call in calls))
    constants: dict[str, list[str]] = {}
    shapes: dict[str, tuple] = {}
    rows = []
    for call in calls:
        row, shape = [str(functions.index(call.function))], []
        for arg in call.args:
            text = str(arg)
            typed = re.fullmatch(r"(\w+)\(.+\)", text)
            if text == TASK:
                shape.append(TASK)
            elif typed and typed.group(1) in TYPED_CONSTANTS:
                table = constants.setdefault(typed.group(1), [])
                if text not in table:
                    table.append(text)
                shape.append(typed.group(1))
                row.append(str(table.index(text)))
            else:
                shape.append("int")
                row.append(text)
        if shapes.setdefault(call.function, (call.buffers, tuple(shape))) != (call.buffers,
                                                                               tuple(shape)):
            raise CodegenError(f"the calls of {call.function} take their arguments "
                               "differently", remedy="report this as an m3c issue")
        rows.append(row)
    width = max(len(row) for row in rows)
    rows = [row + ["0"] * (width - len(row)) for row in rows]
    cases = [_case(function, *shapes[function]) for function in functions]
    return Program(rows, constants, cases)


def _case(function: str, buffers: str, shape: tuple) -> str:
    """The call of `function` reading its arguments from the program row `args`."""
    column, rendered = 1, []
    for kind in shape:
        if kind == TASK:
            rendered.append("task")
            continue
        value = f"args[{column}]"
        rendered.append(value if kind == "int" else f"{kind.upper()}_CONSTANTS[{value}]")
        column += 1
    return UnitCall(function, buffers, tuple(rendered)).line()
