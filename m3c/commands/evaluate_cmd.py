"""`m3c evaluate`: compiled accelerators against their float model on a whole image set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from m3c.commands.registry import command


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("projects", nargs="+", help="project directories made by `m3c compile` "
                        "(several: one run evaluates each, e.g. a precision sweep)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder of .png/.jpg pictures or an .npy batch "
                        "([N,3,H,W] model inputs, or uint8 [N,H,W,3] pictures)")
    source.add_argument("--synthetic", type=int, metavar="N",
                        help="N synthetic scenes with their labels (m3c's generator)")
    parser.add_argument("--labels", help="folder of <task>.npy label maps, in image order")
    parser.add_argument("--backend", choices=("emulate", "csim", "reference"), default="emulate",
                        help="emulate: the bit-exact numpy emulation (default); csim: the g++ "
                             "kernel; reference: the float model alone")
    parser.add_argument("--workers", type=int, default=None,
                        help="local worker processes (default: one per core; 1: this process)")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run batches as Ray tasks: 'local' starts Ray here, 'auto' or "
                             "HOST:PORT joins a running cluster (needs the cluster extra)")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (default 4)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of --synthetic scenes")
    parser.add_argument("-o", "--out", default=None,
                        help="where evaluation.json/.md and plots go (default: "
                             "<first project>/evaluation)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


@command("evaluate", "evaluate compiled accelerators against float on a whole image set",
         _configure)
def run_evaluate(args: argparse.Namespace) -> int:
    from m3c.check.evaluate import evaluate
    from m3c.check.evaluation_report import write_evaluation
    from m3c.check.images import load_images
    from m3c.errors import EvaluationError

    if args.workers is not None and args.ray:
        raise EvaluationError("--workers and --ray exclude each other",
                              remedy="Ray decides its own workers; drop --workers")
    manifest = _manifest(Path(args.projects[0]))
    images = load_images(args.images, manifest, args.labels, args.synthetic, args.seed)
    evaluation = evaluate(args.projects, images, args.backend, args.workers, args.ray,
                          args.batch)
    out = Path(args.out) if args.out else Path(args.projects[0]) / "evaluation"
    written = write_evaluation(out, evaluation, plots=not args.no_plots)
    if not args.quiet:
        for project in evaluation["projects"]:
            print(f"{project['project']}:")
            for task, figures in project["tasks"].items():
                print(f"  {task:<12} {_line(figures)}")
        print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


def _manifest(project: Path) -> dict:
    from m3c.errors import EvaluationError

    path = project / "project.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EvaluationError(f"cannot read {path}: {error}",
                              remedy=f"pass a project made by `m3c compile` ({project})") from None
    if not isinstance(manifest, dict) or not {"tasks", "image_shape", "config"} <= set(manifest):
        raise EvaluationError(f"{path} is not an m3c project manifest",
                              remedy="recompile the project with `m3c compile`")
    return manifest


def _line(figures: dict) -> str:
    if figures["kind"] == "classes":
        text = f"pixel agreement {figures['pixel_agreement']:.2%}"
        return text + (f", mIoU {figures['miou']:.3f} (float {figures['miou_float']:.3f})"
                       if "miou" in figures else "")
    text = f"relative RMSE {figures['relative_rmse']:.2%}"
    return text + (f", RMSE {figures['rmse']:.3f} (float {figures['rmse_float']:.3f})"
                   if "rmse" in figures else "")
