"""`m3c passes`, `m3c lower` and `m3c verify` (for ONNX files)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from m3c.atomic import staged_directory, staged_files
from m3c.cli import command
from m3c.stage_store import SHARED_FILE
from m3c.validate import non_empty, non_negative_float, positive_int


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
    parser.add_argument("-o", "--output", required=True, type=non_empty,
                        help="lowered .onnx file")
    parser.add_argument("--until", help="stop after this pass (see `m3c passes`)")
    parser.add_argument("--save-stages", metavar="DIR", type=non_empty,
                        help="save every stage's model here (a new directory, or one holding "
                             "only saved stages, which is replaced)")


def only_stages(folder: Path) -> bool:
    """A folder holding nothing but an earlier --save-stages run's files may be replaced."""
    return all(path.is_file() and (path.suffix == ".onnx" or path.name == SHARED_FILE)
               for path in folder.iterdir())


@command("lower", "lower an ONNX model to the expert-major graph", _configure_lower)
def run_lower(args: argparse.Namespace) -> int:
    from m3c.api import lower

    output = Path(args.output)
    with contextlib.ExitStack() as stack:
        stages = None
        if args.save_stages:
            stages = stack.enter_context(staged_directory(args.save_stages,
                                                          replaceable=only_stages))
        scratch = stack.enter_context(staged_files(output))
        graph = lower(args.model, until=args.until, save_dir=stages)
        graph.save(scratch / output.name)
    if not args.quiet:
        print(graph)
        print(f"wrote {output}" + (f" (+ {len(graph.heads)} head graphs)" if graph.heads else "")
              + (f"; stages in {args.save_stages}" if args.save_stages else ""))
    return 0


def _configure_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model file, or a project made by m3c compile")
    parser.add_argument("--images", type=positive_int, default=2,
                        help="random images per task (>= 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--until", help="stop after this pass")
    parser.add_argument("--tolerance", type=non_negative_float, default=1e-4)
    parser.add_argument("--oracle", choices=("ort", "tvm", "both"), default="both",
                        help="onnxruntime, TVM (the tvm extra) or both, which must then agree")


@command("verify", "run every stage on the same inputs and compare with onnxruntime (and TVM)",
         _configure_verify)
def run_verify(args: argparse.Namespace) -> int:
    from m3c.verify import (
        format_oracles,
        format_project_table,
        format_table,
        project_passed,
        verify_model,
        verify_project,
        worst_error,
    )

    if Path(args.model).is_dir():
        checked: list[str] = []
        project_rows = verify_project(args.model, checked, oracle=args.oracle)
        print(format_project_table(project_rows))
        print("checked " + ", ".join(checked))
        passed = project_passed(project_rows)
        print("PASS" if passed else "FAIL")
        return 0 if passed else 1
    result = verify_model(args.model, count=args.images, seed=args.seed, until=args.until,
                          oracle=args.oracle)
    rows = result.stages
    print(format_table(rows))
    worst = worst_error(rows)
    passed = worst <= args.tolerance
    tasks = len(rows[0].errors) if rows else 0
    print(f"checked {args.model}: {len(rows)} stages x {tasks} task(s) x {args.images} "
          f"image(s) against onnxruntime")
    print(f"worst error {worst:.2e} vs tolerance {args.tolerance:.0e}: "
          f"{'PASS' if passed else 'FAIL'}")
    print(format_oracles(result))
    return 0 if passed and result.oracles_agree else 1
