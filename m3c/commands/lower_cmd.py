"""`m3c passes`, `m3c lower` and `m3c verify` (for ONNX files)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from m3c.cli import command
from m3c.errors import M3CError


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


@command("passes", "list the lowering pipeline", _no_arguments)
def run_passes(args: argparse.Namespace) -> int:
    del args
    from m3c.passmanager import default_pipeline

    for index, step in enumerate(default_pipeline().passes, start=1):
        print(f"{index:2d}  {step.name:<20} {step.description}")
    return 0


def _configure_lower(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model (from m3c export or another exporter)")
    parser.add_argument("-o", "--output", required=True, help="lowered .onnx file")
    parser.add_argument("--until", help="stop after this pass (see `m3c passes`)")
    parser.add_argument("--save-stages", metavar="DIR", help="save every stage's model here")


@command("lower", "lower an ONNX model to the expert-major graph", _configure_lower)
def run_lower(args: argparse.Namespace) -> int:
    from m3c.api import lower

    output = Path(args.output)
    if not output.parent.is_dir() or not os.access(output.parent, os.W_OK):
        raise M3CError(f"cannot write {output}: its directory is missing or not writable")
    graph = lower(args.model, until=args.until, save_dir=args.save_stages)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".m3c-lower-") as scratch:
        graph.save(Path(scratch) / output.name)
        for written in sorted(Path(scratch).iterdir()):
            shutil.move(str(written), output.parent / written.name)
    if not args.quiet:
        print(graph)
        print(f"wrote {output}" + (f" (+ {len(graph.heads)} head graphs)" if graph.heads else ""))
    return 0


def _configure_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model file, or a project made by m3c compile")
    parser.add_argument("--images", type=int, default=2, help="random images per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--until", help="stop after this pass")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--oracle", choices=("ort", "tvm", "both"), default="both",
                        help="onnxruntime, TVM (the tvm extra) or both, which must then agree")


@command("verify", "run every stage on the same inputs and compare with onnxruntime (and TVM)",
         _configure_verify)
def run_verify(args: argparse.Namespace) -> int:
    from m3c.verify import (
        format_oracles,
        format_project_table,
        format_table,
        verify_model,
        verify_project,
    )

    if Path(args.model).is_dir():
        project_rows = verify_project(args.model, oracle=args.oracle)
        print(format_project_table(project_rows))
        passed = all(row.passed for row in project_rows)
        print("PASS" if passed else "FAIL")
        return 0 if passed else 1
    result = verify_model(args.model, count=args.images, seed=args.seed, until=args.until,
                          oracle=args.oracle)
    print(format_table(result.stages))
    worst = max(row.max_error for row in result.stages)
    passed = worst <= args.tolerance
    print(f"worst error {worst:.2e} vs tolerance {args.tolerance:.0e}: "
          f"{'PASS' if passed else 'FAIL'}")
    print(format_oracles(result))
    return 0 if passed and result.oracles_agree else 1
