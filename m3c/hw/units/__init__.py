"""The hardware units, one class per unit (m3c.hw.units.base.Unit): template, HLS functions,
kernel.json ops, DDR segments, cost, MACs, top-function call, on-chip arrays and logic side
by side. `UNITS` is the one list; everything else finds a unit through it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from m3c.errors import CodegenError
from m3c.hw.calls import Call
from m3c.hw.geometry import Geometry
from m3c.hw.units.attention import Attention
from m3c.hw.units.base import Cost, Unit, Weights
from m3c.hw.units.embed import Embed
from m3c.hw.units.layernorm import LayerNorm
from m3c.hw.units.linear import Linear
from m3c.hw.units.moe import MoE
from m3c.hw.units.shared import Activations, Features, Interfaces, Matmul, Memory

# Function order is the top function's allocation pragmas' order.
UNITS: tuple[Unit, ...] = (Embed(), LayerNorm(), Attention(), Linear(), MoE(), Matmul(),
                           Features(), Memory(), Activations(), Interfaces())
FUNCTIONS = tuple(function for unit in UNITS for function in unit.functions)
LAYERS = tuple(function for unit in UNITS for function in unit.layers)
HELPERS = tuple(function for unit in UNITS for function in unit.helpers)
_BY_OP = {op: unit for unit in UNITS for op in unit.ops}
OPS = tuple(_BY_OP)
WEIGHT_ARGS = {op: args for unit in UNITS for op, args in unit.weight_args.items()}
NARROWABLE = frozenset(op for unit in UNITS for op in unit.narrowable)


def unit_of(op: str) -> Unit:
    """The unit that runs kernel.json op `op`."""
    if op not in _BY_OP:
        raise CodegenError(f"no hardware unit runs op {op!r}",
                           remedy="add a unit for it to m3c/hw/units/ (docs/architecture.md)")
    return _BY_OP[op]


def segments(call: dict | Call, g: Geometry, read: Weights) -> dict[str, np.ndarray]:
    record = Call.of(call)
    return unit_of(record.OP).segments(record, g, read)


def cost(call: dict | Call, g: Geometry, sizes: dict, queues: Sequence[int] | None = None) -> Cost:
    record = Call.of(call)
    return unit_of(record.OP).cost(record, g, sizes, queues)


def macs(call: dict | Call, top_k: int = 1) -> int:
    """Multiply-accumulates of one call (the expert layer counts top_k experts per token)."""
    record = Call.of(call)
    return unit_of(record.OP).macs(record, top_k)
