"""The main job on the built-in example: train (or reuse) the micro model, export, lower, verify.

Run with `make demo`, or `python examples/demo.py [--preset micro-nyud] [--out out/demo]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import m3c
from m3c.errors import M3CError


def _step(message: str) -> float:
    print(f"==> {message}", flush=True)
    return time.perf_counter()


def held_out_table(model, project, count: int = 8) -> str:
    """Per task: torch vs the C-simulated accelerator (+ host head) on held-out scenes."""
    import json

    import onnx
    import torch

    from m3c import csim
    from m3c.graph import ort_session
    from m3c.models.data import make_dataset
    from m3c.models.train import depth_metrics, mean_iou

    manifest = json.loads((project / "project.json").read_text())
    kernel = csim.load(project)
    data = make_dataset(model.config, count, seed=424242)
    rows = [f"    {'task':<8} {'torch':>14} {'accelerator':>14}  agreement"]
    for task_id, (task, channels) in enumerate(model.config.tasks.items()):
        head = ort_session(onnx.load(str(project / "host" / "heads" / f"{task}.onnx")))
        torch_out, accel_out = [], []
        for image in data["image"]:
            with torch.no_grad():
                torch_out.append(model(torch.from_numpy(image[None]), task_id)[task_id])
            features = kernel.run(image, task_id).reshape(manifest["features_shape"])
            output = head.run(None, {head.get_inputs()[0].name: features})[0]
            accel_out.append(torch.from_numpy(output))
        ours, theirs = torch.cat(torch_out), torch.cat(accel_out)
        target = torch.from_numpy(data[task])
        if channels > 1:
            a, b = ours.argmax(1), theirs.argmax(1)
            quality = [f"mIoU {mean_iou(p, target, channels):.3f}" for p in (a, b)]
            agreement = f"{float((a == b).float().mean()):.2%} of pixels"
        else:
            quality = [f"RMSE {depth_metrics(p, target)['rmse']:.3f}" for p in (ours, theirs)]
            agreement = f"max diff {float((ours - theirs).abs().max()):.1e}"
        rows.append(f"    {task:<8} {quality[0]:>14} {quality[1]:>14}  {agreement}")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="micro-nyud")
    parser.add_argument("--gate", choices=("multi", "task"), default="multi")
    parser.add_argument("--out", default="out/demo")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from m3c.models.train import load_or_train

    start = _step(f"training {args.preset} ({args.gate}-gate) on synthetic scenes (cached)")
    model = load_or_train(args.preset, gate=args.gate)
    print(f"    ready in {time.perf_counter() - start:.1f} s")

    start = _step("exporting to ONNX")
    onnx_path = m3c.export(model, out / "model.onnx")
    print(f"    {onnx_path} in {time.perf_counter() - start:.1f} s")

    start = _step("compiling for zcu104: lower, expert-major rewrite, HLS project, C-sim build")
    project = m3c.compile(onnx_path, target="zcu104", out=out / "build", force=True)
    print(f"    {project} in {time.perf_counter() - start:.1f} s; "
          f"`make -C {project} csim` re-runs its testbench")

    _step("held-out synthetic scenes: torch vs the C-simulated accelerator + host heads")
    print(held_out_table(model, project))

    _step("verifying every lowering stage and the C-simulation against onnxruntime")
    from m3c.verify import format_project_table, format_table, verify, verify_project

    rows = verify(onnx_path)
    print(format_table(rows))
    project_rows = verify_project(project)
    print(format_project_table(project_rows))
    worst = max(row.max_error for row in rows)
    passed = worst <= 1e-4 and all(row.passed for row in project_rows)
    print(f"\nworst stage error {worst:.2e} (tolerance 1e-4); C-simulation "
          f"{'equals' if passed else 'DIFFERS FROM'} its reference: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except M3CError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        sys.exit(2)
