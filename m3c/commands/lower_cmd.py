"""`m3c passes`, `m3c lower` and `m3c verify` (for ONNX files)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from m3c.commands.registry import command
from m3c.errors import ArgumentError
from m3c.frontend.validate import non_empty, non_negative_float, positive_int
from m3c.ir.stage_store import SHARED_FILE
from m3c.project.atomic import staged_directory, staged_files


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


@command("passes", "list the lowering pipeline", _no_arguments)
def run_passes(args: argparse.Namespace) -> int:
    del args
    from m3c.passes import default_pipeline

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
    parser.add_argument("--force", action="store_true",
                        help="replace a --save-stages directory that holds other files")


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
            stages = stack.enter_context(staged_directory(args.save_stages, args.force,
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
    parser.add_argument("--images", type=_count_or_path, default=None,
                        help="a model: random images per task (default 2); a project: also "
                             "run this many fresh images (synthetic scenes), or an .npy batch "
                             "or folder of pictures, through the kernel against onnxruntime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--until", help="stop after this pass")
    parser.add_argument("--tolerance", type=non_negative_float, default=1e-4)
    parser.add_argument("--oracle", choices=("ort", "tvm", "both"), default="both",
                        help="onnxruntime, TVM (the tvm extra) or both, which must then agree")


@command("verify", "run every stage on the same inputs and compare with onnxruntime (and TVM)",
         _configure_verify)
def run_verify(args: argparse.Namespace) -> int:
    from m3c.check.verify import (
        format_oracles,
        format_table,
        verify_model,
        worst_error,
    )

    if Path(args.model).is_dir():
        return _verify_project(args)
    if isinstance(args.images, str):
        raise ArgumentError(f"--images {args.images}: a model is verified on random images",
                         remedy="give a count, or compile the model and verify the project")
    count = 2 if args.images is None else args.images
    result = verify_model(args.model, count=count, seed=args.seed, until=args.until,
                          oracle=args.oracle)
    rows = result.stages
    print(format_table(rows))
    worst = worst_error(rows)
    passed = worst <= args.tolerance
    tasks = len(rows[0].errors) if rows else 0
    print(f"checked {args.model}: {len(rows)} stages x {tasks} task(s) x {count} "
          f"image(s) against onnxruntime")
    print(f"worst error {worst:.2e} vs tolerance {args.tolerance:.0e}: "
          f"{'PASS' if passed else 'FAIL'}")
    print(format_oracles(result))
    return 0 if passed and result.oracles_agree else 1


def _count_or_path(text: str) -> int | str:
    """--images: a count (>= 1) or, for a project, an .npy file or folder of pictures."""
    return positive_int(text) if text.lstrip("+-").isdigit() else non_empty(text)


def _verify_project(args: argparse.Namespace) -> int:
    from m3c.check.fresh import format_fresh_table, verify_fresh_images
    from m3c.check.verify_project import format_project_table, project_passed, verify_project

    checked: list[str] = []
    project_rows = verify_project(args.model, checked, oracle=args.oracle)
    print(format_project_table(project_rows))
    print("checked " + ", ".join(checked))
    passed = project_passed(project_rows)
    if args.images is not None:
        fresh, saturation, source = verify_fresh_images(args.model, args.images, args.seed)
        print(format_fresh_table(fresh, saturation, source))
        passed = passed and bool(fresh) and all(row.passed for row in fresh)
    else:
        print("fresh images: not run (--images N runs N images the project never saw)")
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1
