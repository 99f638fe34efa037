"""Resource and cycle estimates of a generated kernel, from kernel.json alone (no Vitis).

The kernel (templates/hls/units/) is one MAC array of TK x TM multiply-accumulators that runs
every matrix product, activations on chip in banked memories, and DDR reached only by
sequential word loops (weights in consumption order, the image, the features). Cycles come from
m3c/hw/units.py, which mirrors every loop trip for trip (the C-simulation trace checks it).

Resources (UltraScale+):
- the array: TK x TM MACs, one DSP48E2 each for operands up to 27 x 18 bits (`MAC_DSP_FLOAT` =
  5 in fp32); sums wider than the DSP's 48-bit accumulator add a fabric adder per MAC; the two
  panel register sets (shadow and current) are flip-flops. A packed array (capacities
  "packed": some layers are 8-bit) has TK x TM / 2 DSPs, each two 8-bit products per cycle
  (WP486) or one 16-bit product: 8-bit layers run one pass per panel with half the panel's
  DDR words, 16-bit layers two passes (m3c/hw/units.py);
- multipliers the kernel binds to fabric (`bind_op impl=fabric`: the layer norm applied as rows
  are read, the epilogue's scale, softmax normalisation, gate and GELU) cost LUTs, about
  `FABRIC_LUT_PER_BIT2` per product bit pair;
- every array is bound (bind_storage) to registers (a word per bank), LUTRAM (banks up to
  `REGISTER_MAX_BITS`), URAM (the largest banks from `URAM_MIN_BITS` while `budget` of the
  target's URAMs last) or BRAM18 in their cheapest aspect ratio; lookup tables the array reads
  several times per cycle are counted once per two readers (dual-ported ROM copies).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property

from m3c.errors import M3CError
from m3c.hw import units as hw
from m3c.hw.geometry import Geometry, lane_bits
from m3c.hw.target import Target

MAC_DSP_FLOAT = 5
BRAM18_SHAPES = [(16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36)]
URAM_DEPTH, URAM_WIDTH = 4096, 72
URAM_MIN_BITS = 128 * 1024  # large banks go to URAM (bind_storage impl=uram)
REGISTER_MAX_BITS = 1024  # smaller banks go to LUTRAM
LUTRAM_BITS_PER_LUT = 32  # a dual-ported LUTRAM holds 32 bits per LUT6 (RAM32X1D-like)
DSP_ACC_BITS = 48  # the DSP48E2 post-adder / accumulator width
FABRIC_LUT_PER_BIT2 = 0.55  # LUTs of a fabric multiplier per product of operand widths
UNIT_CONTROL = (600, 800)
MAXI_BUNDLE = (1600, 2600)
BUNDLES = 3  # weights, image, features (kernel.cpp.j2)
EXP_TABLE_BRAM18 = 1  # 1024 x 18 bits
GELU_TABLE_BRAM18 = 4  # 4096 x 18 bits


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
        """From project.json["types"]: per class either a dict with "width" (and "kind":
        "float" or "fixed") or a C type name; fp32 for what is absent."""
        if not types:
            return cls()
        parsed = {name: _type_width(types.get(name, "float")) for name in
                  ("data", "weight", "acc", "prob", "logit")}
        return cls(**{name: width for name, (width, _) in parsed.items()},
                   floating=parsed["data"][1] and parsed["weight"][1])

    @property
    def operand_bits(self) -> int:
        """The array's streaming operand: data, or a softmax numerator (unsigned)."""
        return max(self.data, self.prob + 1)

    @property
    def mac_dsp(self) -> int:
        if self.floating:
            return MAC_DSP_FLOAT
        wide, narrow = max(self.operand_bits, self.weight), min(self.operand_bits, self.weight)
        return math.ceil(wide / 27) * math.ceil(narrow / 18)


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
    """One design point: the array's geometry beside the target, capacities and precision."""

    target: Target
    capacities: dict
    tiles: tuple[int, int] = (16, 8)  # (TK, TM)
    precision: Precision = field(default_factory=Precision)
    row_tile: int = 128
    query_tile: int = 32

    @cached_property
    def geometry(self) -> Geometry:
        return Geometry(self.tiles[0], self.tiles[1], lane_bits(self.precision),
                        self.target.hp_port_bits, self.row_tile, self.query_tile,
                        packed=bool(self.capacities.get("packed")))

    @cached_property
    def sizes(self) -> dict[str, int]:
        return kernel_sizes(self.capacities, self.geometry, self.precision)

    @property
    def panel_fifo(self) -> int:
        """Depth of the panel FIFO: a whole first panel (biases included) can wait in it."""
        g = self.geometry
        return g.panel_words + g.bias_words


def score_groups(g: Geometry, head_dim: int) -> int:
    """Key groups the array scores at once: a head's head_dim inputs fill only part of its TK,
    so its reduction splits into groups of TK / groups inputs, each scoring its own TM keys.
    At most TK / TM groups, so that a step's groups x TM scores fall in distinct banks of the
    score memory (partitioned TK ways)."""
    most = min(g.tk // max(head_dim, 1), g.tk // g.tm)
    return max(groups for groups in range(1, max(most, 1) + 1) if g.tk % groups == 0)


def kernel_sizes(c: dict, g: Geometry, p: Precision) -> dict[str, int]:
    """The kernel's constants (m3c_ops.h): memory depths, loop bounds, operand widths."""
    qkv_chunks = g.chunks(3 * c["max_head_dim"])
    attention = c["max_tokens"] * (qkv_chunks + g.chunks(c["max_dim"]))
    band_row = c.get("patch_grid_w", 1) * g.chunks(c.get("max_patch_len", 1))
    act_depth = max(attention, g.row_tile * g.chunks(c.get("max_hidden", 1)),
                    c["max_tokens"] * g.chunks(c["max_dim"])
                    + g.row_tile * g.chunks(c["max_expert_hidden"]), band_row)
    longest = max(c["max_in"], c["max_tokens"], c.get("max_hidden", 1),
                  c["max_expert_hidden"])
    operand = 32 if p.floating else p.operand_bits
    groups = 1 if p.floating else score_groups(g, c["max_head_dim"])
    return {
        "MAX_TOKENS": c["max_tokens"], "MAX_EXPERTS": c["max_experts"],
        "TOKEN_BITS": max(1, (c["max_tokens"] - 1).bit_length()),  # a queued token's index
        "SCORE_GROUPS": groups, "GROUP_K": g.tk // groups,
        "MAX_TOP_K": c["max_top_k"], "MAX_HEADS": c.get("max_heads", 1),
        "MAX_QKV_CHUNKS": qkv_chunks, "NORM_WIDTH": g.padded(c["max_dim"]),
        "RESID_DEPTH": c["max_tokens"] * g.chunks(c["max_dim"]), "ACT_DEPTH": act_depth,
        "SCORE_KEYS": g.padded(c["max_tokens"]), "X_BITS": operand,
        "SUM_BITS": min(63, operand + g.lane_bits + math.ceil(math.log2(longest + 1)) + 1),
        "MAX_FILL": max(g.bias_words + g.panel_words, g.tk, g.tm),
        "MAX_STEPS": g.chunks(longest) * math.ceil(max(c["max_out"], c["max_tokens"]) / g.tm),
        "MAX_BLOB_WORDS": g.matmul_words(longest, max(c["max_out"], c["max_tokens"])),
        "MAX_BANDS": max(1, c.get("patch_grid_h", 1)),
        "MAX_BAND_WORDS": max(1, c.get("image_elements", 1) // g.port_lanes),
        "MAX_BAND_TILES": max(1, math.ceil(c.get("max_patches", 1) / g.row_tile)),
    }


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


def unit_arrays(design: Design) -> list[Array]:
    """The kernel's arrays (kernel.cpp.j2 and the units), named as its variables, sized by the
    capacities and the geometry."""
    c, p, g = design.capacities, design.precision, design.geometry
    s = design.sizes
    tokens, experts, qt = c["max_tokens"], c["max_experts"], g.query_tile
    return [
        Array("memory", "resid", s["RESID_DEPTH"], 64, banks=g.banks),
        Array("memory", "act", s["ACT_DEPTH"], 64, banks=g.banks),
        Array("matmul", "sums", g.row_tile, s["SUM_BITS"], banks=g.tm),
        Array("matmul", "words", design.panel_fifo, g.port_bits),  # the panel FIFO
        Array("attention", "scores", qt * s["SCORE_KEYS"] // g.tk, p.logit, banks=g.tk),
        Array("attention", "row_max", qt, p.logit),
        Array("attention", "totals", qt, p.acc),
        Array("attention", "inverses", qt, p.prob + 6),
        Array("moe", "logits", tokens, p.logit, banks=experts),
        Array("moe", "queue_tokens", tokens, s["TOKEN_BITS"], banks=experts),
        Array("moe", "queue_scores", tokens, p.prob, banks=experts),
        Array("layernorm", "ln_mean", tokens, p.data),
        Array("layernorm", "ln_inv", tokens, 24),
        Array("layernorm", "gamma", s["NORM_WIDTH"] // g.tk, p.weight, banks=g.tk),
        Array("layernorm", "beta", s["NORM_WIDTH"] // g.tk, p.weight, banks=g.tk),
    ]


def storage_bindings(design: Design, budget: float = 1.0) -> dict[str, str]:
    """"unit.variable" -> the bind_storage impl the kernel declares for each array."""
    return {f"{b.array.unit}.{b.array.name}": b.impl
            for b in bind_memories(unit_arrays(design), design.target, budget)}


def _fabric(count: int, a: int, b: int) -> Resources:
    return Resources(lut=math.ceil(count * a * b * FABRIC_LUT_PER_BIT2), ff=count * (a + b))


def _control(units: int = 1) -> Resources:
    return Resources(lut=units * UNIT_CONTROL[0], ff=units * UNIT_CONTROL[1])


def unit_logic(design: Design) -> dict[str, Resources]:
    """Each unit's arithmetic and control (DSP, LUT, FF, ROM copies), without its arrays."""
    p, g, c = design.precision, design.geometry, design.capacities
    s = design.sizes
    macs = g.macs
    array = Resources(dsp=g.dsps * p.mac_dsp,
                      ff=2 * macs * g.lane_bits + 2 * g.tm * s["SUM_BITS"])
    if not p.floating and s["SUM_BITS"] > DSP_ACC_BITS:
        array = array + Resources(lut=macs * s["SUM_BITS"])  # the sum leaves the cascade
    data = 32 if p.floating else p.data
    return {
        # epilogue multipliers, and the scaling of the other key groups' scores
        "matmul": _control(2) + array + _fabric((3 + s["SCORE_GROUPS"]) * g.tm, data, 24),
        "layernorm": _control() + _fabric(2 * g.tk, data + 1, 24) + _fabric(6, 40, 40),
        "attention": _control() + Resources(bram18=math.ceil(g.tk / 2) * EXP_TABLE_BRAM18),
        "moe": _control() + _fabric(c["max_experts"], p.prob, 24) + _fabric(4, 40, 40)
        + Resources(lut=c["max_experts"] * c["max_top_k"] * 40,
                    bram18=math.ceil(c["max_experts"] / 2) * EXP_TABLE_BRAM18),
        "activations": Resources(bram18=math.ceil(g.tm / 2) * GELU_TABLE_BRAM18),
        "embed": _control(2),
        "interfaces": Resources(lut=BUNDLES * MAXI_BUNDLE[0], ff=BUNDLES * MAXI_BUNDLE[1]),
    }


def unit_resources(design: Design, budget: float = 1.0) -> dict[str, Resources]:
    """Each unit's logic plus its arrays as bound by `bind_memories`."""
    units = unit_logic(design)
    for binding in bind_memories(unit_arrays(design), design.target, budget):
        field_name = {"registers": "ff", "lutram": "lut"}.get(binding.storage, binding.storage)
        unit = binding.array.unit
        units[unit] = units.get(unit, Resources()) + Resources(**{field_name: binding.blocks})
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
            f"array {design.tiles[0]}x{design.tiles[1]} does not fit {design.target.name} "
            f"({budget:.0%} of its resources):\n{overflow_table(design, budget)}",
            remedy="choose smaller --tiles, or let m3c pick them (omit --tiles)")
    return used


# ------------------------------------------------------------------------------------- cycles

def uniform_queues(call: dict, top_k: int) -> list[int]:
    """Balanced routing: tokens * top_k assignments spread evenly (compile-time default)."""
    total, experts = call["tokens"] * top_k, call["experts"]
    return [total // experts + (1 if e < total % experts else 0) for e in range(experts)]


def call_cost(call: dict, d: Design, queue_lengths: Sequence[int] | None = None) -> hw.Cost:
    if call["op"] not in hw._COSTS:
        raise EstimateError(f"no cycle model for op {call['op']!r} ({call['layer']})",
                            remedy="update m3c/hw/units.py for the new op")
    return hw.cost(call, d.geometry, d.sizes | {"BAND_ROWS": band_rows(call, d)},
                   queue_lengths)


def band_rows(call: dict, d: Design) -> int:
    if call["op"] != "embed":
        return 1
    return hw.band_rows(call, d.geometry, d.sizes["ACT_DEPTH"])


def call_cycles(call: dict, d: Design, queue_lengths: Sequence[int] | None = None) -> int:
    if call["op"] == "experts" and queue_lengths is None:
        raise EstimateError(f"experts {call['layer']!r} needs their queue lengths")
    return call_cost(call, d, queue_lengths).cycles


def call_macs(call: dict, top_k: int = 1) -> int:
    """Multiply-accumulates of one call (the expert layer counts top_k experts per token)."""
    op = call["op"]
    if op == "linear":
        return call["tokens"] * call["in_dim"] * call["out_dim"]
    if op == "qkv":
        return call["tokens"] * call["dim"] * 3 * call["dim"]
    if op == "embed":
        return call["patches"] * call["channels"] * call["patch"] ** 2 * call["dim"]
    if op == "attention":
        return 2 * call["tokens"] ** 2 * call["dim"]
    if op == "route":
        return call["tokens"] * call["dim"] * call["experts"]
    if op == "experts":
        return 2 * call["tokens"] * top_k * call["dim"] * call["hidden"]
    return 0


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


def calls_for_config(config: dict) -> tuple[list[dict], dict]:
    """The kernel's call list and capacities for a model config (project.json["config"]), in
    the order m3c.hw.codegen emits them, without compiling: estimates for models too big to lower
    quickly. Weight offsets are omitted; the estimates do not read them."""
    d, heads, patch = config["embed_dim"], config["num_heads"], config["patch_size"]
    height, width = config["image_size"]
    patches = (height // patch) * (width // patch)
    n, patch_len = patches + 1, config["in_chans"] * patch * patch
    mlp, hidden = int(d * config["mlp_ratio"]), int(d * config["moe_mlp_ratio"])
    experts, top_k = config["num_experts"], config["top_k"]
    tasks = len(config["tasks"])
    multi = config.get("gate", "multi") == "multi"
    router_rows = {"weight_rows": tasks if multi else 1, "bias_rows": 1 if multi else tasks}
    calls = [{"op": "embed", "layer": "embed/Embed", "channels": config["in_chans"],
              "height": height, "width": width, "patch": patch, "dim": d, "patches": patches,
              "tokens": n}]
    for block in range(config["depth"]):
        name = f"/model/backbone/blocks.{block}"
        norm = {"op": "layernorm", "tokens": n, "dim": d, "epsilon": 1e-6}
        calls += [{**norm, "layer": f"{name}/norm1"},
                  {"op": "qkv", "layer": f"{name}/attn/qkv", "tokens": n, "in_dim": d,
                   "out_dim": 3 * d, "dim": d, "heads": heads, "head_dim": d // heads,
                   "activation": "none"},
                  {"op": "attention", "layer": f"{name}/attn", "tokens": n, "dim": d,
                   "heads": heads, "head_dim": d // heads, "scale": (d // heads) ** -0.5},
                  _linear_call(f"{name}/attn/proj", n, d, d, "attention", "residual"),
                  {**norm, "layer": f"{name}/norm2"}]
        if block in config["moe_blocks"]:
            layer = f"moe{list(config['moe_blocks']).index(block)}"
            calls += [{"op": "route", "layer": f"{layer}/Route", "tokens": n, "dim": d,
                       "experts": experts, "top_k": top_k, **router_rows},
                      {"op": "experts", "layer": layer, "tokens": n, "dim": d,
                       "hidden": hidden, "experts": experts, "activation": "gelu"}]
        else:
            calls += [_linear_call(f"{name}/mlp/fc1", n, d, mlp, "normalised", "hidden",
                                   "gelu"),
                      _linear_call(f"{name}/mlp/fc2", n, mlp, d, "hidden", "residual")]
    calls.append({"op": "features", "layer": "features", "tokens": n, "dim": d,
                  "source": "residual"})
    moe = bool(config["moe_blocks"])
    capacities = {"max_tokens": n, "max_dim": d, "max_in": max(patch_len, d, mlp),
                  "max_out": max(3 * d, mlp, d), "max_head_dim": d // heads,
                  "max_heads": heads, "max_experts": experts if moe else 1,
                  "max_expert_hidden": hidden if moe else 1, "max_top_k": top_k if moe else 1,
                  "max_hidden": mlp, "max_patches": patches, "max_patch_len": patch_len,
                  "patch_grid_w": width // patch, "patch_grid_h": height // patch,
                  "image_elements": config["in_chans"] * height * width}
    return calls, capacities


MAC8_OPS = ("qkv", "attention", "linear", "experts")  # 8-bit; embed and route stay 16


def as_int8(calls: Sequence[dict], capacities: dict) -> tuple[list[dict], dict]:
    """`calls_for_config`'s calls with every 8-bit candidate marked 8-bit (for estimates: the
    shifts are placeholders) and the array packed: what `--precision int8` compiles."""
    marked = [{**call, "mac8": {"x_shift": 0, "w_shift": 0}} if call["op"] in MAC8_OPS
              else call for call in calls]
    return marked, {**capacities, "packed": 1}


def _linear_call(layer: str, tokens: int, in_dim: int, out_dim: int, source: str, target: str,
                 activation: str = "none") -> dict:
    return {"op": "linear", "layer": layer, "tokens": tokens, "in_dim": in_dim,
            "out_dim": out_dim, "activation": activation, "source": source, "target": target}


# ------------------------------------------------------- the MoE layer, for m3c.check.memsim

@dataclass
class ExpertStep:
    """One expert of the expert-major loop: its panels stream in while it computes."""

    expert: int
    tokens: int
    load_start: int
    load_end: int
    compute_start: int
    compute_end: int


def expert_load_cycles(call: dict, d: Design) -> int:
    """One expert's weights from DDR, a word per cycle (fc1 and fc2 blobs)."""
    g = d.geometry
    narrow = hw.mac8(call)
    return (g.matmul_words(call["dim"], g.padded(call["hidden"]), narrow)
            + g.matmul_words(call["hidden"], call["dim"], narrow))


def expert_compute_cycles(call: dict, d: Design, count: int) -> int:
    """An expert on `count` tokens with its weights at hand: the array's steps without
    waiting for panels (what a design holding every expert on chip would take)."""
    g = d.geometry
    total = 0
    for rows in g.row_tiles(count):
        for in_dim, cols in ((call["dim"], g.padded(call["hidden"])),
                             (call["hidden"], call["dim"])):
            k_panels, m_panels = g.panels(in_dim, cols)
            steps = k_panels * m_panels
            sweep = hw.sweep(g, rows, hw.mac8(call))
            total += steps * (max(sweep, hw.MIN_SPAN) + hw.MAC_DEPTH) + hw.LOOP_DEPTH
    return total


def expert_schedule(call: dict, d: Design, queue_lengths: Sequence[int]) -> list[ExpertStep]:
    """Timeline of the experts call: experts with queued tokens in index order, each step the
    expert's tiles (panel loads overlapping the array's rows, m3c/hw/units.py)."""
    g = d.geometry
    load = expert_load_cycles(call, d)
    clock = 0
    steps: list[ExpertStep] = []
    for expert, count in enumerate(queue_lengths):
        if count <= 0:
            continue
        compute = 0
        for rows in g.row_tiles(int(count)):
            narrow = hw.mac8(call)
            compute += hw.tile_cost(g, rows, call["dim"], g.padded(call["hidden"]),
                                    narrow=narrow).cycles
            compute += hw.tile_cost(g, rows, call["hidden"], call["dim"], narrow=narrow).cycles
        steps.append(ExpertStep(expert, int(count), clock, clock + load, clock,
                                clock + compute))
        clock += compute
    return steps
