"""Image in, per-task maps and timing out: shared by `m3c run` and host/run_on_board.py."""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .accelerator import BACKENDS, Accelerator
from .errors import AcceleratorError
from .heads import map_to_pixels, output_map
from .pictures import write_png
from .preprocess import check_image, load_picture


def add_arguments(parser: argparse.ArgumentParser, backend: str, self_test: bool = False) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="a picture (PNG, JPEG, ...), a .npy array, or a raw "
                                        "float32 .bin")
    if self_test:
        source.add_argument("--self-test", action="store_true",
                            help="run data/input_task<i>.bin, compare with data/expected_*.npy")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--task", type=_task_name, help="task name (default: the first)")
    choice.add_argument("--all-tasks", action="store_true",
                        help="run every task on the image; switching costs one register write")
    parser.add_argument("--backend", choices=BACKENDS, default=backend)
    parser.add_argument("-o", "--output", default="outputs", help="folder for maps (.png/.npy)")
    parser.add_argument("--timeout", type=_seconds, default=10.0,
                        help="seconds per kernel run (> 0)")


# argparse types (the board copy cannot use m3c.frontend.validate): a bad value is a usage error.
def _task_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a task name must not be empty")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def output_folder(path: str | Path) -> Path:
    """The -o folder for maps: created if missing, refused if it is a file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise AcceleratorError(f"-o {out} exists and is not a directory",
                               remedy="choose a folder for the maps")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a hidden sibling that is then renamed onto `path`: a full disk or a kill
    never leaves a half-written map (the board copy has no m3c.project.atomic)."""
    temporary = path.parent / f".{path.name}.m3c-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def kernel_input(accelerator: Accelerator, path: str | Path) -> np.ndarray:
    """A picture is preprocessed; a float32 tensor of the compiled shape is used as it is."""
    path = Path(path)
    if path.suffix.lower() == ".bin":
        image = np.fromfile(path, dtype=np.float32) if path.is_file() else None
        if image is None or image.size != np.prod(accelerator.project.image_shape):
            raise AcceleratorError(f"{path} is not a float32 tensor of shape "
                                   f"{list(accelerator.project.image_shape)}",
                                   remedy="pass a picture (PNG, JPEG) instead")
        return image.reshape(accelerator.project.image_shape)
    picture = load_picture(path)
    if picture.dtype.kind == "f":  # a model input already ([1,]C,H,W), as evaluate reads them
        return check_image(picture.astype(np.float32), accelerator.project.image_shape,
                           str(path))
    return accelerator.prepare(picture)


def execute(project: str | Path, args: argparse.Namespace, quiet: bool = False) -> int:
    """Run the chosen task(s) on one image; write <task>.png and <task>.npy; print timing."""
    with Accelerator.open(project, backend=args.backend, timeout=args.timeout) as accelerator:
        tasks = accelerator.tasks if args.all_tasks else [args.task or accelerator.tasks[0]]
        for task in tasks:  # unknown names fail here, before anything runs
            accelerator.project.task_index(task)
        image = kernel_input(accelerator, args.image)
        out = output_folder(args.output)
        clock = KERNEL_CLOCKS[args.backend]
        runs = accelerator.run_tasks(image, tasks)
        print(f"{'task':<12} {clock:>16} {'head ms':>9}  output")
        for task, run in runs.items():
            values = output_map(run.output)
            # np.save on a file object: with a path it would append ".npy" to the hidden name.
            save_atomic(out / f"{task}.npy", lambda path, v=values: _save_npy(path, v))
            save_atomic(out / f"{task}.png",
                        lambda path, v=values: write_png(path, map_to_pixels(v)))
            kernel = SHARED_RUN if run.kernel_s is None else f"{run.kernel_s * 1e3:.2f}"
            print(f"{task:<12} {kernel:>16} {run.head_s * 1e3:>9.2f}  {out / (task + '.png')}")
    kernel_runs = sum(run.kernel_s is not None for run in runs.values())
    if not quiet:
        print(f"backend {args.backend}; maps in {out}/ (class maps as colours, values as grey)")
        if kernel_runs < len(runs):
            print(f"one router shared by all tasks (the features do not depend on the task): "
                  f"the encoder ran once and fed all {len(runs)} heads ('{SHARED_RUN}')")
        if args.backend != "pynq":
            print(f"'{clock}' is this host's time for the {args.backend} backend, not the "
                  f"accelerator's; {estimated_latency(Path(project), kernel_runs)}")
    return 0


SHARED_RUN = "shared"  # the kernel column of a task that reused an earlier task's features


# What the kernel column measures, per backend.
KERNEL_CLOCKS = {"pynq": "board kernel ms", "csim": "csim host ms", "reference": "reference ms"}


def estimated_latency(project: Path, kernel_runs: int) -> str:
    """The compiler's estimate of the kernel's latency on the board (report/report.json), for
    `kernel_runs` runs of the kernel."""
    try:
        report = json.loads((project / "report" / "report.json").read_text())
        runs = f" x {kernel_runs} kernel runs" if kernel_runs > 1 else ""
        return (f"the estimated kernel latency on {report['target']} is "
                f"{report['latency']['ms']:.3g} ms{runs} (report/report.md)")
    except (OSError, ValueError, KeyError, TypeError):
        return "the estimate is in report/report.md (m3c report rewrites it)"


def _save_npy(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.save(file, values)


def self_test(project: str | Path, args: argparse.Namespace) -> int:
    """Every task on its bundled input: the kernel against the compiler's expected features
    (bit-exact emulation in fixed point, onnxruntime in float), the head against onnxruntime."""
    data = Path(project) / "data"
    print(f"{'task':<12} {'kernel ms':>10} {'features |diff|':>16} {'output |diff|':>14} "
          f"{'argmax agreement':>17}  verdict")
    failures = 0
    with Accelerator.open(project, backend=args.backend, timeout=args.timeout) as accelerator:
        tolerance = float(accelerator.project.manifest.get("tolerance", 1e-4))
        for index, task in enumerate(accelerator.tasks):
            image = kernel_input(accelerator, data / f"input_task{index}.bin")
            want_features = _bundled(data / f"features_task{index}.bin", np.float32)
            want = _bundled(data / f"expected_{task}.npy")
            features = accelerator.features(image, task)
            got = accelerator.run(image, task)
            feature_error = float(np.abs(want_features - features.ravel()).max())
            agreement = (f"{float((want.argmax(1) == got.argmax(1)).mean()):.2%}"
                         if want.shape[1] > 1 else "-")  # only class maps have an argmax
            passed = feature_error <= tolerance
            failures += not passed
            print(f"{task:<12} {accelerator.timing['kernel_s'] * 1e3:>10.2f} "
                  f"{feature_error:>16.2e} {float(np.abs(want - got).max()):>14.2e} "
                  f"{agreement:>17}  {'PASS' if passed else 'FAIL'}")
    print(f"kernel features within {tolerance:g} of the compiler's expectation: "
          f"{'all tasks' if not failures else f'{failures} task(s) FAIL'}")
    return 1 if failures else 0


def _bundled(path: Path, raw_dtype=None) -> np.ndarray:
    if not path.is_file():
        raise AcceleratorError(f"{path} is missing",
                               remedy="copy the project's data/ folder to the board")
    return np.fromfile(path, dtype=raw_dtype) if raw_dtype else np.load(path)


def main(argv: Sequence[str] | None, project: Path, backend: str = "pynq") -> int:
    """Entry point of host/run_on_board.py: errors in one or two lines, exit code 2."""
    parser = argparse.ArgumentParser(description="Run the compiled M3ViT on one image.")
    add_arguments(parser, backend, self_test=True)
    args = parser.parse_args(argv)
    try:
        return self_test(project, args) if args.self_test else execute(project, args)
    except AcceleratorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # full disk, read-only card, missing file: the user's to fix
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not type(error).__module__.startswith("onnxruntime"):
            raise
        print(f"error: onnxruntime cannot run a task head: {str(error).strip()[:300]}",
              file=sys.stderr)
        return 2
