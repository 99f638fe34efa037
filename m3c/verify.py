"""`m3c verify`: push the same inputs through every stage and compare with onnxruntime.

The oracle is onnxruntime on the original file. Inputs are seeded random images (several
scales, so that tokens spread over experts) for every task id.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from m3c.errors import GraphImportError


@dataclass
class StageRow:
    """One row of the verification table."""

    index: int
    stage: str
    op_counts: dict[str, int]
    errors: dict[str, float] = field(default_factory=dict)  # per task name

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def task_names(model: onnx.ModelProto) -> list[str]:
    """Task names from the export metadata, or the output names when absent."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if "m3c.tasks" in meta:
        return list(json.loads(meta["m3c.tasks"]))
    return [output.name for output in model.graph.output]


def sample_feeds(model: onnx.ModelProto, count: int = 2, seed: int = 0) -> list[dict]:
    """`count` images for every task id (one feed dict each), reproducible from `seed`."""
    inputs = {value.name: value for value in model.graph.input}
    image_shape = [d.dim_value for d in inputs["image"].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    images = [(rng.standard_normal(image_shape) * (1 + i)).astype(np.float32)
              for i in range(count)]
    if "task" not in inputs:
        # Several outputs without a task input (one router shared by all tasks): the same
        # images serve every task, in task order as below.
        return [{"image": image} for _ in task_names(model) for image in images]
    tasks = range(len(task_names(model)))
    return [{"image": image, "task": np.array(t, dtype=np.int64)}
            for t in tasks for image in images]


def _task_of(feeds: dict, tasks: list[str]) -> str:
    return tasks[int(feeds["task"])] if "task" in feeds else tasks[0]


def verify(model_path: str | Path, count: int = 2, seed: int = 0, until: str | None = None):
    """Run every stage of the lowering pipeline on the same inputs; one `StageRow` per stage."""
    from m3c.graph import load_model, ort_session
    from m3c.passmanager import default_pipeline

    original = load_model(model_path)
    proto = original.to_onnx()
    try:
        oracle = ort_session(proto)
    except Exception as error:  # onnxruntime rejects what it cannot run
        raise GraphImportError(f"onnxruntime cannot run {model_path}: {error}") from error
    tasks = task_names(proto)
    feeds_list = sample_feeds(proto, count, seed)
    names = [output.name for output in oracle.get_outputs()]
    expected = [dict(zip(names, oracle.run(None, feeds), strict=True)) for feeds in feeds_list]
    rows = []
    for index, name, graph in default_pipeline().stages(original, until=until):
        row = StageRow(index, name, dict(sorted(Counter(graph.op_types()).items())))
        for feeds, want in zip(feeds_list, expected, strict=True):
            # A task's output is what the model computes for that task; others are ignored.
            task = _task_of(feeds, tasks)
            got = graph.run_output(feeds, task)
            error = float(np.abs(got - want[task]).max())
            row.errors[task] = max(row.errors.get(task, 0.0), error)
        rows.append(row)
    return rows


def format_table(rows: list[StageRow]) -> str:
    """The verification rows as an aligned text table."""
    tasks = list(rows[0].errors) if rows else []
    header = ["#", "stage", "nodes", "m3c ops", *[f"err[{t}]" for t in tasks]]
    lines = [header]
    for row in rows:
        m3c_ops = " ".join(f"{op[4:]}×{n}" for op, n in row.op_counts.items()
                           if op.startswith("m3c.")) or "-"
        lines.append([str(row.index), row.stage, str(sum(row.op_counts.values())), m3c_ops,
                      *[f"{row.errors[t]:.2e}" for t in tasks]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                     for line in lines)


@dataclass
class ProjectRow:
    """C-simulation of a compiled project on one task's test vector.

    `kernel_error` is against what the kernel must produce: onnxruntime's encoder output in
    float precision (within the tolerance), the bit-exact numpy emulation in fixed (exactly).
    The onnxruntime columns show what the precision costs in fixed point.
    """

    task: str
    precision: str
    tolerance: float
    kernel_error: float
    features_error: float
    output_error: float
    onnxruntime_tolerance: float = 0.0  # fixed point: encoder vs onnxruntime, from the types

    @property
    def passed(self) -> bool:
        if self.precision == "fixed":
            return self.kernel_error <= self.tolerance and \
                self.features_error <= self.onnxruntime_tolerance
        return max(self.kernel_error, self.output_error) <= self.tolerance


def verify_project(project: str | Path) -> list[ProjectRow]:
    """Every task's test vector through the C-simulated kernel and the host head, compared
    with the project's expected kernel output and with onnxruntime on the original model."""
    from m3c import csim
    from m3c.graph import ort_session

    project = Path(project)
    manifest_path = project / "project.json"
    if not manifest_path.is_file():
        raise GraphImportError(f"{project} is not an m3c project (no project.json)",
                               remedy="run m3c compile first, or pass an .onnx file")
    manifest = json.loads(manifest_path.read_text())
    kernel = csim.load(project)
    data = project / "data"
    rows = []
    for index, task in enumerate(manifest["tasks"]):
        image = np.fromfile(data / f"input_task{index}.bin", np.float32)
        expected = np.fromfile(data / f"features_task{index}.bin", np.float32)
        reference = np.fromfile(data / f"features_onnxruntime_task{index}.bin", np.float32)
        features = kernel.run(image, index)
        head = ort_session(onnx.load(str(project / "host" / "heads" / f"{task}.onnx")))
        shaped = features.reshape(manifest["features_shape"])
        output = head.run(None, {head.get_inputs()[0].name: shaped})[0]
        want = np.load(data / f"expected_{task}.npy")
        rows.append(ProjectRow(task, manifest["precision"], manifest["tolerance"],
                               float(np.abs(features - expected).max()),
                               float(np.abs(features - reference).max()),
                               float(np.abs(output - want).max()),
                               fixed_onnxruntime_tolerance(manifest)))
    return rows


# A fixed-point kernel agrees with emulation exactly, but the emulation itself could be wrong
# together with it: its encoder output is also held to onnxruntime, within this many steps of
# the activation type (1/256 of its range): room for rounding through every layer, far less
# than a wrong weight or a saturating layer costs.
FIXED_ORT_STEPS = 256


def fixed_onnxruntime_tolerance(manifest: dict) -> float:
    """How far a fixed-point project's encoder output may be from onnxruntime's."""
    data = manifest.get("types", {}).get("data")
    if manifest["precision"] != "fixed" or not data or "frac" not in data:
        return float(manifest["tolerance"])
    return FIXED_ORT_STEPS * 2.0 ** -int(data["frac"])


def format_project_table(rows: list[ProjectRow]) -> str:
    expected = "emulation" if rows and rows[0].precision == "fixed" else "onnxruntime"
    lines = [f"{'task':<12} {'csim vs ' + expected:>22} {'encoder vs ORT':>15} "
             f"{'task output vs ORT':>19}  verdict"]
    lines += [f"{row.task:<12} {row.kernel_error:>22.2e} {row.features_error:>15.2e} "
              f"{row.output_error:>19.2e}  {'PASS' if row.passed else 'FAIL'}" for row in rows]
    if rows:
        rule = ("fixed point: the C-simulation must equal the bit-accurate numpy emulation, and "
                f"the encoder stay within {rows[0].onnxruntime_tolerance:.1e} of onnxruntime "
                f"({FIXED_ORT_STEPS} steps of the activation type)"
                if rows[0].precision == "fixed" else
                f"float: the C-simulation must match onnxruntime within {rows[0].tolerance:.0e}")
        lines.append(rule)
    return "\n".join(lines)
