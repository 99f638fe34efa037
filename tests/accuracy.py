"""The accuracy check the precision tests share: a compiled project's task outputs on held-out
synthetic scenes against onnxruntime running the float model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from m3c.hw.mixed import task_loss
from m3c.ir.sessions import ort_session
from m3c.project import csim
from m3c.runtime.emulator import KernelEmulator


def head_losses(project: Path, onnx_path: Path, config, count: int = 12) -> dict[str, float]:
    """Per task: segmentation disagreement or depth relative RMSE (m3c.hw.mixed.task_loss) of the
    emulated kernel + host head against onnxruntime; the emulation equals the C-simulation on
    the first two scenes."""
    from m3c.frontend.models.data import make_dataset

    manifest = json.loads((project / "project.json").read_text())
    emulator, kernel = KernelEmulator.from_project(project), csim.load(project)
    original = ort_session(onnx.load(str(onnx_path)))
    scenes = make_dataset(config, count, seed=424242)["image"]
    losses = {}
    for task_id, task in enumerate(manifest["tasks"]):
        head = ort_session(onnx.load(str(project / "host" / "heads" / f"{task}.onnx")))
        floats, ours = [], []
        for index, image in enumerate(scenes):
            feeds = {"image": image[None], "task": np.array(task_id, dtype=np.int64)}
            floats.append(original.run([task], feeds)[0])
            features = emulator.run(image, task_id)
            if index < 2:
                assert np.array_equal(features, kernel.run(image, task_id))
            shaped = features.reshape(manifest["features_shape"])
            ours.append(head.run(None, {head.get_inputs()[0].name: shaped})[0])
        losses[task] = task_loss(np.concatenate(floats), np.concatenate(ours))
    return losses
