"""Task heads on the host (onnxruntime, imported on first use) and their output maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import AcceleratorError


class Heads:
    """One onnxruntime session per task head (`host/heads/<task>.onnx`), created lazily."""

    def __init__(self, folder: Path, tasks: list[str]) -> None:
        self.folder = folder
        self.sessions: dict = {}
        missing = [t for t in tasks if not (folder / f"{t}.onnx").is_file()]
        if missing:
            raise AcceleratorError(f"task heads missing in {folder}: {', '.join(missing)}",
                                   remedy="recompile the project (host/heads/ is generated)")

    def run(self, task: str, features: np.ndarray) -> np.ndarray:
        if task not in self.sessions:
            try:
                import onnxruntime
            except ImportError as error:
                raise AcceleratorError("onnxruntime is needed to run the task heads",
                                       remedy="pip install onnxruntime") from error
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            self.sessions[task] = onnxruntime.InferenceSession(
                str(self.folder / f"{task}.onnx"), options, providers=["CPUExecutionProvider"])
        session = self.sessions[task]
        return session.run(None, {session.get_inputs()[0].name: features})[0]


def output_map(output: np.ndarray) -> np.ndarray:
    """A head's [1,C,H,W] output as a map: class indices (C > 1) or the values (C == 1)."""
    if output.shape[1] > 1:
        return output[0].argmax(0).astype(np.int64)
    return output[0, 0]


def map_to_pixels(values: np.ndarray) -> np.ndarray:
    """A map as a picture: classes in distinct colours, continuous values as 8-bit grey."""
    if np.issubdtype(values.dtype, np.integer):
        # A fixed, well-spread colour per class (golden-ratio hues), 0 = black background.
        hues = (np.arange(int(values.max()) + 1) * 0.618034) % 1.0
        colours = (255 * _hue_to_rgb(hues)).astype(np.uint8)
        colours[0] = 0
        return colours[values]
    low, high = float(values.min()), float(values.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return ((values - low) * scale).round().astype(np.uint8)


def _hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    channels = [np.clip(np.abs((hue * 6 + shift) % 6 - 3) - 1, 0, 1) for shift in (0, 4, 2)]
    return np.stack(channels, -1)
