"""`m3c compile` and `m3c targets`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from m3c.commands.registry import command
from m3c.errors import CodegenError
from m3c.hw.dse import DEFAULT_BUDGET


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model")
    parser.add_argument("--target", default="zcu104", help="board (see `m3c targets`)")
    parser.add_argument("-o", "--output", required=True, help="project directory to create")
    parser.add_argument("--precision", default="fixed", choices=["fixed", "float", "int8", "mixed"],
                        help="ap_fixed types from calibration (default), fp32 everywhere, or "
                             "int8: 8-bit operands, two MACs per DSP, or mixed: 8 or 16 bits "
                             "per layer within --max-agreement-loss")
    parser.add_argument("--max-agreement-loss", default="1%", metavar="LOSS",
                        help="mixed: the task outputs' largest allowed disagreement with float "
                             "on the calibration images (default 1%%)")
    parser.add_argument("--calib", metavar="FILE.npy",
                        help="calibration images [N,3,H,W] (default: the test vectors)")
    parser.add_argument("--precision-config", metavar="FILE",
                        help="JSON/YAML overrides: types per class; weight and result "
                             "types per layer")
    parser.add_argument("--force", action="store_true", help="replace a non-empty directory")
    parser.add_argument("--tiles", help="force the MAC array's TKxTM, e.g. 48x32 "
                        "(default: the fastest that fits --budget)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help="fraction (0, 1] of the resource caps the design may use; the "
                             "caps are what a placed design can meet: DSP 90%%, BRAM18 and "
                             "URAM 85%%, LUT 70%%, FF 60%% of the device (default 1: the caps)")
    parser.add_argument("--mean", type=_statistic, metavar="M[,M,M]",
                        help="pictures' per-channel mean after scaling to [0,1], as in "
                             "training (default: the model's m3c.preprocess metadata, else "
                             "0.5), e.g. 0.485,0.456,0.406")
    parser.add_argument("--allow-inaccurate", action="store_true",
                        help="write a fixed-point project even when its outputs leave the "
                             "limits against the float model (m3c verify will FAIL it)")
    parser.add_argument("--std", type=_statistic, metavar="S[,S,S]",
                        help="pictures' per-channel std (default: the metadata's, else 0.25), "
                             "e.g. 0.229,0.224,0.225")


def _statistic(text: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated numbers") from None


@command("compile", "compile an ONNX model into an accelerator project", _configure)
def run_compile(args: argparse.Namespace) -> int:
    from m3c.project.compile import compile_model

    calib = None if args.calib is None else calibration_images(Path(args.calib))
    if args.precision_config is not None:
        check_precision_config(Path(args.precision_config))
    project = compile_model(args.model, target=args.target, out=args.output,
                            precision=args.precision, force=args.force, calib=calib,
                            precision_config=args.precision_config, tiles=args.tiles,
                            budget=args.budget, max_agreement_loss=args.max_agreement_loss,
                            mean=args.mean, std=args.std,
                            allow_inaccurate=args.allow_inaccurate)
    if not args.quiet:
        from m3c.commands.report_cmd import summary_line

        report = json.loads((project / "report" / "report.json").read_text())
        print(f"wrote {project}: `make -C {project} csim` simulates it with g++, "
              f"`m3c verify {project}` checks it against onnxruntime")
        print(f"estimate ({project / 'report' / 'report.md'}): {summary_line(report)}")
        print(static_check_lines(project))
    return 0


def static_check_lines(project: Path) -> str:
    """What `m3c check` proves of the generated code: the loop furthest from its II, and the
    latency at the II it allows."""
    from m3c.check.hls import check_project
    from m3c.commands.check_cmd import latency_line, worst_loop

    report = check_project(project)
    loop = worst_loop(report)
    lines = []
    if loop is not None and loop.bound_ii != loop.target_ii:
        bound = "?" if loop.bound_ii is None else loop.bound_ii
        lines.append(f"m3c check: worst loop {loop.function}: {loop.loop}, II {bound} "
                     f"(target {loop.target_ii}); {len(report.findings)} finding(s): "
                     f"`m3c check {project}` lists them")
    return "\n".join([*lines, latency_line(project, report)])


def calibration_images(path: Path) -> np.ndarray:
    """--calib: a .npy of finite images, at least one (an .npz, an object array, an empty or
    NaN array would calibrate nothing, or nonsense)."""
    remedy = "give a .npy array of finite images shaped [N,3,H,W] (N >= 1)"
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise CodegenError(f"cannot read calibration images {path}: {error}",
                           remedy=remedy) from None
    if not isinstance(images, np.ndarray):  # an .npz archive
        raise CodegenError(f"{path} is an .npz archive, not one .npy array", remedy=remedy)
    if images.dtype.kind not in "biuf" or images.size == 0:
        raise CodegenError(f"{path} holds {images.size} values of type {images.dtype}: no "
                           "numeric images", remedy=remedy)
    if not np.isfinite(images).all():
        raise CodegenError(f"{path} contains NaN or infinite values", remedy=remedy)
    return images


def check_precision_config(path: Path) -> None:
    """The shapes m3c.hw.precision reads: `types` a mapping of class -> type string, `layers`
    a mapping of pattern -> {weight/result: type string}."""
    from m3c.hw.precision import load_config

    config = load_config(path)
    remedy = 'e.g. {"types": {"data": "ap_fixed<18,8>"}, "layers": {"*/blocks.3/*": ' \
             '{"weight": "ap_fixed<8,2>"}}}'
    types = config.get("types") or {}
    if not isinstance(types, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in types.items()):
        raise CodegenError(f"precision config {path}: 'types' must map class names to type "
                           "strings", remedy=remedy)
    layers = config.get("layers") or {}
    if not isinstance(layers, dict) or not all(
            isinstance(key, str) and isinstance(spec, dict)
            and all(isinstance(value, str) or (name == "bits" and isinstance(value, int))
                    for name, value in spec.items())
            for key, spec in layers.items()):
        raise CodegenError(f"precision config {path}: 'layers' must map layer patterns to "
                           "{weight: type, result: type, bits: 8 | 16}", remedy=remedy)


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


@command("targets", "list the boards m3c generates for", _no_arguments)
def run_targets(args: argparse.Namespace) -> int:
    del args
    from m3c.hw.target import list_targets, load_target

    for name in list_targets():
        board = load_target(name)
        print(f"{name:<8} {board.part:<22} {board.dsp:>5} DSP {board.lut:>7} LUT "
              f"{board.bram36:>4} BRAM36 {board.uram:>3} URAM  {board.clock_mhz} MHz")
    return 0
