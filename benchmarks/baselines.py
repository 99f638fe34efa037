"""The CPU baselines a user would pick instead of the accelerator, beside its estimate.

For each preset (random weights): onnxruntime, torch eager and TVM (default Relax pipeline,
llvm for this CPU, untuned) with 1 and 2 threads, on the encoder alone and on the encoder with
one task's head (task 0: the accelerator runs one task per inference, its head on the host).
Each figure (milliseconds per image) is the median of `--repeats` runs after one warm-up run;
a framework whose warm-up run takes longer than `--max-seconds` is timed on that one run (noted
as `runs: 1`). The accelerator column is the estimate in the compiled project's report
(`m3c.compile`, zcu104, fixed point) plus, with the head, onnxruntime running the project's
host head on this CPU.

Each framework runs in its own child process, so that one's thread pool cannot slow another's.

Usage: python benchmarks/baselines.py [--presets micro-nyud,tiny-nyud,small-nyud]
       [--frameworks onnxruntime,torch,tvm] [--threads 1,2] [--repeats 5] [--max-seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, exported

FRAMEWORKS = ("onnxruntime", "torch", "tvm")
VARIANTS = ("encoder", "encoder_and_task_head")


def _encoder_models(model_path: Path, project: Path) -> dict:
    """The exported ONNX cut at the encoder output, and cut at task 0's output."""
    import onnx
    import onnx_graphsurgeon as gs

    manifest = json.loads((project / "project.json").read_text())
    models = {}
    for variant in VARIANTS:
        graph = gs.import_onnx(onnx.load(str(model_path)))
        tensors = graph.tensors()
        if variant == "encoder":
            output = tensors[manifest["features_tensor"]]
            output.dtype, output.shape = np.float32, manifest["features_shape"]
        else:
            output = tensors[manifest["tasks"][0]]
        graph.outputs = [output]
        # the task input stays even where pruning leaves it unread, as on the accelerator
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        models[variant] = gs.export_onnx(graph)
    return models


def _time(work, repeats: int, max_seconds: float) -> dict:
    start = time.perf_counter()
    work()
    warm_up = time.perf_counter() - start
    if warm_up > max_seconds:
        return {"ms_median": round(warm_up * 1000, 3), "runs": 1}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return {"ms_median": round(statistics.median(times) * 1000, 3), "runs": repeats}


def measure(framework: str, preset: str, models_dir: Path, threads: list[int], repeats: int,
            max_seconds: float) -> dict:
    """Milliseconds per image of `framework` on both variants at each thread count (child side)."""
    import onnx

    from m3c.frontend.interface import sample_feeds

    models = {v: onnx.load(str(models_dir / f"{v}.onnx")) for v in VARIANTS}
    feeds = sample_feeds(models["encoder"], count=1)[0]
    figures: dict = {}
    for variant, model in models.items():
        runners = _runners(framework, preset, variant, model, feeds, threads)
        for count, run in zip(threads, runners, strict=True):
            figures[f"{variant}_threads{count}"] = _time(run, repeats, max_seconds)
    return figures


def _runners(framework: str, preset: str, variant: str, model, feeds: dict,
             threads: list[int]) -> list:
    if framework == "onnxruntime":
        return [_ort_runner(model, feeds, count) for count in threads]
    if framework == "tvm":
        from m3c.check import tvm_oracle

        # built once: its parallel loops run on the runtime pool, sized per measurement
        compiled = tvm_oracle.TVMModel(model, label=f"{preset} {variant}")

        def tvm_runner(count: int):
            def run() -> None:
                tvm_oracle.set_threads(count)  # ~5 us: sized on every run like torch below
                compiled.run(feeds)
            return run
        return [tvm_runner(count) for count in threads]
    return [_torch_runner(preset, variant, feeds, count) for count in threads]


def _ort_runner(model, feeds: dict, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    used = {name: value for name, value in feeds.items() if name in names}
    return lambda: session.run(None, used)


def _torch_runner(preset: str, variant: str, feeds: dict, threads: int):
    import torch

    from m3c.frontend.models import build_model
    from m3c.frontend.models.vit import patch_grid

    model = build_model(preset).eval()
    image = torch.from_numpy(feeds["image"])
    task = int(feeds.get("task", 0))
    grid = patch_grid(image, model.config.patch_size)
    head = next(iter(model.decoders.values()))

    def run() -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            tokens = model.backbone(image, task)
            if variant != "encoder":
                head(tokens, grid)
    return run


def accelerator(project: Path, threads: list[int], repeats: int) -> dict:
    """The report's latency estimate; with the head, plus onnxruntime running it here."""
    import onnx

    report = json.loads((project / "report" / "report.json").read_text())
    manifest = json.loads((project / "project.json").read_text())
    encoder_ms = report["latency"]["ms"]
    head = onnx.load(str(project / "host" / "heads" / f"{manifest['tasks'][0]}.onnx"))
    features = np.random.default_rng(0).standard_normal(manifest["features_shape"])
    feeds = {head.graph.input[0].name: features.astype(np.float32)}
    figures = {"encoder_estimate_ms": round(encoder_ms, 3)}
    for count in threads:
        head_ms = _time(_ort_runner(head, feeds, count), repeats, float("inf"))["ms_median"]
        figures[f"encoder_and_task_head_threads{count}_ms"] = round(encoder_ms + head_ms, 3)
    return figures


def bench_preset(preset: str, frameworks: list[str], threads: list[int], repeats: int,
                 max_seconds: float) -> dict:
    import onnx

    import m3c

    model_path = exported(preset)
    with tempfile.TemporaryDirectory() as scratch:
        project = m3c.compile(model_path, target="zcu104", out=Path(scratch) / "build")
        for variant, model in _encoder_models(model_path, project).items():
            onnx.save(model, str(Path(scratch) / f"{variant}.onnx"))
        result = {"accelerator_zcu104": accelerator(project, threads, repeats)}
        for framework in frameworks:
            command = [sys.executable, __file__, "--measure", framework, "--presets", preset,
                       "--models-dir", scratch, "--threads", ",".join(map(str, threads)),
                       "--repeats", str(repeats), "--max-seconds", str(max_seconds)]
            child = subprocess.run(command, capture_output=True, text=True)
            # one framework failing (TVM's builder, say) still leaves the others' figures
            result[framework] = (json.loads(child.stdout) if child.returncode == 0 else
                                 {"error": (child.stderr.strip().splitlines() or ["?"])[-1]})
    result["cpu_over_accelerator"] = _ratios(result)
    return result


def _ratios(result: dict) -> dict:
    """CPU time / accelerator time, per framework, variant and thread count."""
    board = result["accelerator_zcu104"]
    ratios = {}
    for framework in FRAMEWORKS:
        for key, figure in result.get(framework, {}).items():
            if key == "error":
                continue
            variant, _, count = key.rpartition("_threads")
            accel = (board["encoder_estimate_ms"] if variant == "encoder"
                     else board[f"encoder_and_task_head_threads{count}_ms"])
            ratios[f"{framework}_{key}"] = round(figure["ms_median"] / accel, 1)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="micro-nyud,tiny-nyud,small-nyud")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="time only the warm-up run when it takes longer than this")
    parser.add_argument("--measure", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.measure:  # the child side of bench_preset
        print(json.dumps(measure(args.measure, args.presets, Path(args.models_dir), threads,
                                 args.repeats, args.max_seconds)))
        return
    frameworks = args.frameworks.split(",")
    load_before = os.getloadavg()[0]
    figures = {preset: bench_preset(preset, frameworks, threads, args.repeats, args.max_seconds)
               for preset in args.presets.split(",")}
    # The load average shows how far other work on the machine distorts the timings (threads
    # that wait at a barrier for a descheduled sibling suffer most).
    emit({"machine": {"cpu_cores": _cores(),
                      "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
          **figures})


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
