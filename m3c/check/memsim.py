"""Memory-system simulation: replay the routing of real inputs through three MoE designs.

For every MoE layer the routing (which tokens each expert gets) is captured by running the
project's expert-major graph (intermediate/NN_*.onnx) in the reference evaluator with the
ExpertQueues outputs exposed. The same routing then drives, on the same MAC array
(m3c.hw.estimate's expert_compute_cycles and expert_load_cycles; the token-major designs take
their tokens one at a time):

- naive: every expert of the layer on chip; all E are loaded before the first token (stall
  E x load), then tokens run token-major with no further stall;
- cache: token-major with an LRU cache of `slots` experts (by default two, the on-chip weight
  memory of the expert-major design): each token visits its top-k experts, best score first;
  a miss stalls for one load (what the next token needs is not known ahead);
- expert-major: m3c's design, experts in index order over their queues, each expert's weight
  panels streaming into the array's shadow registers while it computes (m3c.hw.estimate's
  expert_schedule): stall = the panel loads the rows of a tile do not hide.

Latency adds the non-MoE calls (the same in all three), so ratios are whole-inference ratios,
like the paper's Table 4.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from m3c import progress
from m3c.check.images import load_images, synthetic_images
from m3c.hw.design import Design, EstimateError
from m3c.hw.estimate import estimate_calls
from m3c.hw.fit import unit_arrays
from m3c.hw.schedule import expert_compute_cycles, expert_load_cycles, expert_schedule

DESIGNS = ("naive", "cache", "expert_major")


@dataclass
class LayerRouting:
    """One MoE layer on one input: each token's experts, best score first."""

    layer: str
    experts: int
    token_experts: list[list[int]]

    @property
    def queue_lengths(self) -> list[int]:
        lengths = [0] * self.experts
        for chosen in self.token_experts:
            for e in chosen:
                lengths[e] += 1
        return lengths


def _last_stage(project: Path) -> Path:
    stages = sorted(p for p in (project / "intermediate").glob("[0-9][0-9]_*.onnx")
                    if ".head_" not in p.name)
    if not stages:
        raise EstimateError(f"{project}/intermediate has no lowered stage",
                            remedy=f"recompile the project: m3c compile MODEL -o {project}")
    return stages[-1]


def _queue_model(source: Path) -> tuple[onnx.ModelProto, list[tuple[str, list[str]]]]:
    """The expert-major graph (a project's last stage, or an .onnx file) with every
    ExpertQueues output added as a graph output."""
    model = onnx.load(str(_last_stage(source) if source.is_dir() else source))
    layers = []
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.domain == "m3c" and node.op_type == "ExpertQueues":
            layers.append((node.name.split("/")[0], list(node.output)))
            for name in node.output:
                if name not in existing:
                    model.graph.output.append(onnx.ValueInfoProto(name=name))
    if not layers:
        raise EstimateError(f"{source} has no MoE layers to simulate")
    return model, layers


def capture_routing(project: str | Path, images: Sequence[np.ndarray],
                    tasks: Sequence[int]) -> list[list[LayerRouting]]:
    """Routing of every (image, task) pair: one list of LayerRouting per inference.
    `project` is a compiled project or a saved expert-major graph (m3c.lower(...).save)."""
    from onnx.reference import ReferenceEvaluator

    from m3c.ir.ops import reference_ops

    model, layers = _queue_model(Path(project))
    evaluator = ReferenceEvaluator(model, new_ops=reference_ops())
    names = [o.name for o in model.graph.output]
    inputs = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    runs = []
    pairs = [(task, image) for task in tasks for image in images]
    for task, image in progress.steps(pairs, len(pairs), "routing images"):
        feeds = {"image": np.asarray(image, np.float32).reshape(1, *image.shape[-3:])}
        if "task" in inputs:
            feeds["task"] = np.array(task, dtype=np.int64)
        values = dict(zip(names, evaluator.run(None, feeds), strict=True))
        runs.append([_layer_routing(layer, [values[n] for n in outputs])
                     for layer, outputs in layers])
    return runs


def _layer_routing(layer: str, queues: list[np.ndarray]) -> LayerRouting:
    queue_tokens, queue_scores, queue_len = queues
    experts, tokens = queue_tokens.shape
    choices: list[list[tuple[float, int]]] = [[] for _ in range(tokens)]
    for e in range(experts):
        for slot in range(int(queue_len[e])):
            choices[int(queue_tokens[e, slot])].append((-float(queue_scores[e, slot]), e))
    return LayerRouting(layer, experts, [[e for _, e in sorted(c)] for c in choices])


@dataclass
class LayerResult:
    design: str
    layer: str
    cycles: int
    stall_cycles: int
    ddr_bytes: int
    loads: int


def expert_bytes(call: dict, weight_bits: int) -> int:
    """One expert's weights and biases."""
    d, h = call["dim"], call["hidden"]
    return (2 * d * h + d + h) * weight_bits // 8


def simulate_naive(call: dict, design: Design, routing: LayerRouting) -> LayerResult:
    load = expert_load_cycles(call, design)
    stall = routing.experts * load
    compute = sum(len(chosen) * expert_compute_cycles(call, design, 1)
                  for chosen in routing.token_experts)
    size = expert_bytes(call, design.precision.weight)
    return LayerResult("naive", routing.layer, stall + compute, stall,
                       routing.experts * size, routing.experts)


def simulate_cache(call: dict, design: Design, routing: LayerRouting,
                   slots: int = 2) -> LayerResult:
    """Token-major with an LRU expert cache of `slots` entries."""
    load = expert_load_cycles(call, design)
    one_token = expert_compute_cycles(call, design, 1)
    cache: OrderedDict[int, None] = OrderedDict()
    misses = compute = 0
    for chosen in routing.token_experts:
        for e in chosen:
            if e in cache:
                cache.move_to_end(e)
            else:
                misses += 1
                cache[e] = None
                if len(cache) > slots:
                    cache.popitem(last=False)
            compute += one_token
    stall = misses * load
    return LayerResult("cache", routing.layer, compute + stall, stall,
                       misses * expert_bytes(call, design.precision.weight), misses)


def simulate_expert_major(call: dict, design: Design, routing: LayerRouting) -> LayerResult:
    steps = expert_schedule(call, design, routing.queue_lengths)
    if not steps:
        return LayerResult("expert_major", routing.layer, 0, 0, 0, 0)
    busy = sum(expert_compute_cycles(call, design, s.tokens) for s in steps)
    zero = steps[0].load_start
    cycles = steps[-1].compute_end - zero
    return LayerResult("expert_major", routing.layer, cycles, cycles - busy,
                       len(steps) * expert_bytes(call, design.precision.weight), len(steps))


def onchip_bytes(design: Design, kind: str, slots: int = 2) -> dict[str, int]:
    """On-chip bytes of a design: expert weight storage and everything else (the kernel's
    other arrays). The expert-major kernel holds two weight panels of the MAC array (current
    and shadow), whatever the number of experts; the token-major designs hold whole experts."""
    c, p, g = design.capacities, design.precision, design.geometry
    call = {"dim": c["max_dim"], "hidden": c["max_expert_hidden"]}
    if kind == "expert_major":
        weights = 2 * g.macs * g.lane_bits // 8
    else:
        held = c["max_experts"] if kind == "naive" else slots
        weights = held * expert_bytes(call, p.weight)
    other = sum(a.banks * a.bank_bits for a in unit_arrays(design)) // 8
    return {"weights": weights, "other": other, "total": weights + other}


SIMULATORS = {"naive": simulate_naive, "cache": simulate_cache,
              "expert_major": simulate_expert_major}


def simulate(calls: Sequence[dict], design: Design, runs: list[list[LayerRouting]],
             slots: int = 2) -> dict:
    """Per design: mean latency, stall cycles, DDR bytes over the runs; on-chip bytes."""
    moe_calls = {c["layer"]: c for c in calls if c["op"] == "experts"}
    results: dict[str, dict] = {}
    for kind in DESIGNS:
        totals = {"cycles": 0, "stall_cycles": 0, "ddr_bytes": 0, "loads": 0}
        per_layer: dict[str, list[LayerResult]] = {}
        for run in runs:
            other = sum(e.cycles for e in estimate_calls(calls, design, _routing(run))
                        if e.op != "experts")
            totals["cycles"] += other
            for routing in run:
                sim = SIMULATORS[kind]
                extra = {"slots": slots} if kind == "cache" else {}
                layer = sim(moe_calls[routing.layer], design, routing, **extra)
                per_layer.setdefault(routing.layer, []).append(layer)
                for key in ("cycles", "stall_cycles", "ddr_bytes", "loads"):
                    totals[key] += getattr(layer, key)
        mean = {k: v / len(runs) for k, v in totals.items()}
        mean["ms"] = mean["cycles"] / (design.target.clock_mhz * 1e3)
        mean["onchip_bytes"] = onchip_bytes(design, kind, slots)
        mean["layers"] = {name: _mean_layer(items) for name, items in per_layer.items()}
        results[kind] = mean
    base = results["expert_major"]["cycles"]
    for kind in DESIGNS:
        results[kind]["latency_vs_expert_major"] = results[kind]["cycles"] / base
    return results


def _routing(run: list[LayerRouting]) -> dict[str, list[int]]:
    return {r.layer: r.queue_lengths for r in run}


def _mean_layer(items: list[LayerResult]) -> dict:
    keys = ("cycles", "stall_cycles", "ddr_bytes", "loads")
    return {k: sum(getattr(i, k) for i in items) / len(items) for k in keys}


def routing_json(runs: list[list[LayerRouting]]) -> list[dict]:
    """Queue lengths per layer per run: what `m3c report` replays for the real-routing estimate."""
    return [{r.layer: r.queue_lengths for r in run} for run in runs]


def simulate_project(project: str | Path, images: int | Sequence[str | Path] = 4,
                     seed: int = 0, slots: int = 2) -> dict:
    """`m3c simulate`: capture the routing of `images` (a count of synthetic scenes or .npy
    files) for every task, replay it, save report/simulation.json and refresh the report."""
    from m3c.project.report import REPORT_DIR, SIMULATION_FILE, project_design, read_project

    if slots < 1:
        raise EstimateError(f"the cache needs at least one slot, not {slots}")
    project, manifest, kernel = read_project(project)
    if isinstance(images, int):
        if images < 1:
            raise EstimateError(f"--images {images}: simulate at least one image")
        pixels = list(synthetic_images(manifest, images, seed).images)
    else:  # pictures, folders of them and .npy batches, as `m3c evaluate` reads them
        pixels = [image for spec in images for image in load_images(spec, manifest).images]
    runs = capture_routing(project, pixels, range(max(1, len(manifest["tasks"]))))
    design = project_design(manifest, kernel).design
    simulation = {"inputs": len(runs), "images": len(pixels), "slots": slots,
                  "designs": simulate(kernel["calls"], design, runs, slots),
                  "routing": routing_json(runs)}
    folder = project / REPORT_DIR
    folder.mkdir(exist_ok=True)
    (folder / SIMULATION_FILE).write_text(json.dumps(simulation, indent=1, sort_keys=True))
    return simulation
