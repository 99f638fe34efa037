"""A compiled project as the runtime sees it: manifest, register map, DDR weight words.

Works on a full project directory and on the board package (overlay/, host/, weights/, data/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ddr import WordFormat
from .errors import AcceleratorError

REMEDY = "recompile with `m3c compile model.onnx -o DIR` (or copy the whole host/ folder)"


def _find(root: Path, *candidates: str) -> Path:
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise AcceleratorError(f"{root / candidates[0]} is missing: not a compiled m3c project",
                           remedy=REMEDY)


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise AcceleratorError(f"cannot read {path}: {error}", remedy=REMEDY) from error
    if not isinstance(document, dict):
        raise AcceleratorError(f"{path} holds a JSON {type(document).__name__}, not an object",
                               remedy=REMEDY)
    return document


def encoder_shared_by_tasks(manifest: dict) -> bool:
    """Whether the kernel computes the same features for every task, so that one run can feed
    all heads. Only the MoE routers read the task, and only per-task router tables (multi-gate)
    or per-task biases (task-conditioned) make it matter: compile records whether the kernel's
    routers hold such rows (`routers_read_task`). Projects compiled before that: a single
    router (m3c's `--gate single`, in the config m3c's exporter writes) or a model without MoE
    layers ignores the task; an unrecorded gate counts as routed per task (always right)."""
    if "routers_read_task" in manifest:
        return len(manifest.get("tasks", [])) <= 1 or not manifest["routers_read_task"]
    gate = manifest.get("config", {}).get("gate", "multi")
    without_moe = manifest.get("moe_layers") == []
    return len(manifest.get("tasks", [])) <= 1 or without_moe or gate == "single"


@dataclass
class Project:
    """Everything a backend needs from the compiled project directory."""

    root: Path
    manifest: dict
    register_map: dict
    weights_path: Path
    weight_word: WordFormat
    data_word: WordFormat

    @classmethod
    def load(cls, root: str | Path) -> Project:
        root = Path(root)
        if not root.is_dir():
            raise AcceleratorError(f"project directory {root} does not exist", remedy=REMEDY)
        # The board package (`make package`) carries these two as copies in host/.
        manifest = _read_json(_find(root, "project.json", "host/project.json"))
        register_map = _read_json(_find(root, "hls/register_map.json",
                                        "host/register_map.json"))
        layout = _read_json(_find(root, "weights/weights.json"))
        types = manifest.get("types")
        weights_path = _find(root, "weights/weights.bin")
        weight_word = WordFormat.from_types(types, "weight", layout.get("ddr_dtype"))
        if (weight_word.spec is None) != (np.dtype(weight_word.dtype).kind == "f"):
            raise AcceleratorError(f"{root / 'weights/weights.json'}: DDR dtype "
                                   f"{weight_word.dtype} does not fit the weight type in "
                                   "project.json", remedy=REMEDY)
        return cls(root, manifest, register_map, weights_path, weight_word,
                   WordFormat.from_types(types, "data"))

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["tasks"])

    @property
    def shared_encoder(self) -> bool:
        """Whether one kernel run serves every task (see `encoder_shared_by_tasks`)."""
        return encoder_shared_by_tasks(self.manifest)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["image_shape"])

    @property
    def features_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["features_shape"])

    @property
    def elements(self) -> dict[str, int]:
        """Elements (DDR lanes) of each kernel pointer argument's buffer."""
        ddr = self.manifest["ddr"]
        return {name: int(ddr[name]) for name in ("weights", "image", "features")}

    @property
    def features_row(self) -> int:
        """Lanes of one features row in DDR: the features padded to whole DDR words."""
        return int(self.manifest["ddr"]["features_row"])

    def features_from_lanes(self, lanes: np.ndarray) -> np.ndarray:
        """The features (float32, features_shape) out of their padded DDR rows."""
        rows = np.asarray(lanes).reshape(-1, self.features_row)
        dim = self.features_shape[-1]
        return rows[:, :dim].reshape(self.features_shape)

    def lanes_from_features(self, features: np.ndarray) -> np.ndarray:
        """Features into padded DDR rows (what the kernel writes)."""
        dim = self.features_shape[-1]
        rows = np.zeros((self.elements["features"] // self.features_row, self.features_row),
                        features.dtype)
        rows[:, :dim] = features.reshape(-1, dim)
        return rows.reshape(-1)

    def weight_words(self) -> np.ndarray:
        words = np.fromfile(self.weights_path, dtype=self.weight_word.dtype)
        if words.size != self.elements["weights"]:
            raise AcceleratorError(f"{self.weights_path} holds {words.size} weight lanes, "
                                   f"project.json expects {self.elements['weights']}",
                                   remedy=REMEDY)
        return words

    def task_index(self, task: int | str) -> int:
        """A task by name or index; unknown tasks name the ones that exist."""
        if isinstance(task, str) and task in self.tasks:
            return self.tasks.index(task)
        if isinstance(task, int | np.integer) and not isinstance(task, bool) and (
                0 <= int(task) < len(self.tasks)):
            return int(task)
        raise AcceleratorError(f"unknown task {task!r} for {self.root}",
                               remedy="use one of " + ", ".join(self.tasks))
