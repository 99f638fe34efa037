"""`m3c export`: PyTorch M3ViT (checkpoint, random preset, or synthetic-trained) -> ONNX."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m3c.commands.registry import command
from m3c.errors import M3CError, ModelError
from m3c.frontend.models.config import GATES


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="M3ViT .pth file or directory of rank files")
    parser.add_argument("--preset", default=None,
                        help="model preset, e.g. small-nyud (required with a checkpoint; "
                             "micro-nyud for --random and --trained)")
    parser.add_argument("--gate", choices=GATES, default="multi",
                        help="multi-gate (a router per task), task-conditioned routing, or one "
                             "router shared by all tasks (M3ViT-Single)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--random", action="store_true", help="random weights (with --seed)")
    source.add_argument("--trained", action="store_true",
                        help="the micro model trained on synthetic scenes (cached)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True, help="output .onnx file")


def _build(args: argparse.Namespace):
    from m3c.frontend import models

    if args.checkpoint and args.preset is None:
        raise ModelError(f"{args.checkpoint}: which model does it hold?",
                         remedy="name its preset, e.g. --preset small-nyud (presets: "
                                + ", ".join(models.preset_names()) + ")")
    preset = args.preset or "micro-nyud"
    if args.trained:
        from m3c.frontend.models.train import load_or_train

        return load_or_train(preset, gate=args.gate, quiet=args.quiet)
    config = models.preset(preset, gate=args.gate)
    if args.checkpoint:
        from m3c.frontend.models.checkpoint import load_checkpoint

        return load_checkpoint(config, args.checkpoint)
    if args.random:
        return models.build_model(config, seed=args.seed)
    raise ModelError("no weights given", remedy="pass a checkpoint, --random or --trained")


@command("export", "export a PyTorch M3ViT to ONNX", _configure)
def run_export(args: argparse.Namespace) -> int:
    if args.checkpoint and (args.random or args.trained):
        raise M3CError("a checkpoint cannot be combined with --random or --trained")
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as error:
        raise ModelError("export needs PyTorch", remedy="pip install 'm3c[torch]'") from error
    from m3c.frontend.exporter import export

    model = _build(args)
    path = export(model, Path(args.output))
    if not args.quiet:
        config = model.config
        print(f"wrote {path} ({config.name}, {config.gate}-gate, tasks: "
              f"{', '.join(config.tasks)}, {config.num_experts} experts, top-{config.top_k})",
              file=sys.stdout)
    return 0
