"""The kernel's DDR weight blob and its top function's calls, for a chosen MAC array.

Every call's segments (m3c/hw/units.py) are laid out one after the other in call order, each
starting on a DDR word, in the order the units read them; each call then becomes one line of
the top function (a query/key/value projection with its attention, an MLP's two layers and a
router with its experts are one unit call each).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3c.errors import CodegenError
from m3c.hw import units
from m3c.hw.geometry import Geometry


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
    read = units.Weights(values)
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


def _narrow(call: dict, kinds: list[str]) -> int:
    return kinds.index(call["narrow"]["cpp"]) + 1 if "narrow" in call else 0


def narrow_kinds(calls: list[dict]) -> list[str]:
    """The types the kernel rounds to (m3c::narrowed's cases): layers' result types and the
    8-bit layers' operand types."""
    kinds = {call["narrow"]["cpp"] for call in calls if "narrow" in call}
    for call in calls:
        spec = call.get("mac8", {})
        kinds |= {spec[key]["cpp"] for key in ("x", "x2") if key in spec}
    return sorted(kinds)


MAC_CODE_BITS = 4  # an operand shift (0 ... 8) in the unit calls' packed mac argument


def mac_code(call: dict, kinds: list[str], second: bool = False) -> int:
    """One matmul's 8-bit operands as the int its unit call passes (m3c::set_mac decodes):
    bit 0 set for 8 bits, then the operand and weight shifts, then the operand's narrowing
    kind; 0 for a 16-bit product. `second`: an expert layer's fc2."""
    if "mac8" not in call:
        return 0
    spec = call["mac8"]
    x, w = ("x2", "w2") if second else ("x", "w")
    kind = kinds.index(spec[x]["cpp"]) + 1
    if max(spec[f"{x}_shift"], spec[f"{w}_shift"]) >= 1 << MAC_CODE_BITS:
        raise CodegenError(f"layer {call['layer']!r}: an 8-bit operand {spec[f'{x}_shift']} / "
                           f"{spec[f'{w}_shift']} bits below its 16-bit type's binary point",
                           remedy="keep data and weight types at most 16 bits wide with "
                                  "--precision int8 or mixed")
    return (1 | spec[f"{x}_shift"] << 1 | spec[f"{w}_shift"] << (1 + MAC_CODE_BITS)
            | kind << (1 + 2 * MAC_CODE_BITS))


MEMORIES = ("resid, act, scores, row_max, totals, inverses, logits, queue_tokens, queue_scores, "
            "queue_len, ln_mean, ln_inv, gamma, beta")


def render_calls(calls: list[dict], layout: DdrLayout, g: Geometry, sizes: dict,
                 kinds: list[str]) -> list[str]:
    """The top function's unit calls, in order."""
    lines, index = [], 0
    while index < len(calls):
        call, seg = calls[index], layout.segments[index]
        op = call["op"]
        following = calls[index + 1] if index + 1 < len(calls) else {}
        if op == "embed":
            blob = seg["blob"]
            args = [*blob, seg["cls"][0], seg["pos"][0], call["channels"], call["height"],
                    call["width"], call["patch"], call["dim"], sizes["BAND_ROWS"], index]
            lines.append(_line("embed_layer", "weights, image", args))
        elif op == "layernorm":
            args = [seg["gamma"][0], seg["beta"][0], call["tokens"], call["dim"],
                    f"var_t({call['epsilon']!r}f)", index]
            lines.append(_line("layernorm_stats", "weights", args))
        elif op == "qkv":
            _expect(call, following, "attention")
            blob = seg["blob"]
            args = [blob[0], blob[1] // call["heads"], call["tokens"], call["dim"],
                    call["heads"], call["head_dim"], f"norm_t({following['scale']!r}f)",
                    _narrow(call, kinds), _narrow(following, kinds), mac_code(call, kinds),
                    mac_code(following, kinds), mac_code(following, kinds, second=True),
                    index, index + 1]
            lines.append(_line("attention_layer", "weights", args))
            index += 1
        elif op == "linear" and call["source"] == "attention":
            args = [*seg["blob"], call["tokens"], call["in_dim"], call["out_dim"],
                    _narrow(call, kinds), mac_code(call, kinds), index]
            lines.append(_line("projection_layer", "weights", args))
        elif op == "linear":
            _expect(call, following, "linear")
            second = layout.segments[index + 1]["blob"]
            args = [*seg["blob"], *second, call["tokens"], call["in_dim"], call["out_dim"],
                    f"m3c::{_activation(call)}", _narrow(call, kinds),
                    _narrow(following, kinds), mac_code(call, kinds), mac_code(following, kinds),
                    index, index + 1]
            lines.append(_line("mlp_layer", "weights", args))
            index += 1
        elif op == "route":
            _expect(call, following, "experts")
            tasks = units.router_tasks(call)
            experts_blob = layout.segments[index + 1]["blob"]
            narrow = units.mac8(following)
            fc1 = g.matmul_words(following["dim"], g.padded(following["hidden"]), narrow)
            fc2 = g.matmul_words(following["hidden"], following["dim"], narrow)
            args = [seg["blob"][0], seg["blob"][1] // tasks, tasks, "task", experts_blob[0],
                    fc1 + fc2, fc1, fc2, call["tokens"], call["dim"], following["hidden"],
                    call["experts"], call["top_k"], f"m3c::{_activation(following)}",
                    _narrow(following, kinds), mac_code(following, kinds),
                    mac_code(following, kinds, second=True), index, index + 1]
            lines.append(_line("moe_layer", "weights", args))
            index += 1
        elif op == "features":
            args = [call["tokens"], call["dim"],
                    "true" if call["source"] == "normalised" else "false", index]
            lines.append(_line("store_features", "features", args))
        else:
            raise CodegenError(f"call {call['layer']!r} ({op}) has no unit call here",
                               remedy="report this as an m3c issue")
        index += 1
    return lines


def _activation(call: dict) -> str:
    from m3c.hw.codegen import ACTIVATIONS

    return ACTIVATIONS[call.get("activation", "none")]


def _expect(call: dict, following: dict, op: str) -> None:
    if following.get("op") != op:
        raise CodegenError(f"call {call['layer']!r} ({call['op']}) must be followed by {op}",
                           remedy="report this as an m3c issue")


def _line(unit: str, buffers: str, args: list) -> str:
    rendered = ", ".join(str(arg) for arg in args)
    return f"m3c::{unit}({buffers}, {rendered}, {MEMORIES});"
