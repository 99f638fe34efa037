"""`m3c compile` and `m3c targets`."""

from __future__ import annotations

import argparse
import json

from m3c.cli import command


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model")
    parser.add_argument("--target", default="zcu104", help="board (see `m3c targets`)")
    parser.add_argument("-o", "--output", required=True, help="project directory to create")
    parser.add_argument("--precision", default="fixed", choices=["fixed", "float"],
                        help="ap_fixed types from calibration (default), or fp32 everywhere")
    parser.add_argument("--calib", metavar="FILE.npy",
                        help="calibration images [N,3,H,W] (default: the test vectors)")
    parser.add_argument("--precision-config", metavar="FILE",
                        help="JSON/YAML overrides: types per class; weight and result "
                             "types per layer")
    parser.add_argument("--force", action="store_true", help="replace a non-empty directory")
    parser.add_argument("--tiles", help="force the MAC array's TKxTM, e.g. 48x32 "
                        "(default: the fastest that fits --budget)")
    parser.add_argument("--budget", type=float, default=0.8,
                        help="fraction of the target's resources the design may use (0, 1]")


@command("compile", "compile an ONNX model into an accelerator project", _configure)
def run_compile(args: argparse.Namespace) -> int:
    from m3c.compile import compile_model

    project = compile_model(args.model, target=args.target, out=args.output,
                            precision=args.precision, force=args.force, calib=args.calib,
                            precision_config=args.precision_config, tiles=args.tiles,
                            budget=args.budget)
    if not args.quiet:
        from m3c.commands.report_cmd import summary_line

        report = json.loads((project / "report" / "report.json").read_text())
        print(f"wrote {project}: `make -C {project} csim` simulates it with g++, "
              f"`m3c verify {project}` checks it against onnxruntime")
        print(f"estimate ({project / 'report' / 'report.md'}): {summary_line(report)}")
    return 0


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


@command("targets", "list the boards m3c generates for", _no_arguments)
def run_targets(args: argparse.Namespace) -> int:
    del args
    from m3c.target import list_targets, load_target

    for name in list_targets():
        board = load_target(name)
        print(f"{name:<8} {board.part:<22} {board.dsp:>5} DSP {board.lut:>7} LUT "
              f"{board.bram36:>4} BRAM36 {board.uram:>3} URAM  {board.clock_mhz} MHz")
    return 0
