"""Evaluation speed, printed as JSON.

1. The fixed-point emulation of one image's encoder (one core, BLAS on one thread) beside
   onnxruntime running the same encoder in float on one thread, for small-nyud and
   tiny-cityscapes (random weights, default fixed compile), and the emulation again on numpy's
   passes alone (as without numba). Medians of --repeats runs.
2. `m3c evaluate` of the synthetic-trained micro-nyud on --scenes synthetic scenes with 1
   worker, 2 workers and `--ray local`: wall time of each (child processes), and whether the
   figures in evaluation.json are identical (timings aside).

Usage: python benchmarks/evaluate.py [--repeats 3] [--scenes 64] [--skip-small]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from common import emit, exported, median_seconds


def emulation_figures(preset: str, repeats: int) -> dict:
    import onnx
    import onnx.utils
    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    from m3c.project.compile import compile_model
    from m3c.runtime import emulator as emulator_module
    from m3c.runtime.emulator import KernelEmulator

    model = exported(preset)
    with tempfile.TemporaryDirectory() as scratch:
        project = compile_model(model, out=Path(scratch) / "build")
        manifest = json.loads((project / "project.json").read_text())
        emulator = KernelEmulator.from_project(project)
    image = np.random.default_rng(0).standard_normal(manifest["image_shape"]).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # The encoder alone (the heads run on the host either way): the exported graph cut at the
    # tensor the kernel writes.
    typed = onnx.shape_inference.infer_shapes(onnx.load(str(model)))
    encoder = onnx.utils.Extractor(typed).extract_model(["image", "task"],
                                                        [manifest["features_tensor"]])
    session = ort.InferenceSession(encoder.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {"image": image, "task": np.array(0, dtype=np.int64)}
    with threadpool_limits(limits=1):
        emulate = round(median_seconds(lambda: emulator.run(image, 0), repeats), 3)
        # The same run on numpy's passes alone, as where numba is missing (a board's host).
        with mock.patch.object(emulator_module, "fused_loops", lambda: None):
            numpy_only = round(median_seconds(lambda: emulator.run(image, 0), repeats), 3)
    reference = round(median_seconds(lambda: session.run(None, feeds), repeats), 3)
    return {"preset": preset, "emulation_s_per_image": emulate,
            "onnxruntime_encoder_s_per_image": reference,
            "emulation_over_onnxruntime": round(emulate / reference, 2),
            "emulation_without_numba_s_per_image": numpy_only}


def evaluate_figures(scenes: int) -> dict:
    import m3c
    from m3c.frontend.models.train import load_or_train

    model = load_or_train("micro-nyud", quiet=True)
    figures: dict = {"preset": "micro-nyud (synthetic-trained)", "scenes": scenes, "runs": {}}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        project = m3c.compile(m3c.export(model, scratch / "model.onnx"), out=scratch / "build")
        results = {}
        for name, options in (("1 worker", ["--workers", "1"]), ("2 workers", ["--workers", "2"]),
                              ("ray local", ["--ray", "local"])):
            out = scratch / name.replace(" ", "_")
            command = [sys.executable, "-m", "m3c", "--quiet", "evaluate", str(project),
                       "--synthetic", str(scenes), "-o", str(out), "--no-plots", *options]
            start = time.perf_counter()
            subprocess.run(command, check=True)
            figures["runs"][name] = {"wall_s": round(time.perf_counter() - start, 2)}
            evaluation = json.loads((out / "evaluation.json").read_text())
            figures["runs"][name]["in_process_s"] = round(evaluation.pop("timing")["seconds"], 2)
            results[name] = evaluation
        figures["identical_figures"] = all(r == results["1 worker"] for r in results.values())
        figures["tasks"] = results["1 worker"]["projects"][0]["tasks"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--skip-small", action="store_true", help="tiny-cityscapes only")
    args = parser.parse_args()
    presets = ["tiny-cityscapes"] + ([] if args.skip_small else ["small-nyud"])
    emit({"emulation": [emulation_figures(preset, args.repeats) for preset in presets],
          "evaluate": evaluate_figures(args.scenes)})


if __name__ == "__main__":
    main()
