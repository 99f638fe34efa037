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
