"""Mixed precision: 8 or 16 bits per layer, for the least estimated latency within an
agreement budget.

Each layer that can run 8-bit (m3c.hw.precision.MAC8_OPS and attention) is measured alone: the
fixed-point emulation of the calibration images with only that layer 8-bit, its task outputs
(through the host heads) against the float emulation's. A layer's loss is the worst task's:
the share of pixels whose class differs (segmentation) or the relative RMSE (a single-channel
task such as depth). Layers are then taken greedily, the least loss per saved cycle first, each
kept only if the combination, measured again, stays within the budget (losses do not add up).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from m3c.errors import CodegenError

Loss = Callable[[Sequence[str]], float]


def parse_loss(text: str | float) -> float:
    """'1%' or '0.01' -> 0.01; a fraction in [0, 1)."""
    spelled = str(text).strip()
    try:
        value = float(spelled[:-1]) / 100 if spelled.endswith("%") else float(spelled)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise CodegenError(f"--max-agreement-loss {text!r} is not a fraction in [0, 1)",
                           remedy="write it as a percentage or a fraction, e.g. 1% or 0.01")
    return value


def task_loss(reference: np.ndarray, output: np.ndarray) -> float:
    """Disagreement of one task output [N,C,H,W] with its reference: the share of pixels
    whose class differs (C > 1), else the relative RMSE."""
    if reference.shape[1] > 1:
        return float((reference.argmax(1) != output.argmax(1)).mean())
    scale = float(np.sqrt((reference.astype(np.float64) ** 2).mean())) or 1.0
    return float(np.sqrt(((reference - output).astype(np.float64) ** 2).mean())) / scale


@dataclass
class MixedChoice:
    """The 8-bit layers chosen, every candidate's loss alone, the combination's loss."""

    layers: list[str]
    sensitivity: dict[str, float]
    savings: dict[str, int]
    loss: float
    budget: float

    def to_json(self) -> dict:
        return {"max_agreement_loss": self.budget, "measured_loss": self.loss,
                "layers_8bit": self.layers, "sensitivity": self.sensitivity,
                "saved_cycles": self.savings}


def choose_layers(loss: Loss, savings: dict[str, int], budget: float) -> MixedChoice:
    """Greedy: the least loss per saved cycle first, each kept while the measured loss of the
    combination stays within `budget`."""
    candidates = [layer for layer, saved in savings.items() if saved > 0]
    sensitivity = {layer: loss([layer]) for layer in candidates}
    order = sorted(candidates, key=lambda layer: (sensitivity[layer] / savings[layer], layer))
    chosen: list[str] = []
    current = 0.0
    for layer in order:
        if sensitivity[layer] > budget:
            continue
        trial = loss([*chosen, layer])
        if trial <= budget:
            chosen.append(layer)
            current = trial
    return MixedChoice(chosen, sensitivity, savings, current, budget)


def precision_config(choice: MixedChoice, config: dict | None = None) -> dict:
    """A precision-config document that reproduces the choice (`--precision-config`)."""
    config = dict(config or {})
    layers = dict(config.get("layers") or {})
    for layer in choice.layers:
        layers[layer] = {**layers.get(layer, {}), "bits": 8}
    config["layers"] = layers
    return config


def emulated_loss(kernel: dict, types: dict, raw: np.ndarray, blob: np.ndarray,
                  specs: dict[str, dict], samples: list[tuple[np.ndarray, int]],
                  heads: Callable[[int, np.ndarray], np.ndarray]) -> Loss:
    """The loss of making `layers` 8-bit: the fixed-point emulation of the samples (the other
    layers 16-bit) through the heads, against the float emulation's outputs."""
    from m3c.hw.codegen import apply_mac8
    from m3c.hw.precision import requantized
    from m3c.runtime.emulator import KernelEmulator

    reference = [heads(task, features) for (_, task), features in
                 zip(samples, KernelEmulator(kernel, blob).run_many(samples), strict=True)]

    def loss(layers: Sequence[str]) -> float:
        chosen = {layer: specs[layer] for layer in layers}
        trial = apply_mac8(kernel, chosen)
        weights = requantized(raw, blob, kernel, chosen, types["weight"])
        features = KernelEmulator(trial, weights, types, raw=True).run_many(samples)
        outputs = [heads(task, f) for (_, task), f in zip(samples, features, strict=True)]
        tasks = sorted({task for _, task in samples})
        return max(task_loss(np.concatenate([r for r, (_, t) in zip(reference, samples,
                                                                     strict=True) if t == task]),
                             np.concatenate([o for o, (_, t) in zip(outputs, samples,
                                                                    strict=True) if t == task]))
                   for task in tasks)

    return loss


def layer_savings(kernel: dict, specs: dict[str, dict], design) -> dict[str, int]:
    """Estimated cycles each layer saves by being 8-bit on `design` (a packed array)."""
    from m3c.hw.codegen import apply_mac8
    from m3c.hw.estimate import estimate_calls

    wide = estimate_calls(apply_mac8(kernel, {})["calls"], design)
    narrow = estimate_calls(apply_mac8(kernel, specs)["calls"], design)
    savings = dict.fromkeys(specs, 0)
    for w, n in zip(wide, narrow, strict=True):
        if w.layer in savings:
            savings[w.layer] += w.cycles - n.cycles
    return savings
