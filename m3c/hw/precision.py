"""The precision pass: a hardware type for every tensor class of the kernel.

`float` is fp32 everywhere (exact verification). `fixed` gives activations and weights 16-bit
ap_fixed types whose integer bits come from calibration: the largest magnitude any activation
reaches on the calibration images (through the float emulation of the same call sequence) and the
largest weight. Those two round to nearest even and saturate, because they are where values are
narrowed; accumulators truncate and wrap, because they are sized (from the two) so that no
product or sum is ever rounded or overflows, which also makes them order-independent. Softmax,
reciprocal and normalisation scalars have fixed formats chosen for their value ranges.

Calibration keeps headroom: the activation type holds HEADROOM times the largest magnitude
seen, so images a little louder than the calibration set do not saturate (`m3c verify build/
--images N` measures it on fresh images).

A JSON or YAML config overrides any class (`types:`), the headroom (`headroom: 2`) and, per
layer, the weight type its tensors are quantized to and the type its results are rounded to
(`layers: {name: {weight: ap_fixed<8,2>, result: ap_fixed<12,4>}}`), and makes layers 8-bit
(`layers: {name: {bits: 8}}`: what `--precision mixed` saves).

8-bit layers (`--precision int8`: every one that can; `mixed`: m3c.hw.mixed chooses) multiply
8-bit operands on the packed array, two products per DSP48E2 (WP486): the query/key/value
projections, the attention products (queries x keys, softmax numerators x values), the
attention projection, the MLP's two layers and the experts' two layers. Their operand types are
ap_fixed<8,I> per layer (weights: per matrix), I fitted on the calibration images by the least
squared quantization error among the maximum and the 99.9 / 99.99th percentiles (clipping
wins when a few outliers would cost every other value its resolution). Per-output-channel
scales are not used: the array's sums share one binary point per product, and a per-layer
power-of-two scale keeps each 8-bit code the exact top bits of its data_t / weight_t code, so
the sums are the 16-bit kernel's integers and no epilogue rescaling is needed. What stays wide,
and why: the residual stream and every stored activation keep data_t (16 bits: residual adds
accumulate small updates on a large stream); biases keep weight_t (added once, at the sums'
full precision); the layer norm's statistics, 1/std and its gamma/beta product keep var_t,
norm_t and acc_t (a variance over hundreds of squared deviations needs them); the softmax's
scores, exponentials, row sums and reciprocals keep logit_t, prob_t, acc_t and recip_t (only the
numerators the array multiplies are rounded to 8 bits, unsigned, 1.0 = 128), since its max
subtraction and normalisation amplify errors; the routers stay 16-bit (their top-k choice flips
on small logit errors, and they are a sliver of the MACs); the patch embedding stays 16-bit
(raw pixels, 1% of the MACs).
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml

from m3c.errors import CodegenError
from m3c.hw.units import NARROWABLE, WEIGHT_ARGS
from m3c.runtime.emulator import KernelEmulator, Observer
from m3c.runtime.fixed import EXP_TABLE_BITS, FixedType

ROLES = {
    "data": "activations: the on-chip residual stream and working tensors",
    "weight": "weights, biases, norm parameters",
    "acc": "accumulators: exact sums of products",
    "var": "layernorm: exact sums of squared deviations",
    "logit": "softmax inputs: attention scores, router logits",
    "exp_arg": "exp argument x log2(e)",
    "prob": "softmax outputs, exp values, combine weights",
    "recip": "reciprocals of softmax sums",
    "norm": "layernorm 1/std, attention scale",
}
NARROWED = ("AP_RND_CONV", "AP_SAT")
EXACT = ("AP_TRN", "AP_WRAP")
FIXED_DEFAULTS = {
    "logit": FixedType(32, 16, True, *NARROWED),
    "exp_arg": FixedType(32, 16, True, "AP_TRN", "AP_SAT"),
    "prob": FixedType(18, 1, False, *NARROWED),
    "recip": FixedType(24, 1, False, *NARROWED),
    "norm": FixedType(24, 10, False, *NARROWED),
}
DEFAULT_WIDTH = 16
HEADROOM = 1.25
MAX_EXACT_WIDTH = 63  # raw values must fit int64 in the emulation
CLASS_MODES = {"data": NARROWED, "weight": NARROWED, "acc": EXACT, "var": EXACT,
               **{name: (t.quant, t.overflow) for name, t in FIXED_DEFAULTS.items()}}


def float_types() -> dict[str, dict]:
    return {name: {"cpp": "float", "width": 32, "role": role} for name, role in ROLES.items()}


def integer_bits(max_abs: float) -> int:
    """Integer bits (sign included) of a signed type holding +-max_abs."""
    if max_abs <= 0 or not math.isfinite(max_abs):
        return 1
    return max(1, math.floor(math.log2(max_abs)) + 2)


def load_config(path: str | Path | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    try:
        text = path.read_text()
        config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise CodegenError(f"cannot read precision config {path}: {error}",
                           remedy="give a JSON or YAML file with 'types' and/or 'layers'") from None
    if not isinstance(config, dict) or set(config) - {"types", "layers", "headroom"}:
        raise CodegenError(f"precision config {path} must be a mapping with 'types', 'layers' "
                           "and/or 'headroom'", remedy='e.g. {"types": {"data": "ap_fixed<18,8>"}}')
    headroom = config.get("headroom", HEADROOM)
    if isinstance(headroom, bool) or not isinstance(headroom, int | float) or not (
            1.0 <= headroom <= 1e6):
        raise CodegenError(f"precision config {path}: headroom {headroom!r} is not a number "
                           ">= 1", remedy="e.g. headroom: 2 (twice the calibrated range)")
    return config


def _parse(spelling: str, name: str, where: str) -> FixedType:
    try:
        return FixedType.parse(str(spelling), *CLASS_MODES[name])
    except ValueError as error:
        raise CodegenError(f"{where}: {error}", remedy="write ap_fixed<W,I> or "
                           "ap_fixed<W,I,AP_RND_CONV|AP_TRN,AP_SAT|AP_WRAP>") from None


def calibrate(plan: dict, weights: np.ndarray,
              samples: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list[np.ndarray]]:
    """The largest activation magnitude the float kernel reaches on the samples, and its
    features on each."""
    samples = list(samples)
    peaks = [0.0] * len(samples)

    def watching(index: int) -> Observer:
        def observe(call: dict, what: str, values: np.ndarray) -> None:
            if what != "queue_lengths":
                peaks[index] = max(peaks[index], float(np.abs(values).max(initial=0.0)))
        return observe

    features = KernelEmulator(plan, weights).run_many(
        samples, [watching(i) for i in range(len(samples))])
    images = max(float(np.abs(image).max()) for image, _ in samples)
    return max([images, *peaks]), features


def choose_types(plan: dict, weights: np.ndarray, activation_max: float,
                 config: dict | None = None) -> dict[str, FixedType]:
    """Every class's ap_fixed type: calibrated data/weight, derived exact accumulators."""
    overrides = (config or {}).get("types", {})
    unknown = set(overrides) - (set(ROLES) - {"acc", "var"})
    if unknown:
        raise CodegenError(f"precision config names unknown or derived classes {sorted(unknown)}",
                           remedy="override data, weight, logit, exp_arg, prob, recip or norm")
    types = dict(FIXED_DEFAULTS)
    headroom = (config or {}).get("headroom", HEADROOM)
    types["data"] = FixedType(DEFAULT_WIDTH, integer_bits(activation_max * headroom), True,
                              *NARROWED)
    types["weight"] = FixedType(DEFAULT_WIDTH, integer_bits(float(np.abs(weights).max())), True,
                                *NARROWED)
    for name, spelling in overrides.items():
        types[name] = _parse(spelling, name, f"precision config types.{name}")
    types["acc"], types["var"] = _accumulators(types, plan["capacities"])
    _check(types)
    return types


def _accumulators(types: dict[str, FixedType], capacities: dict) -> tuple[FixedType, FixedType]:
    data, weight, prob = types["data"], types["weight"], types["prob"]
    terms = max(capacities["max_in"], capacities["max_dim"], capacities["max_tokens"],
                capacities["max_expert_hidden"])
    growth = math.ceil(math.log2(max(terms, 2))) + 1
    frac = max(data.frac + weight.frac, 2 * data.frac, prob.frac + data.frac, weight.frac)
    integer = max(data.integer + weight.integer, 2 * data.integer, prob.integer + data.integer,
                  weight.integer) + growth
    var_integer = 2 * (data.integer + 1) + math.ceil(math.log2(max(capacities["max_dim"], 2)))
    _check_exact("acc", integer + frac)
    _check_exact("var", var_integer + 2 * data.frac)
    acc = FixedType(integer + frac, integer, True, *EXACT)
    var = FixedType(var_integer + 2 * data.frac, var_integer, True, *EXACT)
    return acc, var


def _check_exact(name: str, width: int) -> None:
    if width > MAX_EXACT_WIDTH:
        raise CodegenError(f"the {name} type would need {width} bits",
                           remedy="narrow the data or weight type in the precision config")


def _check(types: dict[str, FixedType]) -> None:
    if not types["data"].signed or types["exp_arg"].frac < EXP_TABLE_BITS:
        raise CodegenError("data must be signed and exp_arg needs at least "
                           f"{EXP_TABLE_BITS} fractional bits")
    for name, limit in (("logit", 32), ("norm", 32), ("recip", 32), ("prob", 24)):
        if types[name].width > limit:
            raise CodegenError(f"{name} wider than {limit} bits is not supported")


LAYER_FIELDS = ("weight", "result", "bits")


def layer_weight_types(plan: dict, config: dict) -> dict[int, FixedType]:
    """Weight-blob offset -> the narrower type a per-layer override quantizes it to."""
    narrowed: dict[int, FixedType] = {}
    for kind, calls in _layer_overrides(plan, config, "weight"):
        for call in calls:
            for name in _weight_arguments(call["op"]):
                narrowed[call[name]] = kind
    return narrowed


def layer_result_types(plan: dict, config: dict) -> dict[str, FixedType]:
    """Layer name -> the narrower type a per-layer override rounds its results to. Layers
    that leave no activations (a router) are passed over."""
    ops = {call["layer"]: call["op"] for call in plan["calls"]}
    results = {}
    for kind, calls in _layer_overrides(plan, config, "result"):
        layers = {call["layer"] for call in calls if ops[call["layer"]] in NARROWABLE}
        if not layers:
            named = sorted({call["layer"] for call in calls})
            raise CodegenError(f"precision config sets 'result' on {named}, which leave no "
                               "activations the kernel can round",
                               remedy="set it on layers of kind " + ", ".join(sorted(NARROWABLE)))
        results.update(dict.fromkeys(layers, kind))
    return results


def _layer_overrides(plan: dict, config: dict, wanted: str) -> list[tuple[FixedType, list]]:
    """(type, the calls of the layers it names) for each `layers` entry that sets `wanted`."""
    overrides = []
    for pattern, spec in (config.get("layers") or {}).items():
        matched = [call for call in plan["calls"] if fnmatch.fnmatchcase(call["layer"], pattern)]
        if not matched:
            raise CodegenError(f"precision config layer {pattern!r} matches no layer",
                               remedy="use names from kernel.json (glob patterns allowed)")
        if not isinstance(spec, dict) or not spec or set(spec) - set(LAYER_FIELDS):
            raise CodegenError(f"precision config layer {pattern!r}: set "
                               + " and/or ".join(repr(name) for name in LAYER_FIELDS),
                               remedy='e.g. {"weight": "ap_fixed<8,2>", "result": '
                                      '"ap_fixed<12,4>"}')
        if wanted in spec:
            role = "weight" if wanted == "weight" else "data"
            overrides.append((_parse(spec[wanted], role, f"precision config layers.{pattern}"),
                              matched))
    return overrides


def config_mac8_layers(plan: dict, config: dict) -> list[str]:
    """The layers a config's `layers: {pattern: {bits: 8}}` make 8-bit."""
    names: list[str] = []
    for pattern, spec in (config.get("layers") or {}).items():
        if not isinstance(spec, dict) or "bits" not in spec:
            continue
        if spec["bits"] not in (8, 16, "8", "16"):
            raise CodegenError(f"precision config layer {pattern!r}: bits {spec['bits']!r}",
                               remedy="bits are 8 (two MACs per DSP) or 16")
        matched = [call["layer"] for call in plan["calls"] if call["op"] in MAC8_CAPABLE
                   and fnmatch.fnmatchcase(call["layer"], pattern)]
        if not matched:
            raise CodegenError(f"precision config layer {pattern!r} names no layer that can "
                               "be 8-bit", remedy="name qkv, attention, linear or experts "
                                                  "layers from kernel.json")
        if int(spec["bits"]) == 8:
            names += [name for name in matched if name not in names]
    return names


def _weight_arguments(op: str) -> tuple[str, ...]:
    return WEIGHT_ARGS[op]


QUANTIZE_CHUNK = 1 << 22


def quantize_blob(blob: np.ndarray, offsets: dict[str, int], sizes: dict[str, int],
                  weight: FixedType, narrowed: dict[int, FixedType]) -> np.ndarray:
    """The weight blob as raw weight_t codes (int32; int64 past 32 bits); a layer's narrower
    type rounds first, then weight_t holds its value."""
    raw = np.empty(blob.size, np.int32 if weight.width <= 32 else np.int64)
    for start in range(0, blob.size, QUANTIZE_CHUNK):  # bounded temporaries
        span = slice(start, start + QUANTIZE_CHUNK)
        raw[span] = _quantized(blob[span], weight)
    for name, offset in offsets.items():
        kind = narrowed.get(offset)
        if kind is not None:
            span = slice(offset, offset + sizes[name])
            raw[span] = _narrowed_codes(blob[span], kind, weight)
    return raw


def _narrowed_codes(values: np.ndarray, kind: FixedType, weight: FixedType) -> np.ndarray:
    """weight_t codes of `values` rounded to a layer's narrower type `kind` first."""
    return weight.from_float(kind.to_float(kind.from_float(values)))


def _quantized(values: np.ndarray, weight: FixedType) -> np.ndarray:
    """weight.from_float, in float32 for float32 values of a rounding, saturating type of at
    most 24 bits: scaling by a power of two, rounding half to even and clipping at the type's
    codes are exact there (half the memory traffic of float64)."""
    if (values.dtype != np.float32 or weight.width > 24 or weight.quant != "AP_RND_CONV"
            or weight.overflow != "AP_SAT"):
        return weight.from_float(values)
    scaled = np.ldexp(values, np.int32(weight.frac))
    np.rint(scaled, out=scaled)
    np.clip(scaled, weight.raw_min, weight.raw_max, out=scaled)
    return scaled.astype(np.int32)


# ------------------------------------------------------------------ 8-bit layers (int8, mixed)

MAC8_WIDTH = 8
MAC8_OPS = ("qkv", "linear", "experts")
MAC8_CAPABLE = (*MAC8_OPS, "attention")
CLIP_PERCENTILES = (99.9, 99.99)  # clipping points tried against the plain maximum
SAMPLE_CAP = 1 << 18  # values kept per observed tensor (a uniform subsample beyond)


def observe_inputs(plan: dict, blob: np.ndarray,
                   samples: Iterable[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    """Every call's results on the samples (float emulation), by layer name, and an expert
    layer's hidden rows by "layer/hidden": what the 8-bit layers' operand types are fitted to."""
    samples = list(samples)
    cap = SAMPLE_CAP // max(len(samples), 1)
    seen: dict[str, list[np.ndarray]] = {}

    def observe(call: dict, what: str, values: np.ndarray) -> None:
        if what in ("output", "hidden"):
            key = call["layer"] + ("/hidden" if what == "hidden" else "")
            step = -(-values.size // cap)  # a strided subsample: deterministic across threads
            seen.setdefault(key, []).append(np.asarray(values[::step], np.float32))

    KernelEmulator(plan, blob).run_many(samples, [observe] * len(samples))
    return {key: np.concatenate(parts) for key, parts in seen.items()}


def _input_sources(calls: list[dict]) -> list[tuple[dict, str]]:
    """(8-bit candidate, the observation key of the tensor its array reads)."""
    last: dict[str, str] = {}
    pairs = []
    for call in calls:
        if call["op"] in MAC8_OPS:
            source = "normalised" if call["op"] != "linear" else call["source"]
            if source in last:
                pairs.append((call, last[source]))
        produced = {"layernorm": "normalised", "attention": "attention"}.get(call["op"])
        if call["op"] == "linear" and call["target"] == "hidden":
            produced = "hidden"
        if produced:
            last[produced] = call["layer"]
    return pairs


def best_integer_bits(values: np.ndarray, lowest: int, highest: int) -> int:
    """Integer bits of the ap_fixed<8,I> that quantizes `values` with the least squared error:
    the maximum's I against percentile clipping points' (clipping pays when a few outliers
    would otherwise cost every other value its resolution)."""
    magnitudes = np.abs(values.astype(np.float64))
    peaks = [float(magnitudes.max(initial=0.0)),
             *(float(np.percentile(magnitudes, q)) for q in CLIP_PERCENTILES)]
    candidates = sorted({min(max(integer_bits(peak), lowest), highest) for peak in peaks})

    def error(integer: int) -> float:
        kind = FixedType(MAC8_WIDTH, integer, True, *NARROWED)
        return float(((kind.to_float(kind.from_float(values)) - values) ** 2).sum())

    return min(candidates, key=lambda integer: (error(integer), -integer))


def mac8_types(plan: dict, blob: np.ndarray, types: dict[str, FixedType],
               inputs: dict[str, np.ndarray], layers: Iterable[str] | None = None
               ) -> tuple[dict[str, dict], dict[int, FixedType]]:
    """Per 8-bit layer (all candidates, or those named in `layers`) its kernel.json "mac8"
    entry, and the weight offsets to round to 8 bits. Operand types are ap_fixed<8,I> per
    layer, not per output channel: the array's sums share one binary point per product, so
    only a per-layer scale keeps the 8-bit codes the exact top bits of the data_t / weight_t
    codes (a shift), and the emulation stays bit-exact without rescaling in the epilogue."""
    data, weight = types["data"], types["weight"]
    chosen = None if layers is None else set(layers)
    specs, narrowed = {}, {}
    for call, source in _input_sources(plan["calls"]):
        if chosen is not None and call["layer"] not in chosen:
            continue
        operands = {"x": inputs[source], "x2": inputs.get(call["layer"] + "/hidden")}
        spec = {}
        for offset, size, w_key in weight_spans(call):
            x_key = "x2" if w_key == "w2" else "x"
            x8 = _type8(operands[x_key], data)
            w8 = _type8(blob[offset:offset + size], weight)
            spec |= {x_key: x8.to_json(), w_key: w8.to_json(),
                     f"{x_key}_shift": data.frac - x8.frac, f"{w_key}_shift": weight.frac - w8.frac}
            narrowed[offset] = w8
        specs[call["layer"]] = spec
    calls = plan["calls"]
    for qkv, call in zip(calls, calls[1:], strict=False):
        if call["op"] == "attention" and (chosen is None or call["layer"] in chosen):
            specs[call["layer"]] = _attention8(types, inputs[qkv["layer"]])
    return specs, narrowed


PROBS8 = FixedType(MAC8_WIDTH, 1, False, *NARROWED)  # softmax numerators: 1.0 is code 128


def _attention8(types: dict[str, FixedType], qkv: np.ndarray) -> dict:
    """An 8-bit attention layer: its queries, keys and values rounded to one 8-bit type by the
    projection's epilogue (the scores are query x key, the mix numerator x value), the softmax
    numerators rounded to PROBS8 as the array's operand."""
    data, prob = types["data"], types["prob"]
    kind = _type8(qkv, data).to_json()
    shift = data.frac - kind["frac"]
    probs_shift = prob.frac - PROBS8.frac
    if probs_shift < 0 or probs_shift > 15:
        raise CodegenError(f"8-bit attention needs prob_t with 7 to 22 fractional bits, not "
                           f"{prob.frac}", remedy="leave the prob type at its default")
    return {"x": kind, "w": kind, "x_shift": shift, "w_shift": shift,
            "x2": PROBS8.to_json(), "w2": kind, "x2_shift": probs_shift, "w2_shift": shift}


def _type8(values: np.ndarray, wide: FixedType) -> FixedType:
    """The 8-bit type for `values` whose codes are `wide`'s codes shifted (binary points
    aligned): at most `wide`'s integer bits and at most its fractional bits."""
    integer = best_integer_bits(values, wide.integer - (wide.width - MAC8_WIDTH), wide.integer)
    return FixedType(MAC8_WIDTH, integer, True, *NARROWED)


def weight_spans(call: dict) -> list[tuple[int, int, str]]:
    """(offset, size, its "mac8" key) of each weight matrix an 8-bit layer multiplies."""
    if call["op"] == "experts":
        size = call["experts"] * call["dim"] * call["hidden"]
        return [(call["w1"], size, "w"), (call["w2"], size, "w2")]
    if call["op"] in MAC8_OPS:
        return [(call["w"], call["in_dim"] * call["out_dim"], "w")]
    return []


def requantized(raw: np.ndarray, blob: np.ndarray, kernel: dict, specs: dict[str, dict],
                weight: FixedType) -> np.ndarray:
    """weight_t codes with the `specs` layers' weight matrices rounded to their 8-bit types
    (what quantize_blob gives with them narrowed), for trials that change the 8-bit set."""
    out = raw.copy()
    for call in kernel["calls"]:
        for offset, size, key in weight_spans(call) if call["layer"] in specs else []:
            kind = FixedType.from_json(specs[call["layer"]][key])
            span = slice(offset, offset + size)
            out[span] = _narrowed_codes(blob[span], kind, weight)
    return out
