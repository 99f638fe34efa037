"""How close a fixed-point kernel must stay to the float model, whatever types it was given.

A limit measured in steps of the user's own data type grows with that type: an 8-bit type
with a coarse step would pass nearly anything. These limits are relative to the float model
instead (onnxruntime on the original ONNX file) and to what the tasks compute, so the same
criterion holds for 16-bit, int8, mixed and any --precision-config:

- each task output: the share of pixels whose class (argmax) agrees with float's, or for a
  dense output (depth, normals) its relative RMSE against float's;
- the encoder features: their relative RMSE against float's (wide room: an 8-bit layer moves
  them by 1-12% on the presets while its task outputs stay within the limits above);
- saturated results: results pinned at the data type's limits, as a share of all results.

Measured on the presets (random and trained weights, 16-bit and int8 types): agreement
>= 99.87%, dense relative RMSE <= 2.2%, features <= 12%, no saturated result; the trained
micro model with `types: {data: "ap_fixed<8,3>"}` agrees on 66% of pixels, depth is 42% off
and 1,879 results saturate on 8 images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AGREEMENT_LIMIT = 0.99
RELATIVE_RMSE_LIMIT = 0.05
FEATURES_LIMIT = 0.25
SATURATION_LIMIT = 1e-3

# Outputs of several channels that are one quantity each (regressions), not class scores.
DENSE_MULTICHANNEL = frozenset({"normals"})


def is_classes(task: str, output: np.ndarray) -> bool:
    """Is `output` [N, C, ...] class scores (compared by argmax) rather than a dense map?"""
    return output.ndim > 1 and output.shape[1] > 1 and task not in DENSE_MULTICHANNEL


def relative_rmse(got: np.ndarray, want: np.ndarray) -> float:
    """rms(got - want) / rms(want); infinite on NaN or Inf (never close), 0 when both are 0."""
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    if got.size != want.size or got.size == 0:
        return math.inf
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return math.inf
    difference, energy = float(np.sum((got - want) ** 2)), float(np.sum(want ** 2))
    if energy == 0.0:
        return 0.0 if difference == 0.0 else math.inf
    return math.sqrt(difference / energy)


def agreement(got: np.ndarray, want: np.ndarray) -> float:
    """The share of positions whose argmax over axis 1 (the classes) is the same; 0 on NaN."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.size == 0 or not np.isfinite(got).all():
        return 0.0
    return float(np.mean(got.argmax(1) == want.argmax(1)))


@dataclass
class Fidelity:
    """One task's fixed-point outputs against the float model on the same image(s)."""

    task: str
    classes: bool  # task_figure is an agreement (higher is better), else a relative RMSE
    task_figure: float
    features: float  # the encoder features' relative RMSE
    saturated: int
    results: int  # results the saturation share is of

    @property
    def saturation(self) -> float:
        return self.saturated / self.results if self.results else math.inf

    @property
    def task_passed(self) -> bool:
        # Written so that NaN fails.
        if self.classes:
            return self.task_figure >= AGREEMENT_LIMIT
        return self.task_figure <= RELATIVE_RMSE_LIMIT

    @property
    def passed(self) -> bool:
        return self.task_passed and self.features <= FEATURES_LIMIT and \
            self.saturation <= SATURATION_LIMIT

    def task_column(self) -> str:
        if self.classes:
            return f"{100 * self.task_figure:.2f}% agree (>= {100 * AGREEMENT_LIMIT:.0f}%)"
        return f"{100 * self.task_figure:.2f}% rel. RMSE (<= {100 * RELATIVE_RMSE_LIMIT:.0f}%)"

    def features_column(self) -> str:
        return f"{100 * self.features:.2f}% (<= {100 * FEATURES_LIMIT:.0f}%)"

    def saturation_column(self) -> str:
        return f"{self.saturated} = {100 * self.saturation:.3f}% (<= {100 * SATURATION_LIMIT:.1f}%)"

    def failures(self) -> list[str]:
        """What leaves its limit, in words."""
        found = []
        if not self.task_passed:
            found.append(f"{self.task}: {self.task_column()}")
        if not self.features <= FEATURES_LIMIT:
            found.append(f"{self.task}: encoder features {self.features_column()} off float")
        if not self.saturation <= SATURATION_LIMIT:
            found.append(f"{self.task}: {self.saturation_column()} of the results saturate")
        return found


def fidelity(task: str, output: np.ndarray, reference_output: np.ndarray,
             features: np.ndarray, reference_features: np.ndarray,
             saturation: SaturationCounter) -> Fidelity:
    """A task's figures: its output and encoder features against the float model's."""
    classes = is_classes(task, np.asarray(reference_output))
    figure = agreement(output, reference_output) if classes else \
        relative_rmse(output, reference_output)
    return Fidelity(task, classes, figure, relative_rmse(features, reference_features),
                    saturation.saturated, saturation.results)


class SaturationCounter:
    """An emulator observer: of the results in the data type (the residual stream, hidden
    and expert outputs), how many are pinned at its largest or smallest code, per layer."""

    WHAT = ("output", "hidden", "expert_output")

    def __init__(self, data_type) -> None:
        self.data_type = data_type
        self.per_layer: dict[str, int] = {}  # saturated results
        self.layer_results: dict[str, int] = {}  # all results

    @property
    def saturated(self) -> int:
        return sum(self.per_layer.values())

    @property
    def results(self) -> int:
        return sum(self.layer_results.values())

    def __call__(self, call: dict, what: str, values: np.ndarray) -> None:
        if what not in self.WHAT:
            return
        layer = call["layer"]
        self.layer_results[layer] = self.layer_results.get(layer, 0) + values.size
        pinned = int(np.count_nonzero((values == self.data_type.raw_max)
                                      | (values == self.data_type.raw_min)))
        if pinned:
            self.per_layer[layer] = self.per_layer.get(layer, 0) + pinned


class LayerRecorder:
    """An emulator observer keeping each layer's data-type results (as floats), in order:
    those row for row with the tokens (a layer's output, the residual stream after it), so
    fixed and float compare token by token; an expert's rows depend on the routing, which
    rounding may change for a few tokens."""

    WHAT = ("output", "residual")

    def __init__(self, data_type=None) -> None:
        self.scale = 1.0 if data_type is None else math.ldexp(1.0, -data_type.frac)
        self.layers: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, call: dict, what: str, values: np.ndarray) -> None:
        if what in self.WHAT:
            self.layers[(call["layer"], what)] = values.astype(np.float64) * self.scale


def first_layer_off(fixed: LayerRecorder, floating: LayerRecorder,
                    saturation: SaturationCounter) -> tuple[str, str]:
    """The first layer whose fixed-point results leave the limits against the float
    emulation (relative RMSE beyond FEATURES_LIMIT, or saturating beyond SATURATION_LIMIT of
    its results), and why; the layer that moves furthest from float when none does alone."""
    worst, worst_error = "", -1.0
    for (layer, what), values in fixed.layers.items():
        pinned = saturation.per_layer.get(layer, 0)
        if pinned > SATURATION_LIMIT * saturation.layer_results.get(layer, 0):
            return layer, f"{pinned} of its results saturate"
        error = relative_rmse(values, floating.layers[(layer, what)])
        if not error <= FEATURES_LIMIT:
            return layer, f"its {what} is {100 * error:.1f}% off float (relative RMSE)"
        if error > worst_error:
            worst, worst_error = layer, error
    return worst, f"it moves furthest from float ({100 * worst_error:.1f}% relative RMSE)"
