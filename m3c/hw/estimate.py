"""Cycle estimates of a generated kernel, from kernel.json alone (no Vitis).

The kernel (templates/hls/units/) is one MAC array of TK x TM multiply-accumulators that runs
every matrix product, activations on chip in banked memories, and DDR reached only by
sequential word loops (weights in consumption order, the image, the features). Cycles come from
each unit's `cost` (m3c/hw/units/), which mirrors its loops trip for trip (the C-simulation
trace checks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from m3c.hw import units as hw
from m3c.hw.calls import Call
from m3c.hw.design import Design, EstimateError
from m3c.hw.units.base import Cost
from m3c.hw.units.embed import band_rows as embed_band_rows


def uniform_queues(call: dict, top_k: int) -> list[int]:
    """Balanced routing: tokens * top_k assignments spread evenly (compile-time default)."""
    total, experts = call["tokens"] * top_k, call["experts"]
    return [total // experts + (1 if e < total % experts else 0) for e in range(experts)]


def call_cost(call: dict, d: Design, queue_lengths: Sequence[int] | None = None) -> Cost:
    if call["op"] not in hw.OPS:
        raise EstimateError(f"no cycle model for op {call['op']!r} ({call['layer']})",
                            remedy="add a unit for the new op to m3c/hw/units/")
    return hw.cost(call, d.geometry, d.sizes | {"BAND_ROWS": band_rows(call, d)},
                   queue_lengths)


def band_rows(call: dict, d: Design) -> int:
    if call["op"] != "embed":
        return 1
    return embed_band_rows(Call.of(call), d.geometry, d.sizes["ACT_DEPTH"])


def call_cycles(call: dict, d: Design, queue_lengths: Sequence[int] | None = None) -> int:
    if call["op"] == "experts" and queue_lengths is None:
        raise EstimateError(f"experts {call['layer']!r} needs their queue lengths")
    return call_cost(call, d, queue_lengths).cycles


def call_macs(call: dict, top_k: int = 1) -> int:
    """Multiply-accumulates of one call (the expert layer counts top_k experts per token)."""
    return hw.macs(call, top_k)


@dataclass
class CallEstimate:
    op: str
    layer: str
    block: int | None
    part: str
    cycles: int
    macs: int
    array_cycles: int = 0
    beats: dict = field(default_factory=dict)


def label_calls(calls: Iterable[dict]) -> list[tuple[int | None, str]]:
    """(block, part) per call; parts: patch_embedding, self_attention, dense_fc, experts.

    A block's calls up to and including its attention projection are self-attention; the rest
    is its MLP: `experts` in a block with an experts call, else `dense_fc`."""
    calls = list(calls)
    moe_blocks, block = set(), None
    for call in calls:
        block = _block_of(call["layer"], block)
        if call["op"] in ("route", "experts"):
            moe_blocks.add(block)
    block, labels, projected = None, [], set()
    for call in calls:
        block = _block_of(call["layer"], block)
        if block is None or call["op"] == "embed":
            labels.append((None, "patch_embedding"))
            continue
        if block not in projected:
            if call["op"] == "linear" and call.get("source") == "attention":
                projected.add(block)
            labels.append((block, "self_attention"))
        else:
            labels.append((block, "experts" if block in moe_blocks else "dense_fc"))
    return labels


def _block_of(layer: str, current: int | None) -> int | None:
    marker = "blocks."
    if marker in layer:
        return int(layer.split(marker, 1)[1].split("/", 1)[0])
    return current  # MoE layers (moe0, moe0/Route) belong to the block they sit in


def _with_queues(calls: Sequence[dict], routing: dict[str, Sequence[int]] | None):
    """(call, its queue lengths or None, the top-k in force): expert layers use
    `routing[layer]` (uniform queues when a layer has no routing)."""
    routing = routing or {}
    top_k = 1
    for call in calls:
        if call["op"] == "route":
            top_k = call["top_k"]
        queues = None
        if call["op"] == "experts":
            queues = routing.get(call["layer"]) or uniform_queues(call, top_k)
        yield call, queues, top_k


def estimate_calls(calls: Sequence[dict], d: Design,
                   routing: dict[str, Sequence[int]] | None = None) -> list[CallEstimate]:
    """Cycles, MACs, array cycles and DDR beats of every call."""
    estimates = []
    for (call, queues, top_k), (block, part) in zip(_with_queues(calls, routing),
                                                    label_calls(calls), strict=True):
        cost = call_cost(call, d, queues)
        estimates.append(CallEstimate(call["op"], call["layer"], block, part, cost.cycles,
                                      call_macs(call, top_k), cost.array_cycles, cost.beats))
    return estimates


def cycle_key(op: str, d: Design) -> tuple:
    """What the cycle model of `op` reads of a design besides its target and precision."""
    if op == "attention":
        return d.tiles, d.query_tile
    if op in ("layernorm", "features"):
        return (d.tiles,)
    return d.tiles, d.row_tile


def total_cycles(calls: Sequence[dict], d: Design,
                 routing: dict[str, Sequence[int]] | None = None,
                 memo: dict | None = None) -> int:
    """The cycles of all calls. `memo`, shared by design points with the same target and
    precision (and the same calls and routing), keeps each call's cycles by `cycle_key`."""
    memo = {} if memo is None else memo
    total = 0
    for index, (call, queues, _) in enumerate(_with_queues(calls, routing)):
        key = (index, cycle_key(call["op"], d))
        if key not in memo:
            memo[key] = call_cost(call, d, queues).cycles
        total += memo[key]
    return total


def cycles_at_array_ii(calls: Sequence[dict], d: Design, array_ii: int,
                       routing: dict[str, Sequence[int]] | None = None) -> int:
    """The calls' cycles when the array's step loops (matmul.h.j2 `steps_<mode>`) start an
    iteration every `array_ii` cycles instead of every cycle (the II `m3c check` bounds them
    to): each issued array cycle then costs `array_ii`."""
    return sum(estimate.cycles + estimate.array_cycles * (array_ii - 1)
               for estimate in estimate_calls(calls, d, routing))


def summarize(estimates: Sequence[CallEstimate], clock_mhz: float) -> dict:
    """Totals per part, per op and per block, in cycles and milliseconds."""
    def ms(cycles: int) -> float:
        return cycles / (clock_mhz * 1e3)

    def grouped(key) -> dict:
        sums: dict = {}
        for e in estimates:
            sums[key(e)] = sums.get(key(e), 0) + e.cycles
        return {str(k): {"cycles": v, "ms": ms(v)} for k, v in sums.items()}

    cycles = sum(e.cycles for e in estimates)
    return {"cycles": cycles, "ms": ms(cycles), "macs": sum(e.macs for e in estimates),
            "parts": grouped(lambda e: e.part), "ops": grouped(lambda e: e.op),
            "blocks": grouped(lambda e: "embed" if e.block is None else e.block)}


def mac_efficiency(estimates: Sequence[CallEstimate], d: Design) -> dict:
    """Per op: MACs, cycles and the share of the array's peak (MACs / (cycles x TK x TM))."""
    rows: dict[str, dict] = {}
    for e in estimates:
        row = rows.setdefault(e.op, {"macs": 0, "cycles": 0})
        row["macs"] += e.macs
        row["cycles"] += e.cycles
    peak = d.geometry.macs
    for row in rows.values():
        row["efficiency"] = row["macs"] / (row["cycles"] * peak) if row["cycles"] else 0.0
    return rows


# ------------------------------------------------------- the MoE layer, for m3c.check.memsim


