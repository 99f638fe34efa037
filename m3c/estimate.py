"""Resource and cycle estimates of a generated kernel, from kernel.json alone (no Vitis).

The models mirror the op library (templates/hls/kernel/m3c_ops.h.j2): one shared unit per op
sized by the capacities, a straight-line call sequence, weights and activations in DDR behind
the m_axi bundles `gmem_w` (weights), `gmem_ain` (activation reads), `gmem_aout` (writes).

Resources (per unit, UltraScale+ DSP48E2 fabric):
- a multiply-accumulate (MAC) costs `MAC_DSP_FLOAT` = 5 DSPs in fp32 (3 for the multiplier,
  2 for the adder); in fixed point ceil(a/27)*ceil(b/18) DSPs for an a x b-bit product (one
  DSP48E2 for 16 x 16), the accumulation riding in the DSP's post-adder;
- linear: TILE_IN x TILE_OUT MACs plus TILE_OUT activation units (the store loop unrolls over
  the tile's outputs), divided by the loop's II (operators are shared within an iteration when
  the port limits II above 1); attention: 2 x QUERY_BLOCK x MAX_HEAD_DIM MACs (the unrolled
  score dot products and value-row accumulations of a block of queries, keys and values
  reshaped to one row per word) and QUERY_BLOCK exp units;
  layernorm: 1 MAC; route: MAX_EXPERTS MACs (every expert's logit at once); expert_ffn:
  2 x TOKEN_BLOCK x TILE_OUT MACs (its two matrix loops run EXPERT_LANES = TILE_OUT outputs of
  TOKEN_BLOCK tokens at once) + 1 (the scaled scatter-add);
- arrays: each partition bank of depth d and width w takes the cheapest BRAM18 shape
  (16K x 1 ... 512 x 36, ceil(w / shape width) x ceil(d / shape depth) blocks) or, from
  `URAM_MIN_BITS` up and while the target's URAMs last, URAM blocks of 4K x 72; banks up to
  `REGISTER_MAX_BITS` become flip-flops (completely partitioned arrays are registers).

Cycles: a pipelined loop of trip count n takes n * II + depth; II is the larger of the
loop-carried recurrence (a float accumulation waits for the adder: II = `FADD_LATENCY`;
fixed point: 1) and the port limit: per bundle, the beats its accesses in one iteration need
(elements * bits / port bits, rounded up, each distinct array at least one beat), and two
reads per cycle per on-chip bank. Every DDR loop pays `DDR_LATENCY` once for its first beat.
The MoE layer runs the double-buffered expert loop: after the first load, step s takes
max(compute of expert s, load of expert s + 1) with the real queue lengths; within an expert,
gather, MLP and scatter-add are dataflow processes, so a block of TOKEN_BLOCK tokens costs
the slowest of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from m3c.errors import M3CError
from m3c.target import Target

MAC_DSP_FLOAT = 5
FADD_LATENCY = 4
FMUL_LATENCY = 3
SPECIAL_LATENCY = {"exp": 20, "div": 16, "sqrt": 16, "gelu": 28}
DDR_LATENCY = 64  # cycles to the first beat of a burst (~210 ns at 300 MHz)
BRAM18_SHAPES = [(16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36)]
URAM_DEPTH, URAM_WIDTH = 4096, 72
URAM_MIN_BITS = 128 * 1024  # large banks go to URAM (bind_storage impl=uram)
REGISTER_MAX_BITS = 1024  # smaller banks go to LUTRAM
LUTRAM_BITS_PER_LUT = 32  # a dual-ported LUTRAM holds 32 bits per LUT6 (RAM32X1D-like)
DSP_ACC_BITS = 48  # the DSP48E2 post-adder / accumulator width
# Fabric per unit: (LUT, FF). Special functions are fp32 cores (the templates evaluate them
# in float whatever the storage type); DSPs of special functions in SPECIAL_DSP.
SPECIAL_FABRIC = {"exp": (900, 1100), "div": (800, 1300), "sqrt": (600, 900),
                  "gelu": (1500, 1800)}
SPECIAL_DSP = {"exp": 7, "div": 0, "sqrt": 0, "gelu": 10}
FLOAT_MAC_FABRIC = (320, 520)
UNIT_CONTROL = (600, 800)
MAXI_BUNDLE = (1600, 2600)
BUNDLES = 5  # weights, arena read, arena write, image, features (kernel.cpp.j2)


class EstimateError(M3CError):
    """A design cannot be estimated or does not fit its target."""


@dataclass(frozen=True)
class Precision:
    """Element widths of the hardware types (bits) and whether they are floating point."""

    data: int = 32
    weight: int = 32
    acc: int = 32
    prob: int = 32
    floating: bool = True
    logit: int = 32

    @classmethod
    def from_types(cls, types: dict | None) -> Precision:
        """From project.json["types"]: per class ("data", "weight", "acc", "prob") either a
        dict with "width" (and "kind": "float" or "fixed") or a C type name ("float",
        "ap_fixed<16,6>"); fp32 for what is absent."""
        if not types:
            return cls()
        parsed = {name: _type_width(types.get(name, "float")) for name in
                  ("data", "weight", "acc", "prob", "logit")}
        return cls(**{name: width for name, (width, _) in parsed.items()},
                   floating=parsed["data"][1] and parsed["weight"][1])

    @property
    def mac_dsp(self) -> int:
        if self.floating:
            return MAC_DSP_FLOAT
        wide, narrow = max(self.data, self.weight), min(self.data, self.weight)
        return math.ceil(wide / 27) * math.ceil(narrow / 18)

    @property
    def acc_ii(self) -> int:
        """II of a loop that accumulates into one variable."""
        return FADD_LATENCY if self.floating else 1

    @property
    def mac_latency(self) -> int:
        return FMUL_LATENCY + FADD_LATENCY if self.floating else 3


def _type_width(spec) -> tuple[int, bool]:
    """(bits, is_float) of one hardware type description."""
    if isinstance(spec, dict):
        kind = spec.get("kind", "float" if spec.get("cpp") == "float" else "fixed")
        return int(spec.get("width", 32)), kind == "float"
    text = str(spec).replace(" ", "")
    if text.startswith(("ap_fixed<", "ap_ufixed<", "ap_int<", "ap_uint<")):
        return int(text.split("<", 1)[1].split(",")[0].rstrip(">")), False
    if text in ("float", "double", "half"):
        return {"float": 32, "double": 64, "half": 16}[text], True
    raise EstimateError(f"cannot estimate hardware type {spec!r}",
                        remedy="describe it as {'width': bits, 'kind': 'fixed' | 'float'}")


@dataclass(frozen=True)
class Design:
    """One design point: what the estimates need besides the call list."""

    target: Target
    capacities: dict
    tiles: tuple[int, int] = (16, 16)
    precision: Precision = field(default_factory=Precision)
    query_block: int = 1  # attention queries computed side by side
    token_block: int = 1  # an expert's queued tokens computed side by side

    @property
    def port_bits(self) -> int:
        return self.target.hp_port_bits

    def beats(self, elements: int, bits: int) -> int:
        """AXI beats to move `elements` of `bits` each (at least one per access)."""
        return max(1, math.ceil(elements * bits / self.port_bits))


# ---------------------------------------------------------------------------------- resources

@dataclass
class Resources:
    dsp: int = 0
    lut: int = 0
    ff: int = 0
    bram18: int = 0
    uram: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(**{k: getattr(self, k) + getattr(other, k) for k in KINDS})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


KINDS = ("dsp", "lut", "ff", "bram18", "uram")


def capacity(target: Target) -> Resources:
    return Resources(dsp=target.dsp, lut=target.lut, ff=target.ff, bram18=2 * target.bram36,
                     uram=target.uram)


@dataclass(frozen=True)
class Array:
    """An on-chip array of a unit: `banks` partitions of `depth` x `width` bits each."""

    unit: str
    name: str
    depth: int
    width: int
    banks: int = 1

    @property
    def bank_bits(self) -> int:
        return self.depth * self.width


@dataclass(frozen=True)
class Binding:
    array: Array
    storage: str  # "registers", "lutram", "bram18" or "uram"
    blocks: int  # flip-flops, LUTs, BRAM18s or URAMs, all banks together

    @property
    def impl(self) -> str:
        """The bind_storage `impl` the kernel declares for the array ("registers": none, the
        array is partitioned into scalars)."""
        return {"bram18": "bram"}.get(self.storage, self.storage)


def bram18_blocks(depth: int, width: int) -> int:
    """BRAM18s for one bank in its cheapest aspect ratio (16K x 1 ... 512 x 36)."""
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in BRAM18_SHAPES)


def uram_blocks(depth: int, width: int) -> int:
    return math.ceil(width / URAM_WIDTH) * math.ceil(depth / URAM_DEPTH)


def bind_memories(arrays: Sequence[Array], target: Target, budget: float = 1.0) -> list[Binding]:
    """Storage of every array. Banks of one word are registers; banks up to REGISTER_MAX_BITS
    are LUTRAM; from URAM_MIN_BITS up, the largest banks take URAM while `budget` x the
    target's URAMs last; the rest BRAM18."""
    uram_left = math.floor(target.uram * budget)
    bindings = []
    for array in sorted(arrays, key=lambda a: (-a.bank_bits, a.unit, a.name)):
        if array.depth == 1:
            bindings.append(Binding(array, "registers", array.banks * array.bank_bits))
            continue
        if array.bank_bits <= REGISTER_MAX_BITS:
            luts = math.ceil(array.bank_bits / LUTRAM_BITS_PER_LUT)
            bindings.append(Binding(array, "lutram", array.banks * luts))
            continue
        urams = array.banks * uram_blocks(array.depth, array.width)
        if array.bank_bits >= URAM_MIN_BITS and urams <= uram_left:
            uram_left -= urams
            bindings.append(Binding(array, "uram", urams))
        else:
            bindings.append(Binding(array, "bram18",
                                    array.banks * bram18_blocks(array.depth, array.width)))
    return bindings


def _macs(count: int, p: Precision) -> Resources:
    if p.floating:
        lut, ff = FLOAT_MAC_FABRIC
    else:
        lut, ff = p.acc // 2, p.acc + p.data + p.weight  # rounding + pipeline registers
        if p.acc > DSP_ACC_BITS:  # the sum leaves the DSP: a fabric adder per MAC
            lut += p.acc
    return Resources(dsp=count * p.mac_dsp, lut=count * lut, ff=count * ff)


def _special(name: str, count: int = 1) -> Resources:
    lut, ff = SPECIAL_FABRIC[name]
    return Resources(dsp=count * SPECIAL_DSP[name], lut=count * lut, ff=count * ff)


def _control() -> Resources:
    return Resources(lut=UNIT_CONTROL[0], ff=UNIT_CONTROL[1])


def unit_logic(design: Design) -> dict[str, Resources]:
    """Each shared unit's arithmetic and control (DSP, LUT, FF), without its arrays."""
    p = design.precision
    ti, to = design.tiles
    # Inside a pipeline of II > 1, HLS binds one operator to several operations of the same
    # iteration: the MAC array needs TILE_IN*TILE_OUT/II multipliers, the store loop
    # TILE_OUT/II activation units, where II is set by the gmem_ain / gmem_aout beats.
    mac_ii, store_ii = design.beats(ti, p.data), design.beats(to, p.data)
    return {
        "linear": _control() + _macs(math.ceil(ti * to / mac_ii), p)
        + _special("gelu", math.ceil(to / store_ii)) + Resources(ff=ti * to * p.weight),
        "layernorm": _control() + _macs(1, p) + _special("div") + _special("sqrt"),
        "attention": _control()
        + _macs(2 * design.query_block * design.capacities["max_head_dim"], p)
        + _special("exp", design.query_block) + _special("div"),
        "route": _control() + _macs(design.capacities["max_experts"], p) + _special("exp")
        + _special("div"),
        "expert_ffn": _control() + _macs(2 * design.token_block * to + 1, p)
        + _special("gelu"),
        "elementwise": _control() + _macs(1, p),  # add, patchify, finish_embedding, narrow
        "interfaces": Resources(lut=BUNDLES * MAXI_BUNDLE[0], ff=BUNDLES * MAXI_BUNDLE[1]),
    }


# The expert ping-pong slots among unit_arrays (what a different expert schedule replaces).
SLOTS = ("ping", "pong")
SLOT_ARRAYS = frozenset(f"{slot}_{part}" for slot in SLOTS for part in ("w1", "w2", "b1", "b2"))


def unit_arrays(design: Design) -> list[Array]:
    """The static and local arrays of the op library, sized by the capacities, named as the
    kernel's variables (each has the bind_storage its `bind_memories` binding says)."""
    c, p = design.capacities, design.precision
    to = design.tiles[1]
    tokens, dim, hd = c["max_tokens"], c["max_dim"], c["max_head_dim"]
    experts, hidden = c["max_experts"], c["max_expert_hidden"]
    block, token_block = design.query_block, design.token_block
    lanes_h, lanes_d = min(to, hidden), min(to, dim)  # the slots' reshape factors
    slots = []
    for slot in SLOTS:  # rows reshaped into words of EXPERT_LANES (= TILE_OUT) weights
        slots += [Array("expert_ffn", f"{slot}_w1", dim * math.ceil(hidden / lanes_h),
                        lanes_h * p.weight),
                  Array("expert_ffn", f"{slot}_w2", hidden * math.ceil(dim / lanes_d),
                        lanes_d * p.weight),
                  Array("expert_ffn", f"{slot}_b1", math.ceil(hidden / lanes_h),
                        lanes_h * p.weight),
                  Array("expert_ffn", f"{slot}_b2", math.ceil(dim / lanes_d),
                        lanes_d * p.weight)]
    return [
        Array("linear", "acc", tokens, p.acc, banks=to),  # partitioned on its TILE_OUT axis
        Array("layernorm", "row", dim, p.data),
        Array("attention", "keys", tokens, hd * p.data),  # reshaped: a row per word
        Array("attention", "values", tokens, hd * p.data),
        Array("attention", "query", 1, p.data, banks=block * hd),
        Array("attention", "mixed", 1, p.acc, banks=block * hd),
        Array("attention", "weights", tokens, p.prob, banks=block),
        Array("attention", "scores", tokens, p.logit, banks=block),
        Array("route", "table", dim, experts * p.weight),  # reshaped: a row per word
        Array("route", "sums", 1, p.acc, banks=experts),
        Array("route", "queue_tokens", experts * tokens, 32),
        Array("route", "queue_scores", experts * tokens, p.prob),
        *slots,
        Array("expert_ffn", "sums", 1, p.acc, banks=token_block * to),
        Array("expert_ffn", "hidden_rows", hidden, p.data, banks=token_block),
        Array("expert_ffn", "block_rows", dim, p.data, banks=token_block),
        Array("expert_ffn", "out_rows", dim, p.data, banks=token_block),
        Array("expert_ffn", "rows", rows_stream_depth(c), p.data),  # gather -> MLP FIFO
        Array("expert_ffn", "results", rows_stream_depth(c), p.data),  # MLP -> scatter FIFO
    ]


def rows_stream_depth(capacities: dict) -> int:
    """Depth of the expert dataflow's row FIFOs: one row, so gather can run a row ahead."""
    return capacities["max_dim"]


def storage_bindings(design: Design, budget: float = 1.0) -> dict[str, str]:
    """"unit.variable" -> the bind_storage impl the kernel declares for each array."""
    return {f"{b.array.unit}.{b.array.name}": b.impl
            for b in bind_memories(unit_arrays(design), design.target, budget)}


def unit_resources(design: Design, budget: float = 1.0) -> dict[str, Resources]:
    """Each unit's logic plus its arrays as bound by `bind_memories`."""
    units = unit_logic(design)
    for binding in bind_memories(unit_arrays(design), design.target, budget):
        field_name = {"registers": "ff", "lutram": "lut"}.get(binding.storage, binding.storage)
        units[binding.array.unit] = units[binding.array.unit] + Resources(
            **{field_name: binding.blocks})
    return units


def total_resources(units: dict[str, Resources]) -> Resources:
    total = Resources()
    for resources in units.values():
        total = total + resources
    return total


def overflows(used: Resources, target: Target, budget: float = 1.0) -> list[dict]:
    """Rows (resource, used, available) for every resource above budget x capacity."""
    available = capacity(target)
    rows = []
    for kind in KINDS:
        limit = math.floor(getattr(available, kind) * budget)
        if getattr(used, kind) > limit:
            rows.append({"resource": kind, "used": getattr(used, kind), "available": limit})
    return rows


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
            f"tiles {design.tiles[0]}x{design.tiles[1]} do not fit {design.target.name} "
            f"({budget:.0%} of its resources):\n{overflow_table(design, budget)}",
            remedy="choose smaller --tiles, or let m3c pick them (omit --tiles)")
    return used


# ------------------------------------------------------------------------------------- cycles

def pipelined(trip: int, ii: int, depth: int) -> int:
    return trip * ii + depth if trip > 0 else 0


def _linear(call: dict, d: Design) -> int:
    p, (ti, to) = d.precision, d.tiles
    n, k, m = call["tokens"], call["in_dim"], call["out_dim"]
    out_tiles, in_tiles = math.ceil(m / to), math.ceil(k / ti)
    init = pipelined(n, d.beats(to, p.weight), DDR_LATENCY)
    load = pipelined(ti, d.beats(to, p.weight), DDR_LATENCY)
    # Each token's TILE_IN inputs come over gmem_ain; the adder chain sets the depth.
    mac = pipelined(n, d.beats(ti, p.data), DDR_LATENCY + p.mac_latency + ti * p.acc_ii)
    act_depth = SPECIAL_LATENCY["gelu"] if call.get("activation", "none") != "none" else 1
    store = pipelined(n, d.beats(to, p.data), DDR_LATENCY + act_depth)
    return out_tiles * (init + in_tiles * (load + mac) + store)


def _layernorm(call: dict, d: Design) -> int:
    p = d.precision
    n, dim = call["tokens"], call["dim"]
    passes = 2 * pipelined(dim, p.acc_ii, DDR_LATENCY)  # mean, then variance
    scale = SPECIAL_LATENCY["sqrt"] + SPECIAL_LATENCY["div"]
    write = pipelined(dim, 2, DDR_LATENCY)  # gamma and beta share gmem_w
    return n * (passes + scale + write)


def _attention(call: dict, d: Design) -> int:
    """Per block of QUERY_BLOCK queries: their rows into registers, one key row per cycle
    scored against all of them (head_dim MACs each), their softmaxes side by side, one value
    row per cycle into their accumulators, then their output rows."""
    p, block = d.precision, d.query_block
    n, dim, heads = call["tokens"], call["dim"], call["heads"]
    hd = dim // heads
    load_kv = pipelined(n * hd, 2, DDR_LATENCY)  # keys and values share gmem_ain
    queries = pipelined(block * hd, 1, DDR_LATENCY)
    scores = pipelined(n, 1, p.mac_latency + hd * p.acc_ii)  # no sum spans two scores
    softmax = (pipelined(n, p.acc_ii, SPECIAL_LATENCY["exp"])
               + pipelined(block, 1, SPECIAL_LATENCY["div"]))
    mix = pipelined(n, p.acc_ii, p.mac_latency)  # each accumulator adds once per cycle
    store = pipelined(block * hd, 1, DDR_LATENCY + p.mac_latency)
    return heads * (load_kv + math.ceil(n / block) * (queries + scores + softmax + mix + store))


def _add(call: dict, d: Design) -> int:
    return pipelined(call["count"], 2, DDR_LATENCY)  # a and b share gmem_ain


def _narrow(call: dict, d: Design) -> int:
    return pipelined(call["count"], 1, 2 * DDR_LATENCY)  # read, round, write back


def _patchify(call: dict, d: Design) -> int:
    return pipelined(call["channels"] * call["height"] * call["width"], 1, DDR_LATENCY)


def _finish_embedding(call: dict, d: Design) -> int:
    return pipelined(call["count"] * call["dim"], 1, DDR_LATENCY) + call["dim"]


def _route(call: dict, d: Design) -> int:
    """The task's router matrix onto the chip, then per token: all experts' logits side by
    side over its row, softmax, top-k selection, the queue appends."""
    p = d.precision
    n, dim, e, k = call["tokens"], call["dim"], call["experts"], call["top_k"]
    load = pipelined(dim, d.beats(e, p.weight), DDR_LATENCY)  # a table row per iteration
    logits = pipelined(dim, p.acc_ii, DDR_LATENCY + p.mac_latency) + e
    softmax = e * SPECIAL_LATENCY["exp"] + SPECIAL_LATENCY["div"] + e
    return load + n * (e + logits + softmax + k * e + e)


def expert_load_cycles(call: dict, d: Design) -> int:
    """load_expert: w1 then w2 a slot word (EXPERT_LANES weights) per iteration over gmem_w,
    then the biases."""
    p, lanes = d.precision, d.tiles[1]
    dim, hidden = call["dim"], call["hidden"]
    word = d.beats(lanes, p.weight)
    return (pipelined(dim * math.ceil(hidden / lanes), word, DDR_LATENCY)
            + pipelined(hidden * math.ceil(dim / lanes), word, DDR_LATENCY)
            + pipelined(hidden, 1, DDR_LATENCY) + pipelined(dim, 1, DDR_LATENCY))


def expert_compute_cycles(call: dict, d: Design, count: int) -> int:
    """compute_expert on `count` queued tokens, TOKEN_BLOCK at a time: gather, MLP (rows in,
    D->H then H->D with EXPERT_LANES outputs of every token in the block per pass, rows out)
    and scatter-add are dataflow processes, so a block costs its slowest stage, plus filling
    and draining."""
    if count == 0:
        return 0
    full, rest = divmod(count, d.token_block)
    cycles = full * _expert_block_cycles(call, d, d.token_block)
    if rest:
        cycles += _expert_block_cycles(call, d, rest)
    first = min(count, d.token_block)
    return cycles + first * pipelined(call["dim"], 1, DDR_LATENCY) + pipelined(
        call["dim"], 1, 2 * DDR_LATENCY)


def _expert_block_cycles(call: dict, d: Design, tokens: int) -> int:
    """One block of `tokens` (<= TOKEN_BLOCK) queued tokens through its slowest process."""
    p, lanes, block = d.precision, d.tiles[1], d.token_block
    dim, hidden = call["dim"], call["hidden"]
    gather = tokens * pipelined(dim, 1, DDR_LATENCY)
    # the activation and store loops over (token, lane) are (semi-)perfect nests, which HLS
    # flattens into one pipeline
    fc1 = math.ceil(hidden / lanes) * (pipelined(dim, p.acc_ii, p.mac_latency)
                                       + pipelined(tokens * lanes, 1, SPECIAL_LATENCY["gelu"]))
    fc2 = math.ceil(dim / lanes) * (pipelined(hidden, p.acc_ii, p.mac_latency)
                                    + pipelined(block * lanes, 1, 1))
    mlp = block * pipelined(dim, 1, 1) + fc1 + fc2 + tokens * pipelined(dim, 1, 1)
    scatter = tokens * pipelined(dim, 1, 2 * DDR_LATENCY)  # read, add, write back
    return max(gather, mlp, scatter)


@dataclass
class ExpertStep:
    """One expert of the double-buffered loop: its load (prefetched one step ahead) and compute."""

    expert: int
    tokens: int
    load_start: int
    load_end: int
    compute_start: int
    compute_end: int


def expert_schedule(call: dict, d: Design, queue_lengths: Sequence[int]) -> list[ExpertStep]:
    """Timeline of expert_ffn: experts with non-empty queues in index order; expert s + 1
    loads into the other slot while s computes, so step s lasts max(compute s, load s + 1)."""
    load = expert_load_cycles(call, d)
    zero = pipelined(call["tokens"] * call["dim"], 1, DDR_LATENCY)
    active = [(e, int(n)) for e, n in enumerate(queue_lengths) if n > 0]
    steps: list[ExpertStep] = []
    load_end = zero + load
    clock = load_end
    for index, (expert, count) in enumerate(active):
        load_start = load_end - load
        compute = expert_compute_cycles(call, d, count)
        steps.append(ExpertStep(expert, count, load_start, load_end, clock, clock + compute))
        if index + 1 < len(active):
            load_end = clock + load  # the next expert's load starts with this compute
        clock = max(clock + compute, load_end if index + 1 < len(active) else 0)
    return steps


def uniform_queues(call: dict, top_k: int) -> list[int]:
    """Balanced routing: tokens * top_k assignments spread evenly (compile-time default)."""
    total, experts = call["tokens"] * top_k, call["experts"]
    return [total // experts + (1 if e < total % experts else 0) for e in range(experts)]


def _expert_ffn(call: dict, d: Design, queue_lengths: Sequence[int]) -> int:
    steps = expert_schedule(call, d, queue_lengths)
    return steps[-1].compute_end if steps else pipelined(call["tokens"] * call["dim"], 1,
                                                         DDR_LATENCY)


CYCLES = {"linear": _linear, "layernorm": _layernorm, "attention": _attention, "add": _add,
          "patchify": _patchify, "finish_embedding": _finish_embedding, "route": _route,
          "narrow": _narrow}


@dataclass
class CallEstimate:
    op: str
    layer: str
    block: int | None
    part: str
    cycles: int
    macs: int


def call_cycles(call: dict, d: Design, queue_lengths: Sequence[int] | None = None) -> int:
    if call["op"] == "expert_ffn":
        if queue_lengths is None:
            raise EstimateError(f"expert_ffn {call['layer']!r} needs its queue lengths")
        return _expert_ffn(call, d, queue_lengths)
    if call["op"] not in CYCLES:
        raise EstimateError(f"no cycle model for op {call['op']!r} ({call['layer']})",
                            remedy="update m3c/estimate.py for the new op")
    return CYCLES[call["op"]](call, d)


def call_macs(call: dict, top_k: int = 1) -> int:
    """Multiply-accumulates of one call (the expert layer counts top_k experts per token)."""
    op = call["op"]
    if op == "linear":
        return call["tokens"] * call["in_dim"] * call["out_dim"]
    if op == "attention":
        return 2 * call["tokens"] ** 2 * call["dim"]
    if op == "route":
        return call["tokens"] * call["dim"] * call["experts"]
    if op == "expert_ffn":
        return 2 * call["tokens"] * top_k * call["dim"] * call["hidden"]
    return 0


def label_calls(calls: Iterable[dict]) -> list[tuple[int | None, str]]:
    """(block, part) per call; parts: patch_embedding, self_attention, dense_fc, experts.

    A block's calls up to and including its first residual add are self-attention; the rest
    is its MLP: `experts` in a block with an expert_ffn call, else `dense_fc`."""
    calls = list(calls)
    moe_blocks, block, labels, seen_add = set(), None, [], set()
    for call in calls:
        block = _block_of(call["layer"], block)
        if call["op"] == "expert_ffn":
            moe_blocks.add(block)
    block = None
    for call in calls:
        block = _block_of(call["layer"], block)
        if block is None:
            labels.append((None, "patch_embedding"))
            continue
        if block not in seen_add:
            if call["op"] == "add":
                seen_add.add(block)
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
        if call["op"] == "expert_ffn":
            queues = routing.get(call["layer"]) or uniform_queues(call, top_k)
        yield call, queues, top_k


def estimate_calls(calls: Sequence[dict], d: Design,
                   routing: dict[str, Sequence[int]] | None = None) -> list[CallEstimate]:
    """Cycles and MACs of every call."""
    return [CallEstimate(call["op"], call["layer"], block, part, call_cycles(call, d, queues),
                         call_macs(call, top_k))
            for (call, queues, top_k), (block, part)
            in zip(_with_queues(calls, routing), label_calls(calls), strict=True)]


def cycle_key(op: str, d: Design) -> tuple:
    """What the cycle model of `op` reads of a design besides its target and precision."""
    return {"linear": d.tiles, "attention": (d.query_block,),
            "expert_ffn": (d.tiles[1], d.token_block)}.get(op, ())


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
            memo[key] = call_cycles(call, d, queues)
        total += memo[key]
    return total


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


def calls_for_config(config: dict) -> tuple[list[dict], dict]:
    """The kernel's call list and capacities for a model config (project.json["config"]), in
    the order m3c.codegen emits them, without compiling: estimates for models too big to lower
    quickly. Pointer offsets are omitted; the estimates do not read them."""
    d, heads, patch = config["embed_dim"], config["num_heads"], config["patch_size"]
    height, width = config["image_size"]
    patches = (height // patch) * (width // patch)
    n, patch_len = patches + 1, config["in_chans"] * patch * patch
    mlp, hidden = int(d * config["mlp_ratio"]), int(d * config["moe_mlp_ratio"])
    experts, top_k = config["num_experts"], config["top_k"]
    # multi-gate: one router table per task; task-conditioned: one table, a bias per task
    tasks = len(config["tasks"])
    multi = config.get("gate", "multi") == "multi"
    router_rows = {"weight_rows": tasks if multi else 1, "bias_rows": 1 if multi else tasks}
    calls = [{"op": "patchify", "layer": "embed/Embed", "channels": config["in_chans"],
              "height": height, "width": width, "patch": patch},
             _linear_call("embed/Embed", patches, patch_len, d),
             {"op": "finish_embedding", "layer": "embed/Embed", "count": n, "dim": d}]
    for block in range(config["depth"]):
        name = f"/model/backbone/blocks.{block}"
        calls += [{"op": "layernorm", "layer": f"{name}/norm1", "tokens": n, "dim": d},
                  _linear_call(f"{name}/attn/qkv", n, d, 3 * d),
                  {"op": "attention", "layer": f"{name}/attn", "tokens": n, "dim": d,
                   "heads": heads},
                  _linear_call(f"{name}/attn/proj", n, d, d),
                  {"op": "add", "layer": f"{name}/Add", "count": n * d},
                  {"op": "layernorm", "layer": f"{name}/norm2", "tokens": n, "dim": d}]
        if block in config["moe_blocks"]:
            layer = f"moe{list(config['moe_blocks']).index(block)}"
            calls += [{"op": "route", "layer": f"{layer}/Route", "tokens": n, "dim": d,
                       "experts": experts, "top_k": top_k, **router_rows},
                      {"op": "expert_ffn", "layer": layer, "tokens": n, "dim": d,
                       "hidden": hidden, "experts": experts, "activation": "gelu"}]
        else:
            calls += [_linear_call(f"{name}/mlp/fc1", n, d, mlp, "gelu"),
                      _linear_call(f"{name}/mlp/fc2", n, mlp, d)]
        calls.append({"op": "add", "layer": f"{name}/Add_1", "count": n * d})
    moe = bool(config["moe_blocks"])
    capacities = {"max_tokens": n, "max_dim": d, "max_in": max(patch_len, d, mlp),
                  "max_out": max(3 * d, mlp, d), "max_head_dim": d // heads,
                  "max_experts": experts if moe else 1,
                  "max_expert_hidden": hidden if moe else 1, "max_top_k": top_k if moe else 1}
    return calls, capacities


def _linear_call(layer: str, tokens: int, in_dim: int, out_dim: int,
                 activation: str = "none") -> dict:
    return {"op": "linear", "layer": layer, "tokens": tokens, "in_dim": in_dim,
            "out_dim": out_dim, "activation": activation}
