"""Fresh images: does the calibration hold on images the project never saw?"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m3c.check.metrics import TOKEN_NOTE, fixed_onnxruntime_tolerance


@dataclass
class FreshRow:
    """One task on fresh images: the kernel (through its bit-exact emulation) and its host
    head against onnxruntime on the original model."""

    task: str
    images: int
    features_error: float  # encoder_error's first figure, the largest over the images
    features_worst: float  # the largest error of any token
    tolerance: float
    agreement: str

    @property
    def passed(self) -> bool:
        return self.features_error <= self.tolerance  # NaN fails


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
    manifest, kernel = load_project(project)
    image_set = _fresh_images(images, manifest, seed)
    summary = evaluate([project], image_set, backend="emulate", workers=1)["projects"][0]
    tolerance = fixed_onnxruntime_tolerance(manifest, kernel)
    rows = [FreshRow(task, len(image_set.images), figures["features_error"],
                     figures["features_worst"], tolerance, _agreement(figures))
            for task, figures in summary["tasks"].items()]
    return rows, summary["saturation"], image_set.source


def _fresh_images(images: int | str, manifest: dict, seed: int):
    from m3c.check.images import load_images, synthetic_images

    if isinstance(images, str):
        return load_images(images, manifest)
    return synthetic_images(manifest, images, seed)


def _agreement(figures: dict) -> str:
    if figures["kind"] == "classes":
        return f"{100 * figures['pixel_agreement']:.2f}% of pixels agree"
    return f"relative RMSE {100 * figures['relative_rmse']:.2f}%"


def format_fresh_table(rows: list[FreshRow], saturation: dict[str, int], source: str) -> str:
    lines = [f"fresh images: {rows[0].images if rows else 0} {source}",
             f"{'task':<12} {'encoder vs ORT*':>15} {'worst token':>12} {'limit':>9}  "
             f"{'task output vs ORT':<28} verdict"]
    lines += [f"{row.task:<12} {row.features_error:>15.2e} {row.features_worst:>12.2e} "
              f"{row.tolerance:>9.1e}  {row.agreement:<28} {'PASS' if row.passed else 'FAIL'}"
              for row in rows]
    lines.append(TOKEN_NOTE)
    if saturation:
        worst = sorted(saturation.items(), key=lambda item: -item[1])
        lines.append("saturated results per layer: " + ", ".join(
            f"{layer} {count}" for layer, count in worst[:8])
            + (f" (+{len(worst) - 8} layers)" if len(worst) > 8 else ""))
    else:
        lines.append("saturated results per layer: none")
    return "\n".join(lines)
