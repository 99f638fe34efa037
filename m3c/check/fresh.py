"""Fresh images: does the calibration hold on images the project never saw?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m3c.project.fidelity import Fidelity


@dataclass
class FreshRow:
    """One task on fresh images: the kernel (through its bit-exact emulation) and its host
    head against onnxruntime on the original model, held to m3c.project.fidelity's limits."""

    task: str
    images: int
    fidelity: Fidelity

    @property
    def passed(self) -> bool:
        return self.fidelity.passed  # NaN fails


def verify_fresh_images(project: str | Path, images: int | str, seed: int = 0
                        ) -> tuple[list[FreshRow], dict[str, int], str]:
    """(a row per task, saturated results per layer, where the images came from) for a count
    of generated images or an .npy batch / folder of pictures.

    A count gives synthetic scenes from the model's own generator when the project was exported
    by m3c (its config is in project.json), else standard-normal images.
    """
    from m3c.check.evaluate import evaluate
    from m3c.frontend.validate import load_project

    project = Path(project)
    manifest, _ = load_project(project)
    image_set = _fresh_images(images, manifest, seed)
    summary = evaluate([project], image_set, backend="emulate", workers=1)["projects"][0]
    saturated = sum(summary["saturation"].values())
    rows = [FreshRow(task, len(image_set.images), _fidelity(task, figures, saturated,
                                                            summary["results"]))
            for task, figures in summary["tasks"].items()]
    return rows, summary["saturation"], image_set.source


def _fidelity(task: str, figures: dict, saturated: int, results: int) -> Fidelity:
    classes = figures["kind"] == "classes"
    return Fidelity(task, classes,
                    figures["pixel_agreement"] if classes else figures["relative_rmse"],
                    figures["features_relative_rmse"], saturated, results)


def _fresh_images(images: int | str, manifest: dict, seed: int):
    from m3c.check.images import load_images, synthetic_images

    if isinstance(images, str):
        return load_images(images, manifest)
    return synthetic_images(manifest, images, seed)


def format_fresh_table(rows: list[FreshRow], saturation: dict[str, int], source: str) -> str:
    lines = [f"fresh images: {rows[0].images if rows else 0} {source}",
             f"{'task':<10} {'encoder vs float':>17} {'task output vs float':>32} "
             f"{'saturated results':>24}  verdict"]
    lines += [f"{row.task:<10} {row.fidelity.features_column():>17} "
              f"{row.fidelity.task_column():>32} {row.fidelity.saturation_column():>24}  "
              f"{'PASS' if row.passed else 'FAIL'}" for row in rows]
    if saturation:
        worst = sorted(saturation.items(), key=lambda item: -item[1])
        lines.append("saturated results per layer: " + ", ".join(
            f"{layer} {count}" for layer, count in worst[:8])
            + (f" (+{len(worst) - 8} layers)" if len(worst) > 8 else ""))
    else:
        lines.append("saturated results per layer: none")
    return "\n".join(lines)
