"""A design point: the target, the kernel's capacities, the array's tiles and the hardware
types' widths, and the kernel's sizes (m3c_ops.h constants) that follow from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property

from m3c.errors import M3CError
from m3c.hw.geometry import Geometry, lane_bits
from m3c.hw.target import Target, load_target

MAC_DSP_FLOAT = 5


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
    # The multiplier groups beside the array bound to DSPs (m3c.hw.resources.MULTIPLIER_GROUPS;
    # the others are fabric): those the DSE binds when the array leaves DSPs free.
    dsp_multipliers: frozenset[str] = frozenset()

    @classmethod
    def of_project(cls, manifest: dict, kernel: dict) -> Design:
        """The design a project was compiled for, as project.json and kernel.json record it
        (not fitted again)."""
        return cls(load_target(manifest["target"]), kernel["capacities"],
                   tuple(manifest["tiles"]), Precision.from_types(manifest.get("types")),
                   manifest["row_tile"], manifest["query_tile"],
                   frozenset(manifest.get("dsp_multipliers", ())))

    @cached_property
    def geometry(self) -> Geometry:
        g = Geometry(self.tiles[0], self.tiles[1], lane_bits(self.precision),
                     self.target.hp_port_bits, self.row_tile, self.query_tile,
                     packed=bool(self.capacities.get("packed")),
                     wide_operands=bool(self.capacities.get("wide_operands")))
        if self.precision.floating:
            return g
        return replace(g, chain=g.tk // score_groups(g, self.capacities["max_head_dim"]))

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
    widest = max(c["max_in"], c["max_out"], c["max_dim"], c.get("max_hidden", 1),
                 c["max_expert_hidden"], c.get("max_patch_len", 1), 3 * c["max_head_dim"])
    groups = 1 if p.floating else g.tk // g.chain
    return {
        "MAX_TOKENS": c["max_tokens"], "MAX_EXPERTS": c["max_experts"],
        "TOKEN_BITS": max(1, (c["max_tokens"] - 1).bit_length()),  # a queued token's index
        # the operands of the pipelines' index products (memory.h.j2 index_product): a row,
        # a tensor's chunks, a score step's key groups, a patch's lines or columns
        "ROW_BITS": max(1, c["max_tokens"].bit_length()),
        "CHUNK_BITS": max(1, g.chunks(widest).bit_length()),
        "GROUP_BITS": max(1, groups.bit_length()),
        "PATCH_BITS": max(1, c.get("max_patch_len", 1).bit_length()),
        "SCORE_GROUPS": groups, "GROUP_K": g.tk // groups,
        "MAX_TOP_K": c["max_top_k"], "MAX_HEADS": c.get("max_heads", 1),
        "MAX_QKV_CHUNKS": qkv_chunks, "NORM_WIDTH": g.padded(c["max_dim"]),
        "RESID_DEPTH": c["max_tokens"] * g.chunks(c["max_dim"]), "ACT_DEPTH": act_depth,
        "SCORE_ROWS": g.chunks(c["max_tokens"]), "X_BITS": operand,
        "SUM_BITS": min(63, operand + g.lane_bits + math.ceil(math.log2(longest + 1)) + 1),
        "MAX_FILL": max(g.bias_words + g.panel_words, g.tk, g.tm),
        "MAX_STEPS": g.chunks(longest) * math.ceil(max(c["max_out"], c["max_tokens"]) / g.tm),
        "MAX_BLOB_WORDS": g.matmul_words(longest, max(c["max_out"], c["max_tokens"])),
        "MAX_BANDS": max(1, c.get("patch_grid_h", 1)),
        "MAX_BAND_WORDS": max(1, c.get("image_elements", 1) // g.port_lanes),
        "MAX_BAND_TILES": max(1, math.ceil(c.get("max_patches", 1) / g.row_tile)),
    }
