"""An evaluation written out: evaluation.json, evaluation.md and the plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def write_evaluation(out: Path, evaluation: dict, plots: bool = True) -> list[Path]:
    """evaluation.json (timings apart), evaluation.md and the plots, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "evaluation.json", out / "evaluation.md"]
    written[0].write_text(json.dumps(evaluation, indent=1, sort_keys=True) + "\n")
    written[1].write_text(render_markdown(evaluation))
    if plots:
        written += _plots(out, evaluation)
    return written


def render_markdown(evaluation: dict) -> str:
    lines = [f"# m3c evaluation: {evaluation['images']} images ({evaluation['source']}), "
             f"backend {evaluation['backend']}", ""]
    for project in evaluation["projects"]:
        lines += [f"## {project['project']} ({project['precision']})", "",
                  "| task | agreement with float | metric (accelerator) | metric (float) |",
                  "|---|---|---|---|"]
        for task, figures in project["tasks"].items():
            lines.append(f"| {task} | {_agreement_text(figures)} | {_metric_text(figures)} |")
        if project["saturation"]:
            lines += ["", "Saturated results per layer:", ""]
            lines += [f"- `{layer}`: {count}" for layer, count in project["saturation"].items()]
        lines += ["", "Worst images: " + ", ".join(
            f"{task}: {', '.join(w['image'] for w in figures['worst_images'][:3])}"
            for task, figures in project["tasks"].items()), ""]
    timing = evaluation["timing"]
    lines.append(f"{timing['seconds']:.1f} s on {timing['workers']} worker(s), "
                 f"{timing['processes']} process(es).")
    return "\n".join(lines) + "\n"


def _agreement_text(figures: dict) -> str:
    if figures["kind"] == "classes":
        return f"{figures['pixel_agreement']:.2%} of pixels"
    return f"relative RMSE {figures['relative_rmse']:.2%}"


def _metric_text(figures: dict) -> str:
    if "miou" in figures:
        return f"mIoU {figures['miou']:.3f} | mIoU {figures['miou_float']:.3f}"
    if "rmse" in figures:
        return f"RMSE {figures['rmse']:.3f} | RMSE {figures['rmse_float']:.3f}"
    return "(no labels) | (no labels)"


@dataclass(frozen=True)
class Panel:
    """One panel of a project's evaluation plot: per series (a task, or the saturated
    layers) the values it draws, on an axis of its own unit."""

    title: str
    xlabel: str
    series: dict[str, list[float]]
    chart: str = "histogram"  # per-image values; "bars": one value per series
    x_range: tuple[float, float] | None = None  # the histogram's bins span this


def evaluation_panels(project: dict) -> list[Panel]:
    """The panels a project's plot draws: per-image class agreement and per-image dense
    relative RMSE on separate axes (their units differ), and saturated results per layer
    only when some layer saturated."""
    def per_image(kind: str) -> dict[str, list[float]]:
        return {task: [100 * image[task] for image in project["per_image"]]
                for task, figures in project["tasks"].items() if figures["kind"] == kind}

    agreement = per_image("classes")
    lowest = min((min(values) for values in agreement.values()), default=100.0)
    panels = [Panel("class maps: agreement with float", "pixels agreeing (%)", agreement,
                    x_range=(min(lowest, 99.0), 100.0)),  # agreement cannot pass 100%
              Panel("dense maps: error against float", "relative RMSE (%)", per_image("dense")),
              Panel("saturated results per layer", "results pinned at the type's limits",
                    {layer: [count] for layer, count in project["saturation"].items()},
                    chart="bars")]
    return [panel for panel in panels if panel.series]


def saturation_note(project: dict) -> str | None:
    """What the plot says instead of an empty saturation panel."""
    if project["saturation"]:
        return None
    if project["precision"] == "fixed":
        return "no result saturated in any layer"
    return f"{project['precision']} precision: no saturation to count"


def _plots(out: Path, evaluation: dict) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    for number, project in enumerate(evaluation["projects"]):
        panels = evaluation_panels(project)
        figure = Figure(figsize=(4.6 * len(panels), 4))
        FigureCanvasAgg(figure)
        for panel, axes in zip(panels, figure.subplots(1, len(panels), squeeze=False)[0],
                               strict=True):
            _draw_panel(axes, panel)
        figure.suptitle(f"{Path(project['project']).name} ({project['precision']}), "
                        f"{len(project['per_image'])} images", fontsize=10)
        note = saturation_note(project)
        if note:
            figure.text(0.5, 0.01, note, ha="center", fontsize=8, color="dimgray")
        figure.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
        path = out / f"evaluation_{number}.png"
        figure.savefig(path, dpi=90, metadata={"Software": None})
        written.append(path)
    return written


def _draw_panel(axes, panel: Panel) -> None:
    from matplotlib.ticker import MaxNLocator

    if panel.chart == "bars":
        layers = list(panel.series)
        counts = [panel.series[layer][0] for layer in layers]
        axes.bar_label(axes.barh(range(len(layers)), counts, height=0.6), fontsize=7)
        axes.set_yticks(range(len(layers)), [layer[-30:] for layer in layers], fontsize=6)
        axes.set_ylim(-1, len(layers))  # one layer keeps a bar's height, not the panel's
    else:
        for task, values in panel.series.items():
            axes.hist(values, bins=20, range=panel.x_range, alpha=0.6, label=task)
        axes.set_ylabel("images")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize=8)
    axes.set_xlabel(panel.xlabel)
    axes.set_title(panel.title, fontsize=9)
