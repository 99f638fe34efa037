"""The main job end to end: train (or reuse) the micro model, export, compile for zcu104, run
the accelerator through m3c.runtime (csim backend) on held-out scenes for every task, verify.

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
    """Per task: torch vs the compiled accelerator (m3c.runtime, csim backend) + host heads."""
    import torch

    from m3c.frontend.models.data import make_dataset
    from m3c.frontend.models.train import depth_metrics, mean_iou
    from m3c.runtime import Accelerator

    data = make_dataset(model.config, count, seed=424242)
    rows = [f"    {'task':<8} {'torch':>14} {'accelerator':>14}  {'agreement':<18}"
            f"{'ms/image':>12}"]
    with Accelerator.open(project, backend="csim") as accelerator:
        for task_id, task in enumerate(accelerator.tasks):
            accelerator.switch_task(task)  # one register write, no weight reload
            with torch.no_grad():
                ours = model(torch.from_numpy(data["image"]), task_id)[task_id]
            started = time.perf_counter()
            theirs = torch.from_numpy(accelerator.run_batch(data["image"]))
            per_image = (time.perf_counter() - started) / count * 1e3
            rows.append(_quality_row(task, model.config.tasks[task], ours, theirs,
                                     torch.from_numpy(data[task]), mean_iou, depth_metrics)
                        + f"{per_image:>12.1f}")
        writes = accelerator.engine.driver.buffer_writes
    rows.append(f"    weights written to (simulated) DDR {writes['weights']}x for "
                f"{len(accelerator.tasks)} tasks x {count} images; switching tasks = "
                f"one write to the task register")
    return "\n".join(rows)


PRECISIONS = ("fixed", "int8", "mixed")  # one row each: 16-bit, 8-bit, 8 or 16 per layer


def precision_table(model, onnx_path: Path, out: Path, count: int = 8) -> str:
    """Per precision: segmentation agreement and depth relative RMSE against torch on held-out
    scenes (the accelerator's csim backend), its share of 8-bit MACs and estimated latency.
    Calibration uses training-distribution scenes (another seed than the held-out ones)."""
    import json

    import torch

    from m3c.frontend.models.data import make_dataset
    from m3c.hw.estimate import call_macs
    from m3c.runtime import Accelerator

    data = make_dataset(model.config, count, seed=424242)
    calib = make_dataset(model.config, 8, seed=99)["image"]
    rows = [f"    {'precision':<10} {'semseg agreement':>17} {'depth rel. RMSE':>16} "
            f"{'8-bit MACs':>11} {'est. ms':>8}"]
    for precision in PRECISIONS:
        project = m3c.compile(onnx_path, target="zcu104", out=out / f"build_{precision}",
                              force=True, precision=precision, calib=calib,
                              max_agreement_loss="1%")
        figures = {}
        with Accelerator.open(project, backend="csim") as accelerator:
            for task_id, task in enumerate(accelerator.tasks):
                accelerator.switch_task(task)
                with torch.no_grad():
                    ours = model(torch.from_numpy(data["image"]), task_id)[task_id]
                theirs = torch.from_numpy(accelerator.run_batch(data["image"]))
                if model.config.tasks[task] > 1:
                    figures[task] = float((ours.argmax(1) == theirs.argmax(1)).float().mean())
                else:
                    figures[task] = float((ours - theirs).pow(2).mean().sqrt()
                                          / ours.pow(2).mean().sqrt())
        kernel = json.loads((project / "kernel.json").read_text())
        top_k = next((c["top_k"] for c in kernel["calls"] if c["op"] == "route"), 1)
        macs = [(call_macs(c, top_k), "mac8" in c) for c in kernel["calls"]]
        share = sum(m for m, narrow in macs if narrow) / sum(m for m, _ in macs)
        report = json.loads((project / "report" / "report.json").read_text())
        rows.append(f"    {precision:<10} {figures.get('semseg', float('nan')):>17.2%} "
                    f"{figures.get('depth', float('nan')):>16.2%} {share:>11.0%} "
                    f"{report['latency']['ms']:>8.3f}")
    return "\n".join(rows)


def _quality_row(task, channels, ours, theirs, target, mean_iou, depth_metrics) -> str:
    if channels > 1:
        a, b = ours.argmax(1), theirs.argmax(1)
        quality = [f"mIoU {mean_iou(p, target, channels):.3f}" for p in (a, b)]
        agreement = f"{float((a == b).float().mean()):.2%} of pixels"
    else:
        quality = [f"RMSE {depth_metrics(p, target)['rmse']:.3f}" for p in (ours, theirs)]
        relative = float((ours - theirs).pow(2).mean().sqrt() / ours.pow(2).mean().sqrt())
        agreement = f"rel. RMSE {relative:.2%}"
    return f"    {task:<8} {quality[0]:>14} {quality[1]:>14}  {agreement:<18}"


def _write_scene(model, path: Path) -> Path:
    """A held-out scene as an 8-bit PNG (undoing the training normalisation), for `m3c run`."""
    from m3c.frontend.models.data import IMAGE_MEAN, IMAGE_STD, make_dataset
    from m3c.runtime.pictures import write_png

    image = make_dataset(model.config, 1, seed=424242)["image"][0]
    pixels = (image * IMAGE_STD + IMAGE_MEAN).clip(0, 1).transpose(1, 2, 0) * 255
    write_png(path, pixels.round().astype("uint8"))
    return path


def _write_report(out: Path, project: Path, table: str, worst: float, verdict: str) -> Path:
    report = out / "demo_report.md"
    report.write_text(f"# m3c demo\n\nProject: `{project}`\n\n## Held-out scenes, torch vs "
                      f"accelerator\n\n```\n{table}\n```\n\nWorst stage error against "
                      f"onnxruntime: {worst:.2e} ({verdict})\n")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="micro-nyud")
    parser.add_argument("--gate", choices=("multi", "task"), default="multi")
    parser.add_argument("--out", default="out/demo")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from m3c.frontend.models.train import load_or_train

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

    _step("held-out synthetic scenes: torch vs the accelerator (m3c.runtime, csim backend)")
    table = held_out_table(model, project)
    print(table)

    _step("precisions: 16-bit, 8-bit (two MACs per DSP), mixed within 1 % (vs torch)")
    print(precision_table(model, onnx_path, out))

    _step("verifying every lowering stage and the C-simulation against onnxruntime")
    from m3c.check.verify import format_table, verify
    from m3c.check.verify_project import format_project_table, verify_project

    rows = verify(onnx_path)
    print(format_table(rows))
    project_rows = verify_project(project)
    print(format_project_table(project_rows))
    worst = max(row.max_error for row in rows)
    passed = worst <= 1e-4 and all(row.passed for row in project_rows)
    verdict = "PASS" if passed else "FAIL"
    print(f"\nworst stage error {worst:.2e} (tolerance 1e-4); C-simulation "
          f"{'equals' if passed else 'DIFFERS FROM'} its reference: {verdict}")
    report = _write_report(out, project, table, worst, verdict)
    print(f"project: {project}  (host/ is the board package; host/README.md has the steps)")
    print(f"report:  {report}")
    scene = _write_scene(model, out / "scene.png")
    print(f"try:     m3c run {project} --image {scene} --all-tasks -o {out / 'maps'}")
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except M3CError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        sys.exit(2)
