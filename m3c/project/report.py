"""The project report: report.json, report.md (templates/report/report.md.j2) and PNG plots.

Everything is estimated from the project's kernel.json, project.json (tiles, types, config)
and target, plus report/simulation.json when `m3c simulate` has replayed real routing (its
queue lengths then replace the balanced-routing assumption of compile time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from m3c.hw.design import Design, EstimateError, Precision
from m3c.hw.dse import DEFAULT_BUDGET, choose_design, parse_tiles
from m3c.hw.estimate import estimate_calls, mac_efficiency, summarize, uniform_queues
from m3c.hw.fit import unit_arrays, unit_resources
from m3c.hw.resources import bind_memories, capacity, total_resources
from m3c.hw.schedule import expert_schedule
from m3c.hw.target import Target, load_target
from m3c.runtime.project import encoder_shared_by_tasks

REPORT_DIR = "report"
SIMULATION_FILE = "simulation.json"
PLOTS = {"latency": "latency_per_layer.png", "timeline": "moe_timeline.png",
         "resources": "resources.png"}


def read_project(project: str | Path) -> tuple[Path, dict, dict]:
    """(project dir, project.json, kernel.json), or EstimateError naming what is missing."""
    project = Path(project)
    if not project.is_dir():
        raise EstimateError(f"{project}: no such project directory",
                            remedy="pass the -o directory of `m3c compile`")
    documents = []
    for name in ("project.json", "kernel.json"):
        path = project / name
        if not path.is_file():
            raise EstimateError(f"{path} is missing: {project} is not a compiled m3c project",
                                remedy=f"recompile it: m3c compile MODEL -o {project}")
        documents.append(json.loads(path.read_text()))
    return project, documents[0], documents[1]


def project_design(manifest: dict, kernel: dict, tiles=None,
                   budget: float = DEFAULT_BUDGET, routing: dict | None = None):
    """The design of a compiled project: its recorded tiles unless `tiles` overrides them."""
    target = load_target(manifest["target"])
    precision = Precision.from_types(manifest.get("types"))
    recorded = parse_tiles(manifest.get("tiles"))
    blocks = {name: manifest.get(name) if tiles is None else None
              for name in ("row_tile", "query_tile")}
    bound = frozenset(manifest.get("dsp_multipliers", ())) if tiles is None else None
    choice = choose_design(kernel["calls"], kernel["capacities"], target, precision, budget,
                           parse_tiles(tiles) or recorded, routing, **blocks,
                           dsp_multipliers=bound)
    if tiles is None and recorded is not None:  # describe the choice made at compile time
        choice.forced = bool(manifest.get("tiles_forced"))
        choice.candidates = int(manifest.get("tile_candidates", 1))
    return choice


def mean_routing(simulation: dict | None) -> dict[str, list[int]] | None:
    """Per MoE layer, the queue lengths averaged over the simulated inputs."""
    if not simulation:
        return None
    runs = simulation["routing"]
    return {layer: [round(sum(run[layer][e] for run in runs) / len(runs))
                    for e in range(len(runs[0][layer]))] for layer in runs[0]}


def build_report(manifest: dict, kernel: dict, choice, power_w: float | None = None,
                 simulation: dict | None = None) -> dict:
    """Everything the report shows, as plain data."""
    design: Design = choice.design
    target: Target = design.target
    power = target.board_power_w if power_w is None else power_w
    routing = mean_routing(simulation)
    calls = kernel["calls"]
    estimates = estimate_calls(calls, design, routing)
    summary = summarize(estimates, target.clock_mhz)
    tasks = manifest.get("tasks", [])
    encoder_runs = _encoder_runs(manifest)
    seconds = summary["ms"] / 1e3
    return {
        "target": target.name, "clock_mhz": target.clock_mhz, "precision": _precision(design),
        "layers_8bit": {"packed_array": design.geometry.packed,
                        "layers": manifest.get("mac8_layers", []),
                        "mixed": manifest.get("mixed")},
        "tiles": {"tile_in": design.tiles[0], "tile_out": design.tiles[1],
                  "row_tile": design.row_tile, "query_tile": design.query_tile,
                  "dsp_multipliers": sorted(design.dsp_multipliers),
                  "forced": choice.forced, "budget": choice.budget,
                  "candidates": choice.candidates},
        "efficiency": {"array_macs_per_cycle": design.geometry.macs,
                       "roofline_ms": summary["macs"] / design.geometry.macs
                       / (target.clock_mhz * 1e3),
                       "ops": mac_efficiency(estimates, design)},
        "resources": _resources(design, choice.budget),
        "latency": {**summary, "all_tasks_ms": summary["ms"] * encoder_runs,
                    "calls": [_call_row(e, target.clock_mhz) for e in estimates]},
        "routing": f"real (m3c simulate, {len(simulation['routing'])} inputs)"
        if simulation else "balanced (tokens x top_k / experts per expert)",
        "moe_timeline": _timeline(calls, design, routing),
        "flops": {"single_task": 2 * summary["macs"],
                  "all_tasks": 2 * summary["macs"] * encoder_runs, "tasks": len(tasks),
                  "encoder_runs": encoder_runs, "note": _work_note(manifest, encoder_runs)},
        "energy": {"board_power_w": power, "joules_per_inference": seconds * power,
                   "joules_all_tasks": seconds * power * encoder_runs},
        "simulation": simulation and {k: v for k, v in simulation.items() if k != "routing"},
        "heads": {"runs_on": "host", "encoder_macs": summary["macs"],
                  "tasks": _heads(manifest)},
    }


def _heads(manifest: dict) -> list[dict]:
    """The task heads project.json describes, in task order (project.json sorts its keys)."""
    heads = manifest.get("heads", {})
    return [{"task": task, **heads[task]} for task in manifest.get("tasks", []) if task in heads]


def _encoder_runs(manifest: dict) -> int:
    """Kernel runs for all tasks of one image: one when the router is shared (every task's
    features are the same), else one per task."""
    return 1 if encoder_shared_by_tasks(manifest) else len(manifest["tasks"])


def _work_note(manifest: dict, encoder_runs: int) -> str:
    if len(manifest.get("tasks", [])) <= 1:
        encoder = "encoder on the accelerator"
    elif encoder_runs == 1:
        encoder = "encoder on the accelerator, run once for all tasks by a shared router"
    else:
        encoder = "encoder on the accelerator, run once per task by per-task routing"
    return f"{encoder}; task heads run on the host, not counted"


def _precision(design: Design) -> dict:
    p = design.precision
    return {"floating": p.floating, "data_bits": p.data, "weight_bits": p.weight,
            "acc_bits": p.acc}


def _resources(design: Design, budget: float) -> dict:
    units = unit_resources(design, budget)
    used = total_resources(units)
    available = capacity(design.target)
    bindings = bind_memories(unit_arrays(design), design.target, budget)
    return {
        "units": {name: r.as_dict() for name, r in units.items()},
        "total": used.as_dict(), "available": available.as_dict(),
        "utilisation": {k: v / max(1, available.as_dict()[k]) for k, v in used.as_dict().items()},
        "arrays": [{"unit": b.array.unit, "array": b.array.name, "depth": b.array.depth,
                    "width": b.array.width, "banks": b.array.banks, "storage": b.storage,
                    "blocks": b.blocks} for b in bindings],
    }


def _call_row(estimate, clock_mhz: float) -> dict:
    return {"op": estimate.op, "layer": estimate.layer, "block": estimate.block,
            "part": estimate.part, "cycles": estimate.cycles,
            "ms": estimate.cycles / (clock_mhz * 1e3), "macs": estimate.macs}


def _timeline(calls: list[dict], design: Design, routing: dict | None) -> dict | None:
    """Load/compute steps of the first MoE layer."""
    top_k = next((c["top_k"] for c in calls if c["op"] == "route"), 1)
    call = next((c for c in calls if c["op"] == "experts"), None)
    if call is None:
        return None
    queues = (routing or {}).get(call["layer"]) or uniform_queues(call, top_k)
    steps = expert_schedule(call, design, queues)
    return {"layer": call["layer"], "steps": [vars(s) for s in steps]}


def render_markdown(report: dict) -> str:
    from m3c.project.render import template_environment

    return template_environment().get_template("report/report.md.j2").render(report=report)


def write_report(project: Path, report: dict, plots: bool = True) -> list[Path]:
    """report.json, report.md and (with matplotlib) the plots, under project/report/."""
    folder = project / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    written = [folder / "report.json", folder / "report.md"]
    if plots:
        written += _plots(folder, report)
    report_text = render_markdown({**report, "plots": [p.name for p in written[2:]]})
    (folder / "report.md").write_text(report_text)
    return written


def _plots(folder: Path, report: dict) -> list[Path]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        return []
    # Figure + the Agg canvas directly: pyplot's import alone would double a small compile.
    written = []
    for name, draw in (("latency", _plot_latency), ("timeline", _plot_timeline),
                       ("resources", _plot_resources)):
        figure = Figure(figsize=(7, 3.2), dpi=100)
        FigureCanvasAgg(figure)
        if draw(figure.add_subplot(), report):
            figure.tight_layout()
            path = folder / PLOTS[name]
            # no timestamps in the PNG: the same project gives the same bytes
            figure.savefig(path, metadata={"Software": None})
            written.append(path)
    return written


def _plot_latency(axes, report: dict) -> bool:
    blocks: dict[str, dict[str, float]] = {}
    for row in report["latency"]["calls"]:
        block = "embed" if row["block"] is None else str(row["block"])
        parts = blocks.setdefault(block, {})
        parts[row["part"]] = parts.get(row["part"], 0.0) + row["ms"]
    names = list(blocks)
    bottom = [0.0] * len(names)
    for part in ("patch_embedding", "self_attention", "dense_fc", "experts"):
        values = [blocks[n].get(part, 0.0) for n in names]
        axes.bar(names, values, bottom=bottom, label=part.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set(xlabel="block", ylabel="ms", title="Estimated latency per layer")
    axes.legend(fontsize=7)
    return True


@dataclass(frozen=True)
class TimelineBar:
    """One bar of the MoE timeline plot: an expert's weight load or compute, in µs."""

    row: str  # "load" (DDR to the on-chip weight buffer) or "compute" (the MAC array)
    expert: int
    start_us: float
    end_us: float


TIMELINE_ROWS = {"load": "weight load (DDR)", "compute": "compute (MAC array)"}


def timeline_bars(timeline: dict, clock_mhz: float) -> list[TimelineBar]:
    """The bars the MoE timeline plot draws: per expert of the schedule, its load and its
    compute, each on its own row."""
    us_per_cycle = 1 / clock_mhz
    return [TimelineBar(row, step["expert"], step[f"{row}_start"] * us_per_cycle,
                        step[f"{row}_end"] * us_per_cycle)
            for step in timeline["steps"] for row in TIMELINE_ROWS]


def timeline_overlaps(bars: list[TimelineBar]) -> list[tuple[float, float]]:
    """The spans (µs) in which a weight load runs while the array computes: the load time
    that double buffering hides."""
    loads = [bar for bar in bars if bar.row == "load"]
    computes = [bar for bar in bars if bar.row == "compute"]
    spans = [(max(load.start_us, compute.start_us), min(load.end_us, compute.end_us))
             for load in loads for compute in computes]
    return [(start, end) for start, end in spans if start < end]


def _plot_timeline(axes, report: dict) -> bool:
    from matplotlib.patches import Patch

    timeline = report["moe_timeline"]
    if not timeline:
        return False
    bars = timeline_bars(timeline, report["clock_mhz"])
    colours = {"load": "tab:orange", "compute": "tab:blue"}
    rows = {"compute": 0, "load": 1}
    for start, end in timeline_overlaps(bars):
        axes.axvspan(start, end, color="tab:green", alpha=0.15, linewidth=0)
    for bar in bars:
        axes.barh(rows[bar.row], bar.end_us - bar.start_us, left=bar.start_us, height=0.6,
                  color=colours[bar.row], edgecolor="black")
        axes.text((bar.start_us + bar.end_us) / 2, rows[bar.row], f"e{bar.expert}",
                  ha="center", va="center", fontsize=7, color="white")
    axes.set_yticks(list(rows.values()), [TIMELINE_ROWS[row] for row in rows])
    axes.set_ylim(-0.6, 2.1)  # room above the load row for the legend
    axes.set(xlabel=f"time (µs at {report['clock_mhz']:g} MHz)",
             title=f"MoE layer {timeline['layer']}: expert weight loads and compute")
    clock = report["clock_mhz"]
    top = axes.secondary_xaxis("top", functions=(lambda us: us * clock,
                                                 lambda cycles: cycles / clock))
    top.set_xlabel("cycles", fontsize=8)
    axes.legend(handles=[Patch(color=colours["load"], label=TIMELINE_ROWS["load"]),
                         Patch(color=colours["compute"], label=TIMELINE_ROWS["compute"]),
                         Patch(color="tab:green", alpha=0.3,
                               label="load hidden behind compute")],
                loc="upper center", ncols=3, fontsize=7, frameon=False)
    return True


def _plot_resources(axes, report: dict) -> bool:
    used = report["resources"]["utilisation"]
    kinds = list(used)
    axes.bar(kinds, [100 * used[k] for k in kinds], color="tab:green")
    axes.axhline(100, color="red", linewidth=1)
    axes.axhline(100 * report["tiles"]["budget"], color="gray", linestyle="--", linewidth=1)
    axes.set(ylabel="% of target", title=f"Resources on {report['target']}")
    return True


def simulated(project: Path) -> dict | None:
    """The routing `m3c simulate` recorded for the project, if it ran."""
    path = project / REPORT_DIR / SIMULATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def report_project(project: str | Path, power_w: float | None = None,
                   plots: bool = True) -> tuple[dict, list[Path]]:
    """`m3c report`: re-estimate a compiled project and rewrite its report."""
    project, manifest, kernel = read_project(project)
    simulation = simulated(project)
    choice = project_design(manifest, kernel, budget=manifest.get("budget", DEFAULT_BUDGET),
                            routing=mean_routing(simulation))
    report = build_report(manifest, kernel, choice, power_w, simulation)
    return report, write_report(project, report, plots)
