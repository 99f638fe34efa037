"""One batch of an evaluation: a compiled project (emulated, C-simulated or its float
reference) and onnxruntime on the same images, with per-image records."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m3c.check.metrics import encoder_error
from m3c.project.fidelity import SaturationCounter, is_classes
from m3c.runtime.project import encoder_shared_by_tasks


class ProjectRunner:
    """One project's compiled model and float reference, loaded once per worker."""

    def __init__(self, project: Path, backend: str) -> None:
        import onnx

        from m3c.runtime.fixed import FixedType

        self.manifest = json.loads((project / "project.json").read_text())
        self.tasks = self.manifest["tasks"]
        self.backend = backend
        self.heads = {task: _session(onnx.load(str(project / "host/heads" / f"{task}.onnx")))
                      for task in self.tasks}
        self.features = self.manifest["features_tensor"]
        self.reference = _session(_with_output(
            onnx.load(str(project / "intermediate/00_import.onnx")), self.features))
        # A model may drop the task input when one router is shared by its tasks (m3c's
        # interface: README, "Bring your own model"); m3c's own exports keep it unused.
        # Either way every task's output then comes from one run of each model.
        self.task_input = "task" in {value.name for value in self.reference.get_inputs()}
        self.shared_encoder = not self.task_input or encoder_shared_by_tasks(self.manifest)
        types = self.manifest.get("types") or {}
        self.data_type = (FixedType.from_json(types["data"])
                          if self.manifest.get("precision") == "fixed" else None)
        self.kernel = None
        if backend == "emulate":
            from m3c.runtime.emulator import KernelEmulator

            self.kernel = KernelEmulator.from_project(project)
        elif backend == "csim":
            from m3c.project import csim

            self.kernel = csim.load(project)

    def evaluate(self, index: int, image: np.ndarray, labels: dict[str, np.ndarray]) -> dict:
        """Per task: this image's agreement with float, errors against labels, saturation,
        and the largest difference of the kernel's features from float's."""
        record = {"index": index, "tasks": {}, "saturation": {}, "results": 0}
        for task_ids in self._kernel_runs():
            record["tasks"].update(self._evaluate_run(image, task_ids, labels, record))
        return record

    def _kernel_runs(self) -> list[list[int]]:
        """The task ids each kernel run serves: all of them when one router is shared (the
        features are the same for every task), else one run per task."""
        task_ids = list(range(len(self.tasks)))
        return [task_ids] if self.shared_encoder else [[task_id] for task_id in task_ids]

    def _evaluate_run(self, image: np.ndarray, task_ids: list[int],
                      labels: dict[str, np.ndarray], record: dict) -> dict[str, dict]:
        """One run of the float reference and of the kernel, then the heads of `task_ids`."""
        names = [self.tasks[task_id] for task_id in task_ids]
        feeds = {"image": image[None]}
        if self.task_input:
            feeds["task"] = np.array(task_ids[0], dtype=np.int64)
        # Only these tasks' heads: the others would be computed and thrown away.
        features, *references = self.reference.run([self.features, *names], feeds)
        ours, features_error, squared = None, (0.0, 0.0), 0.0
        if self.backend != "reference":
            ours = self._features(image, task_ids[0], record)
            features_error = encoder_error(ours, features, self.manifest["features_shape"],
                                           f"{', '.join(names)} features")
            squared = float(np.sum((ours.astype(np.float64).ravel()
                                    - features.astype(np.float64).ravel()) ** 2))
        energy = float(np.sum(features.astype(np.float64) ** 2))
        records = {}
        for name, reference in zip(names, references, strict=True):
            compiled = reference if ours is None else self._head(name, ours)
            records[name] = {**_task_record(name, compiled, reference, labels.get(name)),
                             "features_error": features_error[0],
                             "features_worst": features_error[1],
                             "features_squared_difference": squared,
                             "features_squared_reference": energy}
        return records

    def _features(self, image: np.ndarray, task_id: int, record: dict) -> np.ndarray:
        """The kernel's features; the emulation also counts saturated results into
        `record` (per layer, and how many results there were)."""
        if self.backend != "emulate" or self.data_type is None:
            return self.kernel.run(image, task_id)
        counter = SaturationCounter(self.data_type)
        features = self.kernel.run(image, task_id, counter)
        for layer, pinned in counter.per_layer.items():
            record["saturation"][layer] = record["saturation"].get(layer, 0) + pinned
        record["results"] += counter.results
        return features

    def _head(self, task: str, features: np.ndarray) -> np.ndarray:
        head, shape = self.heads[task], self.manifest["features_shape"]
        return head.run(None, {head.get_inputs()[0].name: features.reshape(shape)})[0]


def _with_output(model, name: str):
    """`model` with tensor `name` as an extra output (the encoder's features)."""
    import onnx

    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None))
    return model


def _session(model):
    """onnxruntime on one thread: a worker is one core, and sums keep one order."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _task_record(task: str, compiled: np.ndarray, reference: np.ndarray,
                 label: np.ndarray | None) -> dict:
    """What one image contributes to a task's figures (sums, so batches add exactly)."""
    if is_classes(task, reference):
        ours, theirs = compiled[0].argmax(0), reference[0].argmax(0)
        record = {"kind": "classes", "agreement": float(np.mean(ours == theirs))}
        if label is not None:
            classes, label = reference.shape[1], np.asarray(label)
            record["confusion"] = _confusion(at_label(ours, label), label, classes).tolist()
            record["confusion_float"] = _confusion(at_label(theirs, label), label,
                                                   classes).tolist()
        return record
    difference = float(np.sum((compiled.astype(np.float64) - reference) ** 2))
    energy = float(np.sum(reference.astype(np.float64) ** 2))
    record = {"kind": "dense", "squared_difference": difference, "squared_reference": energy,
              "relative_rmse": math.sqrt(difference / energy) if energy else 0.0}
    if label is not None:
        target = np.asarray(label, np.float64)
        ours, theirs = (at_label(maps, target).reshape(target.shape)
                        for maps in (compiled, reference))
        record["squared_error"] = float(np.sum((ours - target) ** 2))
        record["squared_error_float"] = float(np.sum((theirs - target) ** 2))
        record["label_elements"] = int(target.size)
    return record


def at_label(maps: np.ndarray, label: np.ndarray) -> np.ndarray:
    """`maps` [..., H, W] sampled at the label's resolution (nearest pixel centre): labels come
    at the image's size, while a head may output another (an upsampling fixed for one patch
    size). Unchanged when the label's H x W is the maps' (or holds as many values)."""
    height, width = maps.shape[-2:]
    if label.size == maps.size or label.ndim < 2:
        return maps
    rows = ((np.arange(label.shape[-2]) + 0.5) * height / label.shape[-2]).astype(np.int64)
    cols = ((np.arange(label.shape[-1]) + 0.5) * width / label.shape[-1]).astype(np.int64)
    return maps[..., rows[:, None], cols]


def _confusion(prediction: np.ndarray, label: np.ndarray, classes: int) -> np.ndarray:
    label = np.asarray(label).reshape(prediction.shape)
    valid = (label >= 0) & (label < classes)
    pairs = label[valid].astype(np.int64) * classes + prediction[valid]
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


@dataclass(frozen=True)
class Batch:
    project: int  # index into the evaluated projects
    indices: tuple[int, ...]


def _runner(project: Path, backend: str) -> ProjectRunner:
    key = (str(project), backend)
    if key not in _RUNNERS:
        _RUNNERS[key] = ProjectRunner(project, backend)
    return _RUNNERS[key]


def evaluate_batch(project: Path, backend: str, indices: Sequence[int], images: np.ndarray,
                   labels: dict[str, np.ndarray]) -> dict:
    """One batch in this process: its records, and which process ran it."""
    from threadpoolctl import threadpool_limits

    runner = _runner(project, backend)
    with threadpool_limits(limits=1):  # one core per worker; sums in one order
        records = [runner.evaluate(i, image, {t: v[n] for t, v in labels.items()})
                   for n, (i, image) in enumerate(zip(indices, images, strict=True))]
    return {"records": records, "pid": os.getpid()}


_RUNNERS: dict[tuple[str, str], ProjectRunner] = {}
