"""The estimates beside the M3ViT paper's figures (REFERENCE.md), printed as JSON.

1. Latency breakdown of the paper's configuration (ViT-small, NYUD 480x640, E=16, top-4,
   ZCU104 at 300 MHz, 16-bit fixed point; the MAC array chosen by the DSE) at the compile
   default budget (1.0: the resource caps a placed design can meet, m3c.hw.resources.CAPS),
   beside the paper's measured 84.538 ms, part by part; per op its MACs, cycles and MAC
   efficiency, the DSP roofline (MACs / (1,728 MAC/cycle x 300 MHz)), and the resources used
   against the caps. The estimate assumes II 1 in every pipelined loop; `m3c check` on a
   compiled project says what the generated code allows.
2. On-chip memory of the naive (all experts) and expert-major designs for E = 4 ... 64, and
   the naive / expert-major ratio beside the paper's 2.40x.
3. Cache-based vs expert-major latency on routing from real inputs (synthetic scenes) to the
   trained micro model and to a random-weight small-nyud model, beside 8.88x / 9.23x.

With `--precision int8` the paper configuration's products run with 8-bit operands on a
packed array (two MACs per DSP48E2; the patch embedding and the routers stay 16-bit, two passes
per panel) and the DSP roofline counts two MACs per DSP.

Usage: python benchmarks/estimate.py [--images 2] [--budget 1.0] [--precision fixed|int8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import emit, exported

from m3c.check.images import synthetic_images
from m3c.check.memsim import capture_routing, onchip_bytes, simulate
from m3c.hw.configs import as_int8, calls_for_config
from m3c.hw.design import Design, Precision
from m3c.hw.dse import DEFAULT_BUDGET, choose_design
from m3c.hw.estimate import estimate_calls, mac_efficiency, summarize
from m3c.hw.resources import capacity, limits
from m3c.hw.target import load_target

FIXED16 = Precision(data=16, weight=16, acc=48, prob=18, floating=False)
PAPER_NYUD_MS = {"patch_embedding": 0.768, "self_attention": 2 * 23.378, "dense_fc": 18.447,
                 "experts": 18.567, "total": 84.538}
PAPER_ONCHIP_RATIO = 2.40
PAPER_CACHE_RATIO = {"nyud": 8.88, "pascal": 9.23}


def _config(name: str, **overrides) -> dict:
    from m3c.frontend.models.config import preset

    return json.loads(preset(name, **overrides).to_json())


def _choose(config: dict, budget: float, precision: Precision = FIXED16, int8: bool = False):
    calls, capacities = calls_for_config(config)
    if int8:
        calls, capacities = as_int8(calls, capacities)
    return calls, choose_design(calls, capacities, load_target("zcu104"), precision, budget)


def paper_breakdown(budget: float, int8: bool = False) -> dict:
    calls, choice = _choose(_config("small-nyud"), budget, int8=int8)
    design = choice.design
    estimates = estimate_calls(calls, design)
    summary = summarize(estimates, design.target.clock_mhz)
    ours = {part: summary["parts"][part]["ms"] for part in PAPER_NYUD_MS if part != "total"}
    ours["total"] = summary["ms"]
    clock = design.target.clock_mhz * 1e3
    per_dsp = 2 if int8 else 1  # MACs a DSP48E2 computes per cycle
    roofline = summary["macs"] / (per_dsp * design.target.dsp) / clock
    kind = "int8 (two MACs per DSP)" if int8 else "fixed 16-bit"
    return {"config": f"small-nyud (ViT-small, 480x640, E=16, top-4), {kind}, 300 MHz",
            "budget": budget, "array": list(design.tiles), "row_tile": design.row_tile,
            "query_tile": design.query_tile,
            "multipliers_on_dsps": sorted(design.dsp_multipliers),
            "resources": choice.resources.as_dict(),
            "caps": limits(design.target, budget).as_dict(),
            "device": capacity(design.target).as_dict(),
            "parts": {part: {"model_ms": round(ours[part], 3), "paper_ms": paper,
                             "model_over_paper": round(ours[part] / paper, 2)}
                      for part, paper in PAPER_NYUD_MS.items()},
            "ops": {op: {"macs": row["macs"], "ms": round(row["cycles"] / clock, 3),
                         "mac_efficiency": round(row["efficiency"], 3)}
                    for op, row in mac_efficiency(estimates, design).items()},
            "macs": summary["macs"],
            "array_roofline_ms": round(summary["macs"] / design.geometry.macs / clock, 2),
            "dsp_roofline_ms": round(roofline, 2),
            "share_of_dsp_roofline": round(roofline / summary["ms"], 3),
            "fp32_fits": _fits(_config("small-nyud"), budget, Precision())}


def _fits(config: dict, budget: float, precision: Precision) -> bool | str:
    from m3c.hw.design import EstimateError

    try:
        _choose(config, budget, precision)
    except EstimateError as error:
        return error.message.splitlines()[-1]
    return True


def onchip_table(budget: float) -> dict:
    rows = {}
    for experts in (4, 8, 16, 32, 64):
        _, capacities = calls_for_config(_config("small-nyud", num_experts=experts))
        design = Design(load_target("zcu104"), capacities, (48, 32), FIXED16)
        rows[experts] = {kind: onchip_bytes(design, kind) for kind in ("naive", "expert_major")}
    at16 = rows[16]
    return {"bytes_by_experts": rows,
            "naive_over_expert_major_total_E16": round(
                at16["naive"]["total"] / at16["expert_major"]["total"], 2),
            "naive_over_expert_major_weights_E16": round(
                at16["naive"]["weights"] / at16["expert_major"]["weights"], 2),
            "paper_ratio": PAPER_ONCHIP_RATIO}


def _ratios(stage: Path, config: dict, images: int, budget: float) -> dict:
    calls, choice = _choose(config, budget)
    height, width = config["image_size"]
    shape = [1, config["in_chans"], height, width]
    manifest = {"config": config, "tasks": config["tasks"], "image_shape": shape}
    pixels = list(synthetic_images(manifest, images, seed=11).images)
    runs = capture_routing(stage, pixels, range(len(config["tasks"])))
    results = simulate(calls, choice.design, runs)
    moe = {kind: sum(layer["cycles"] for layer in r["layers"].values())
           for kind, r in results.items()}
    sweep = {slots: round(simulate(calls, choice.design, runs, slots)["cache"]
                          ["latency_vs_expert_major"], 3) for slots in (1, 2, 4, 8, 16)}
    route = next(c for c in calls if c["op"] == "route")
    visits = len(runs[0]) * route["tokens"] * route["top_k"]  # token-expert pairs

    return {"inferences": len(runs), "tiles": list(choice.design.tiles),
            "cache_miss_rate": round(results["cache"]["loads"] / visits, 3),
            "cache_over_expert_major_by_slots": sweep,
            "latency_ms": {k: round(r["ms"], 3) for k, r in results.items()},
            "stall_cycles": {k: r["stall_cycles"] for k, r in results.items()},
            "ddr_bytes": {k: r["ddr_bytes"] for k, r in results.items()},
            "cache_over_expert_major": round(results["cache"]["latency_vs_expert_major"], 3),
            "cache_over_expert_major_moe_layers_only": round(
                moe["cache"] / moe["expert_major"], 3),
            "paper": PAPER_CACHE_RATIO}


def _stage(model: Path, scratch: Path) -> Path:
    import m3c

    m3c.lower(model, save_dir=scratch)
    return sorted(p for p in scratch.glob("[0-9][0-9]_*.onnx") if ".head_" not in p.name)[-1]


def cache_ratios(images: int, budget: float) -> dict:
    import m3c
    from m3c.frontend.models.train import load_or_train

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = load_or_train("micro-nyud", quiet=True)
        path = m3c.export(model, scratch / "micro.onnx")
        micro = _ratios(_stage(path, scratch / "micro"), json.loads(model.config.to_json()),
                        images, budget)
        small = _ratios(_stage(exported("small-nyud"), scratch / "small"),
                        _config("small-nyud"), images, budget)
    return {"trained_micro_nyud": micro, "random_small_nyud": small}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET)
    parser.add_argument("--precision", choices=("fixed", "int8"), default="fixed")
    args = parser.parse_args()
    int8 = args.precision == "int8"
    emit({"paper_breakdown": paper_breakdown(args.budget, int8),
          "onchip": onchip_table(args.budget),
          "cache_vs_expert_major": cache_ratios(args.images, args.budget)})


if __name__ == "__main__":
    main()
