"""`m3c verify`: push the same inputs through every stage and compare with the oracles.

The oracle is onnxruntime on the original file; with the `tvm` extra, TVM on the same file is a
second, independent one (`m3c.tvm_oracle`), and the two must agree with each other before
either is trusted. Inputs are seeded random images (several scales, so that tokens spread
over experts) for every task id.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from m3c.errors import GraphImportError, ProjectError


@dataclass
class StageRow:
    """One row of the verification table."""

    index: int
    stage: str
    op_counts: dict[str, int]
    errors: dict[str, float] = field(default_factory=dict)  # per task name, vs onnxruntime
    tvm_errors: dict[str, float] = field(default_factory=dict)  # per task name, vs TVM

    @property
    def max_error(self) -> float:
        return max([*self.errors.values(), *self.tvm_errors.values()], default=0.0)


ORACLES = ("ort", "tvm", "both")
# TVM and onnxruntime agree within 1.9e-7 on every preset measured; far above that is a bug
# in one of them, whatever tolerance the stages are held to.
ORACLE_TOLERANCE = 1e-4


@dataclass
class OracleRow:
    """TVM against onnxruntime on a graph both run: the original model, or a task's host head
    on the final stage's features."""

    graph: str  # "model" or "head"
    task: str
    error: float

    @property
    def passed(self) -> bool:
        return self.error <= ORACLE_TOLERANCE


@dataclass
class Verification:
    """`m3c verify` on an ONNX file: the stage rows, the oracles' agreement, and a note when
    TVM was not used."""

    stages: list[StageRow]
    oracles: list[OracleRow] = field(default_factory=list)
    note: str | None = None

    @property
    def oracles_agree(self) -> bool:
        return all(row.passed for row in self.oracles)


def task_names(model: onnx.ModelProto) -> list[str]:
    """Task names from the export metadata, or the output names when absent."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if "m3c.tasks" in meta:
        return list(json.loads(meta["m3c.tasks"]))
    return [output.name for output in model.graph.output]


def sample_feeds(model: onnx.ModelProto, count: int = 2, seed: int = 0) -> list[dict]:
    """`count` images for every task id (one feed dict each), reproducible from `seed`."""
    inputs = {value.name: value for value in model.graph.input}
    if "image" not in inputs:
        raise GraphImportError("the model has no 'image' input to feed test images to",
                               remedy="name the image input 'image' ([1,3,H,W] float32)")
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


def verify(model_path: str | Path, count: int = 2, seed: int = 0,
           until: str | None = None) -> list[StageRow]:
    """Run every stage of the lowering pipeline on the same inputs; one `StageRow` per stage,
    against onnxruntime alone (`verify_model` adds TVM)."""
    return verify_model(model_path, count, seed, until, oracle="ort").stages


def verify_model(model_path: str | Path, count: int = 2, seed: int = 0,
                 until: str | None = None, oracle: str = "both") -> Verification:
    """Every stage against onnxruntime and/or TVM (`oracle`: ort, tvm or both), and with both,
    TVM against onnxruntime on the original model and on every host head graph."""
    from m3c import tvm_oracle
    from m3c.graph import load_model, ort_session
    from m3c.passmanager import default_pipeline
    from m3c.validate import check_count

    check_count(count, "the number of images")
    if oracle not in ORACLES:
        raise GraphImportError(f"unknown oracle {oracle!r}", remedy="use ort, tvm or both")
    use_tvm = oracle != "ort" and (oracle == "tvm" or tvm_oracle.available())
    note = None
    if oracle == "ort":
        note = "TVM was not used (--oracle ort)"
    elif not use_tvm:
        note = f"TVM was not used: it is not installed ({tvm_oracle.INSTALL_REMEDY})"
    original = load_model(model_path)
    proto = original.to_onnx()
    try:
        oracle_session = ort_session(proto)
    except Exception as error:  # onnxruntime rejects what it cannot run
        raise GraphImportError(f"onnxruntime cannot run {model_path}: {error}") from error
    tasks = task_names(proto)
    feeds_list = sample_feeds(proto, count, seed)
    names = [output.name for output in oracle_session.get_outputs()]
    expected = [dict(zip(names, oracle_session.run(None, feeds), strict=True))
                for feeds in feeds_list]
    tvm_expected, oracle_rows = None, []
    if use_tvm:
        label = str(model_path) if isinstance(model_path, (str, Path)) else "the model"
        tvm_model = tvm_oracle.TVMModel(proto, label=label)
        tvm_expected = [tvm_model.run(feeds) for feeds in feeds_list]
        del tvm_model  # its compiled weights are not needed while the stages run
        if oracle == "both":
            oracle_rows = _oracle_rows("model", expected, tvm_expected)
    rows, final = [], None
    for index, name, graph in default_pipeline().stages(original, until=until):
        row = StageRow(index, name, dict(sorted(Counter(graph.op_types()).items())))
        for position, feeds in enumerate(feeds_list):
            # A task's output is what the model computes for that task; others are ignored.
            task = _task_of(feeds, tasks)
            got = graph.run_output(feeds, task)
            if oracle != "tvm":
                _record(row.errors, task, got, expected[position][task],
                        f"stage {name}, task {task}")
            if tvm_expected is not None:
                _record(row.tvm_errors, task, got, tvm_expected[position][task],
                        f"stage {name}, task {task} (TVM)")
        rows.append(row)
        final = graph
    if oracle == "both" and use_tvm and final is not None and final.heads:
        oracle_rows += _head_oracle_rows(final, feeds_list, tasks)
    return Verification(rows, oracle_rows, note)


def _record(errors: dict[str, float], task: str, got: np.ndarray, want: np.ndarray,
            what: str) -> None:
    errors[task] = max(errors.get(task, 0.0), max_error(got, want, what))


def _oracle_rows(graph: str, ort_outputs: list[dict], tvm_outputs: list[dict]) -> list[OracleRow]:
    """TVM vs onnxruntime, worst over the feeds, for every output both computed."""
    errors: dict[str, float] = {}
    for ort_output, tvm_output in zip(ort_outputs, tvm_outputs, strict=True):
        for name, value in ort_output.items():
            _record(errors, name, tvm_output[name], value, f"{graph} output {name} in TVM")
    return [OracleRow(graph, task, error) for task, error in errors.items()]


def _head_oracle_rows(graph, feeds_list: list[dict], tasks: list[str]) -> list[OracleRow]:
    """Each host head through both oracles on the final stage's features for its task's
    feeds (the heads run on the host, so their oracle is the only check they get)."""
    from m3c import tvm_oracle
    from m3c.graph import ort_session

    rows = []
    for task, head in graph.heads.items():
        proto = graph.to_onnx(head)
        session = ort_session(proto)
        head_model = tvm_oracle.TVMModel(proto, label=f"the host head of {task}")
        input_name = head.inputs[0].name
        ort_outputs, tvm_outputs = [], []
        for feeds in feeds_list:
            if "task" in feeds and _task_of(feeds, tasks) != task:
                continue  # features routed for another task are not this head's input
            head_feeds = {input_name: next(iter(graph.run(feeds).values()))}
            ort_outputs.append({task: session.run([task], head_feeds)[0]})
            tvm_outputs.append({task: head_model.run(head_feeds)[task]})
        rows += _oracle_rows("head", ort_outputs, tvm_outputs)
    return rows


def max_error(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """The largest |got - want|; infinite when either side holds NaN or Inf, so a broken
    result can never compare as close (max(0.0, nan) is 0.0)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.size != want.size:
        raise ProjectError(f"{what}: {got.size} values to compare with {want.size}",
                           remedy="the two sides must have one shape: recompile a project, or "
                                  "check the model's output shapes")
    if got.size == 0:
        return math.inf  # nothing compared is not a pass
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return math.inf
    return float(np.abs(got.ravel() - want.ravel()).max())


# A router whose k-th and (k+1)-th experts are nearly tied for a token sends it elsewhere
# under any change of rounding (float32 vs onnxruntime as much as fixed point): that token's
# features then differ by far more than the arithmetic does, while every other token follows.
# Up to this share of the tokens may exceed a tolerance (measured: 1.5-3.5% on tiny-nyud and
# tiny-cityscapes in fixed point, each such token 10x past the rest); a wrong weight or a
# saturating layer moves far more, and NaN anywhere fails.
ROUTING_FLIP_SHARE = 0.05


def encoder_error(got: np.ndarray, want: np.ndarray, shape: list[int], what: str
                  ) -> tuple[float, float]:
    """(the error all but ROUTING_FLIP_SHARE of the tokens stay within, the largest error) of
    encoder features of `shape` ([..., tokens, width]); infinite on NaN or Inf."""
    worst = max_error(got, want, what)
    if not math.isfinite(worst):
        return worst, worst
    difference = np.abs(np.asarray(got, np.float64).ravel() - np.asarray(want, np.float64).ravel())
    per_token = difference.reshape(-1, shape[-1]).max(axis=1)
    rank = per_token.size - 1 - int(per_token.size * ROUTING_FLIP_SHARE)
    return float(np.partition(per_token, rank)[rank]), worst


def worst_error(rows: list[StageRow]) -> float:
    """The largest error of any stage and task; infinite when nothing was compared."""
    errors = [error for row in rows
              for error in (*row.errors.values(), *row.tvm_errors.values())]
    return max(errors) if errors else math.inf


def format_table(rows: list[StageRow]) -> str:
    """The verification rows as an aligned text table (a column per task and oracle)."""
    first = rows[0] if rows else StageRow(0, "", {})
    tasks = list(dict.fromkeys([*first.errors, *first.tvm_errors]))
    columns = [(oracle, task, field) for task in tasks
               for oracle, field in (("ort", "errors"), ("tvm", "tvm_errors"))
               if task in getattr(first, field)]
    header = ["#", "stage", "nodes", "m3c ops", *[f"{o}[{t}]" for o, t, _ in columns]]
    lines = [header]
    for row in rows:
        m3c_ops = " ".join(f"{op[4:]}×{n}" for op, n in row.op_counts.items()
                           if op.startswith("m3c.")) or "-"
        lines.append([str(row.index), row.stage, str(sum(row.op_counts.values())), m3c_ops,
                      *[f"{getattr(row, field)[t]:.2e}" for _, t, field in columns]])
    return _aligned(lines)


def format_oracles(result: Verification) -> str:
    """TVM vs onnxruntime per graph and task, and the verdict on their agreement; or the note
    saying TVM was not used."""
    if not result.oracles:
        return result.note or "TVM was not used"
    lines = [["oracles", "task", "TVM vs onnxruntime"]]
    lines += [[row.graph, row.task, f"{row.error:.2e}"] for row in result.oracles]
    table = _aligned(lines)
    if result.oracles_agree:
        return f"{table}\noracles agree within {ORACLE_TOLERANCE:.0e}: PASS"
    worst = max(result.oracles, key=lambda row: row.error)
    return (f"{table}\nFAIL: the oracles disagree: TVM and onnxruntime differ by "
            f"{worst.error:.2e} > {ORACLE_TOLERANCE:.0e} on the {worst.graph} ({worst.task})")


def _aligned(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                     for line in lines)


@dataclass
class ProjectRow:
    """C-simulation of a compiled project on one task's test vector.

    `kernel_error` is against what the kernel must produce: onnxruntime's encoder output in
    float precision (within the tolerance), the bit-exact numpy emulation in fixed (exactly).
    The onnxruntime columns show what the precision costs in fixed point; `features_error` is
    the error all but ROUTING_FLIP_SHARE of the tokens stay within (see encoder_error).
    """

    task: str
    precision: str
    tolerance: float
    kernel_error: float
    features_error: float
    output_error: float
    onnxruntime_tolerance: float = 0.0  # fixed point: encoder vs onnxruntime, from the types
    head_oracle_error: float | None = None  # the host head in TVM vs onnxruntime; None: no TVM

    @property
    def oracles_agree(self) -> bool:
        return self.head_oracle_error is None or self.head_oracle_error <= ORACLE_TOLERANCE

    @property
    def passed(self) -> bool:
        # Written as "all errors within" so that NaN (which compares False) fails.
        if not self.oracles_agree:
            return False
        if self.precision == "fixed":
            return self.kernel_error <= self.tolerance and \
                self.features_error <= self.onnxruntime_tolerance
        return all(error <= self.tolerance for error in (self.kernel_error, self.output_error))


def project_passed(rows: list[ProjectRow]) -> bool:
    """Every task passed, and there was at least one."""
    return bool(rows) and all(row.passed for row in rows)


def verify_project(project: str | Path, checked: list[str] | None = None,
                   oracle: str = "both") -> list[ProjectRow]:
    """Every task's test vector through the C-simulated kernel and the host head, compared
    with the project's expected kernel output and with onnxruntime on the original model.
    With TVM (`oracle` both, the extra installed), each host head also runs in TVM on the same
    features and must agree with onnxruntime.

    The kernel runs on the words the hardware reads (weights/weights.bin), which must be
    weights/weights_f32.bin laid out for its MAC array. The files read are appended to
    `checked`.
    """
    from m3c import csim, tvm_oracle
    from m3c.graph import ort_session
    from m3c.validate import load_project

    project = Path(project)
    if not (project / "project.json").is_file():
        raise GraphImportError(f"{project} is not an m3c project (no project.json)",
                               remedy="run m3c compile first, or pass an .onnx file")
    manifest, kernel_plan = load_project(project)
    checked = [] if checked is None else checked
    checked += ["project.json", "kernel.json"]
    weights = ddr_weights(project, manifest, checked)
    kernel = csim.CSimKernel(csim.build(project), weights)
    checked += ["hls/src", "hls/csim"]
    rows = []
    for index, task in enumerate(manifest["tasks"]):
        image = _raw(project, f"data/input_task{index}.bin", checked)
        expected = _raw(project, f"data/features_task{index}.bin", checked)
        reference = _raw(project, f"data/features_onnxruntime_task{index}.bin", checked)
        features = kernel.run(image, index)
        head_proto = _onnx(project, f"host/heads/{task}.onnx", checked)
        head = ort_session(head_proto)
        shaped = features.reshape(manifest["features_shape"])
        head_feeds = {head.get_inputs()[0].name: shaped}
        output = head.run(None, head_feeds)[0]
        want = _npy(project, f"data/expected_{task}.npy", checked)
        where = f"{project} task {task}"
        head_oracle_error = None
        if oracle == "both" and tvm_oracle.available():
            head_model = tvm_oracle.TVMModel(head_proto, label=f"the host head of {task}")
            head_oracle_error = max_error(head_model.run(head_feeds)[task], output,
                                          f"{where} host head in TVM")
        rows.append(ProjectRow(task, manifest["precision"], manifest["tolerance"],
                               max_error(features, expected, f"{where} features"),
                               encoder_error(features, reference, manifest["features_shape"],
                                             f"{where} onnxruntime features")[0],
                               max_error(output, want, f"{where} output"),
                               fixed_onnxruntime_tolerance(manifest, kernel_plan),
                               head_oracle_error))
    return rows


def ddr_weights(project: Path, manifest: dict, checked: list[str]) -> np.ndarray:
    """weights/weights.bin, the words the hardware reads, as DDR lanes; ProjectError unless it
    is exactly weights_f32.bin's values laid out for the project's MAC array.

    The one place that knows the DDR weight format (m3c.hw.layout): when the word layout
    changes, only this function follows it.
    """
    from m3c.estimate import Precision
    from m3c.hw.geometry import Geometry, lane_bits
    from m3c.hw.layout import layout_weights
    from m3c.runtime.ddr import WordFormat
    from m3c.runtime.fixed import FixedType
    from m3c.target import load_target
    from m3c.validate import load_json

    layout = load_json(project / "weights" / "weights.json")
    kernel = load_json(project / "kernel.json")
    word = WordFormat.from_types(manifest["types"], "weight", layout.get("ddr_dtype"))
    lanes = _raw(project, "weights/weights.bin", checked, word.dtype)
    values = _raw(project, "weights/weights_f32.bin", checked)
    if lanes.size != manifest["ddr"]["weights"] or values.size != manifest["weight_elements"]:
        raise ProjectError(f"{project}/weights: weights.bin holds {lanes.size} lanes and "
                           f"weights_f32.bin {values.size} values; the kernel takes "
                           f"{manifest['ddr']['weights']} and {manifest['weight_elements']}",
                           remedy="recompile the project (a weights file is truncated)")
    precision = Precision.from_types(manifest["types"])
    geometry = Geometry(*manifest["tiles"], lane_bits(precision),
                        load_target(manifest["target"]).hp_port_bits, manifest["row_tile"],
                        manifest["query_tile"])
    codes = values if word.spec is None else FixedType.from_json(word.spec).from_float(values)
    expected = layout_weights(kernel["calls"], geometry, codes).lanes.astype(word.dtype)
    if not np.array_equal(expected, lanes):
        differ = int(np.count_nonzero(expected != lanes))
        raise ProjectError(f"{project}/weights/weights.bin differs from weights_f32.bin in "
                           f"{differ} of {lanes.size} lanes",
                           remedy="recompile the project (a weights file was modified)")
    checked.append("weights/weights.json")
    return lanes


def _raw(project: Path, name: str, checked: list[str], dtype="float32") -> np.ndarray:
    path = project / name
    if not path.is_file():
        raise ProjectError(f"{path} is missing", remedy="recompile the project")
    checked.append(name)
    return np.fromfile(path, dtype)


def _npy(project: Path, name: str, checked: list[str]) -> np.ndarray:
    path = project / name
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ProjectError(f"{path} is not a readable .npy array ({error})",
                           remedy="recompile the project") from None
    checked.append(name)
    return values


def _onnx(project: Path, name: str, checked: list[str]) -> onnx.ModelProto:
    from google.protobuf.message import DecodeError

    path = project / name
    try:
        model = onnx.load(str(path))
    except (OSError, DecodeError, ValueError) as error:
        raise ProjectError(f"{path} is not a readable ONNX model ({error})",
                           remedy="recompile the project") from None
    checked.append(name)
    return model


# A fixed-point kernel agrees with emulation exactly, but the emulation itself could be wrong
# together with it: its encoder output is also held to onnxruntime, within this many steps of
# the activation type (1/256 of its range): room for rounding through every layer, far less
# than a wrong weight or a saturating layer costs.
FIXED_ORT_STEPS = 256
# With 8-bit layers (int8, mixed) the activations they read are rounded to 8 bits: the encoder
# may then also be this many steps of the coarsest such operand from onnxruntime (measured: 3-6
# steps on micro-nyud int8).
MAC8_ORT_STEPS = 16


def fixed_onnxruntime_tolerance(manifest: dict, kernel: dict | None = None) -> float:
    """How far a fixed-point project's encoder output may be from onnxruntime's (`kernel`:
    its kernel.json, whose 8-bit layers widen the limit)."""
    data = manifest.get("types", {}).get("data")
    if manifest["precision"] == "float" or not data or "frac" not in data:
        return float(manifest["tolerance"])
    steps = [2.0 ** -int(kind["frac"]) for call in (kernel or {}).get("calls", [])
             for name, kind in call.get("mac8", {}).items()
             if name in ("x", "x2") and isinstance(kind, dict) and kind.get("signed")]
    return max([FIXED_ORT_STEPS * 2.0 ** -int(data["frac"]),
                *(MAC8_ORT_STEPS * step for step in steps)])


def format_project_table(rows: list[ProjectRow]) -> str:
    expected = "emulation" if rows and rows[0].precision == "fixed" else "onnxruntime"
    lines = [f"{'task':<12} {'csim vs ' + expected:>22} {'encoder vs ORT*':>15} "
             f"{'task output vs ORT':>19} {'head TVM vs ORT':>16}  verdict"]
    lines += [f"{row.task:<12} {row.kernel_error:>22.2e} {row.features_error:>15.2e} "
              f"{row.output_error:>19.2e} {_optional(row.head_oracle_error):>16}  "
              f"{'PASS' if row.passed else 'FAIL'}" for row in rows]
    if rows:
        rule = ("fixed point: the C-simulation must equal the bit-accurate numpy emulation, and "
                f"the encoder stay within {rows[0].onnxruntime_tolerance:.1e} of onnxruntime "
                f"({FIXED_ORT_STEPS} steps of the activation type, or {MAC8_ORT_STEPS} of the "
                "coarsest 8-bit operand)\n" + TOKEN_NOTE
                if rows[0].precision == "fixed" else
                f"float: the C-simulation must match onnxruntime within {rows[0].tolerance:.0e}")
        lines.append(rule)
        if all(row.head_oracle_error is None for row in rows):
            lines.append("TVM was not used (not installed, or --oracle is not both)")
        elif not all(row.oracles_agree for row in rows):
            lines.append(f"FAIL: the oracles disagree: TVM and onnxruntime differ by more than "
                         f"{ORACLE_TOLERANCE:.0e} on a host head")
    return "\n".join(lines)


TOKEN_NOTE = (f"* the error all but {ROUTING_FLIP_SHARE:.0%} of the tokens stay within: a "
              "router near a tie flips single tokens under any rounding")


def _optional(error: float | None) -> str:
    return "-" if error is None else f"{error:.2e}"


# -- fresh images: does the calibration hold on images the project never saw? ---------------

@dataclass
class FreshRow:
    """One task on fresh images: the kernel (through its bit-exact emulation) and its host
    head against onnxruntime on the original model."""

    task: str
    images: int
    features_error: float  # encoder_error's first figure, the largest over the images
    features_worst: float  # the largest error of any token
    tolerance: float
    agreement: str

    @property
    def passed(self) -> bool:
        return self.features_error <= self.tolerance  # NaN fails


def verify_fresh_images(project: str | Path, images: int | str, seed: int = 0
                        ) -> tuple[list[FreshRow], dict[str, int], str]:
    """(a row per task, saturated results per layer, where the images came from) for a count
    of generated images or an .npy batch / folder of pictures.

    A count gives synthetic scenes from the model's own generator when the project was exported
    by m3c (its config is in project.json), else standard-normal images.
    """
    from m3c.evaluate import evaluate
    from m3c.validate import load_project

    project = Path(project)
    manifest, kernel = load_project(project)
    image_set = _fresh_images(images, manifest, seed)
    summary = evaluate([project], image_set, backend="emulate", workers=1)["projects"][0]
    tolerance = fixed_onnxruntime_tolerance(manifest, kernel)
    rows = [FreshRow(task, len(image_set.images), figures["features_error"],
                     figures["features_worst"], tolerance, _agreement(figures))
            for task, figures in summary["tasks"].items()]
    return rows, summary["saturation"], image_set.source


def _fresh_images(images: int | str, manifest: dict, seed: int):
    from m3c.evaluate import ImageSet, load_images

    if isinstance(images, str):
        return load_images(images, manifest)
    if manifest.get("config"):
        return load_images(None, manifest, synthetic=images, seed=seed)
    shape = (images, *manifest["image_shape"][1:])
    batch = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return ImageSet(batch, [f"random{i:05d}" for i in range(images)], {},
                    f"standard-normal images (seed {seed})")


def _agreement(figures: dict) -> str:
    if figures["kind"] == "classes":
        return f"{100 * figures['pixel_agreement']:.2f}% of pixels agree"
    return f"relative RMSE {100 * figures['relative_rmse']:.2f}%"


def format_fresh_table(rows: list[FreshRow], saturation: dict[str, int], source: str) -> str:
    lines = [f"fresh images: {rows[0].images if rows else 0} {source}",
             f"{'task':<12} {'encoder vs ORT*':>15} {'worst token':>12} {'limit':>9}  "
             f"{'task output vs ORT':<28} verdict"]
    lines += [f"{row.task:<12} {row.features_error:>15.2e} {row.features_worst:>12.2e} "
              f"{row.tolerance:>9.1e}  {row.agreement:<28} {'PASS' if row.passed else 'FAIL'}"
              for row in rows]
    lines.append(TOKEN_NOTE)
    if saturation:
        worst = sorted(saturation.items(), key=lambda item: -item[1])
        lines.append("saturated results per layer: " + ", ".join(
            f"{layer} {count}" for layer, count in worst[:8])
            + (f" (+{len(worst) - 8} layers)" if len(worst) > 8 else ""))
    else:
        lines.append("saturated results per layer: none")
    return "\n".join(lines)
