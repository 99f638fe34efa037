"""`m3c compile` on small-nyud (default fixed precision, calibration included, no C-sim: wall
time and peak memory; targets <= 20 s, <= 3 GB) and the C-simulated kernel's time per image on
tiny-cityscapes in float and fixed beside onnxruntime on the same model.

Usage: python benchmarks/compile.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import emit, exported, median_seconds, timed_runs

from m3c.ir.sessions import ort_session
from m3c.project import csim
from m3c.project.compile import compile_model


def compile_figures(repeats: int) -> dict:
    """`m3c compile` of small-nyud in the default precision (fixed point, calibration
    included)."""
    model = exported("small-nyud")
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "m3c", "--quiet", "compile", str(model), "--target",
                   "zcu104", "-o", str(Path(scratch) / "build"), "--force"]
        return {"preset": "small-nyud", "precision": "fixed", **timed_runs(command, repeats),
                "target_wall_s": 20, "target_peak_mib": 3072}


def csim_figures(repeats: int) -> dict:
    """Seconds per image of the C-simulated encoder in float and fixed, and of onnxruntime
    running the whole model (encoder and heads) on the same image."""
    import onnx

    model = exported("tiny-cityscapes")
    session = ort_session(onnx.load(str(model)))
    image = np.random.default_rng(0).standard_normal((1, 3, 128, 256)).astype(np.float32)
    feeds = {"image": image, "task": np.array(0, dtype=np.int64)}
    figures = {"preset": "tiny-cityscapes"}
    with tempfile.TemporaryDirectory() as scratch:
        for precision in ("float", "fixed"):
            project = compile_model(model, out=Path(scratch) / precision, precision=precision)
            kernel = csim.load(project)
            times = median_seconds(lambda kernel=kernel: kernel.run(image, 0), repeats)
            figures[f"csim_{precision}_s_per_image_median"] = round(times, 3)
    figures["onnxruntime_s_per_image_median"] = round(
        median_seconds(lambda: session.run(None, feeds), repeats), 4)
    figures["note"] = "C-sim covers the encoder; onnxruntime runs encoder and both heads"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    emit({"compile": compile_figures(args.repeats), "csim": csim_figures(args.repeats)})


if __name__ == "__main__":
    main()
