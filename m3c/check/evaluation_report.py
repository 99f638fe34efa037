"""An evaluation written out: evaluation.json, evaluation.md and the plots."""

from __future__ import annotations

import json
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


def _plots(out: Path, evaluation: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    written = []
    for number, project in enumerate(evaluation["projects"]):
        figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4))
        for task in project["tasks"]:
            left.hist([image[task] for image in project["per_image"]], bins=20, alpha=0.6,
                      label=task)
        left.set_title("per image: class agreement / dense relative RMSE")
        left.legend()
        layers = list(project["saturation"])
        right.barh(range(len(layers)), [project["saturation"][n] for n in layers])
        right.set_yticks(range(len(layers)), [n[-30:] for n in layers], fontsize=6)
        right.set_title("saturated results per layer" if layers else "no saturation")
        figure.tight_layout()
        path = out / f"evaluation_{number}.png"
        figure.savefig(path, dpi=90, metadata={"Software": None})
        pyplot.close(figure)
        written.append(path)
    return written
