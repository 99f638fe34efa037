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


def held_out_table(model, graph, count: int = 8) -> str:
    """Per task: the quality of torch and of the lowered graph, and how well they agree."""
    import numpy as np
    import torch

    from m3c.models.data import make_dataset
    from m3c.models.train import depth_metrics, mean_iou

    data = make_dataset(model.config, count, seed=424242)
    rows = [f"    {'task':<8} {'torch':>14} {'lowered':>14}  agreement"]
    for task_id, (task, channels) in enumerate(model.config.tasks.items()):
        torch_out, lowered_out = [], []
        for image in data["image"]:
            with torch.no_grad():
                torch_out.append(model(torch.from_numpy(image[None]), task_id)[task_id])
            feeds = {"image": image[None], "task": np.array(task_id, dtype=np.int64)}
            lowered_out.append(torch.from_numpy(graph.run_output(feeds, task)))
        ours, theirs = torch.cat(torch_out), torch.cat(lowered_out)
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

    start = _step("lowering: import, canonicalise, recognise MoE, expert-major rewrite")
    graph = m3c.lower(onnx_path, save_dir=out / "intermediate")
    graph.save(out / "lowered.onnx")
    print(graph)
    print(f"    stages saved under {out / 'intermediate'} in {time.perf_counter() - start:.1f} s")

    _step("held-out synthetic scenes: torch model vs the lowered expert-major graph")
    print(held_out_table(model, graph))

    _step("verifying every stage against onnxruntime on the original model")
    from m3c.verify import format_table, verify

    rows = verify(onnx_path)
    print(format_table(rows))
    worst = max(row.max_error for row in rows)
    verdict = "PASS" if worst <= 1e-4 else "FAIL"
    print(f"\nworst stage error {worst:.2e} (tolerance 1e-4): {verdict}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except M3CError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        sys.exit(2)
