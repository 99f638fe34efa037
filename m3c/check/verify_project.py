"""`m3c verify build/`: the C-simulated kernel of a compiled project against its references."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from m3c import progress
from m3c.check.metrics import ORACLE_TOLERANCE, max_error
from m3c.errors import GraphImportError, ProjectError
from m3c.project.fidelity import Fidelity, SaturationCounter, fidelity


@dataclass
class ProjectRow:
    """C-simulation of a compiled project on one task's test vector.

    `kernel_error` is against what the kernel must produce: onnxruntime's encoder output in
    float precision (within the tolerance), the bit-exact numpy emulation in fixed (exactly).
    In fixed point `fidelity` holds the outputs against the float model (onnxruntime) to
    limits that do not depend on the types (m3c.project.fidelity).
    """

    task: str
    precision: str
    tolerance: float
    kernel_error: float
    output_error: float  # the task output against onnxruntime's
    fidelity: Fidelity | None = None  # fixed point
    head_oracle_error: float | None = None  # the host head in TVM vs onnxruntime; None: no TVM

    @property
    def oracles_agree(self) -> bool:
        return self.head_oracle_error is None or self.head_oracle_error <= ORACLE_TOLERANCE

    @property
    def passed(self) -> bool:
        # Written as "all errors within" so that NaN (which compares False) fails.
        if not (self.oracles_agree and self.kernel_error <= self.tolerance):
            return False
        if self.fidelity is not None:
            return self.fidelity.passed
        return self.output_error <= self.tolerance


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
    from m3c.check import tvm_oracle
    from m3c.frontend.validate import load_project
    from m3c.ir.sessions import ort_session
    from m3c.project import csim

    project = Path(project)
    if not (project / "project.json").is_file():
        raise GraphImportError(f"{project} is not an m3c project (no project.json)",
                               remedy="run m3c compile first, or pass an .onnx file")
    manifest, _ = load_project(project)
    checked = [] if checked is None else checked
    checked += ["project.json", "kernel.json"]
    weights = ddr_weights(project, manifest, checked)
    progress.note(f"verify: building the C-simulation of {project} (g++)")
    kernel = csim.CSimKernel(csim.build(project), weights)
    checked += ["hls/src", "hls/csim"]
    # Fixed point: the emulation (bit-exact with the C-simulation) counts saturated results.
    emulator = None
    if manifest["precision"] == "fixed":
        from m3c.runtime.emulator import KernelEmulator

        emulator = KernelEmulator.from_project(project)
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
            # A head TVM cannot read has no second opinion ("-"); onnxruntime's stands.
            head_model, _ = tvm_oracle.second_oracle(head_proto, f"the host head of {task}",
                                                     required=False)
            if head_model is not None:
                head_oracle_error = max_error(head_model.run(head_feeds)[task], output,
                                              f"{where} host head in TVM")
        rows.append(ProjectRow(task, manifest["precision"], manifest["tolerance"],
                               max_error(features, expected, f"{where} features"),
                               max_error(output, want, f"{where} output"),
                               _fidelity(emulator, task, index, image, output, want, features,
                                         reference),
                               head_oracle_error))
    return rows


def _fidelity(emulator, task: str, index: int, image: np.ndarray, output: np.ndarray,
              want: np.ndarray, features: np.ndarray, reference: np.ndarray) -> Fidelity | None:
    """Fixed point (an `emulator`): the task against the float model, its saturated results
    counted by the emulation on the same image; None in float."""
    if emulator is None:
        return None
    counter = SaturationCounter(emulator.ops.data)
    emulator.run(image, index, counter)
    return fidelity(task, output, want, features, reference, counter)


def ddr_weights(project: Path, manifest: dict, checked: list[str]) -> np.ndarray:
    """weights/weights.bin, the words the hardware reads, as DDR lanes; ProjectError unless it
    is exactly weights_f32.bin's values laid out for the project's MAC array.

    The one place that knows the DDR weight format (m3c.hw.layout): when the word layout
    changes, only this function follows it.
    """
    from m3c.frontend.validate import load_json
    from m3c.hw.design import Precision
    from m3c.hw.geometry import Geometry, lane_bits
    from m3c.hw.layout import layout_weights
    from m3c.hw.target import load_target
    from m3c.runtime.ddr import WordFormat
    from m3c.runtime.fixed import FixedType

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


def format_project_table(rows: list[ProjectRow]) -> str:
    if rows and rows[0].fidelity is not None:
        return _fixed_table(rows)
    lines = [f"{'task':<12} {'csim vs onnxruntime':>20} {'task output vs ORT':>19} "
             f"{'head TVM vs ORT':>16}  verdict"]
    lines += [f"{row.task:<12} {row.kernel_error:>20.2e} {row.output_error:>19.2e} "
              f"{_optional(row.head_oracle_error):>16}  {'PASS' if row.passed else 'FAIL'}"
              for row in rows]
    if rows:
        lines.append(f"float: the C-simulation and the task outputs must match onnxruntime "
                     f"within {rows[0].tolerance:.0e}")
    return "\n".join(lines + _oracle_lines(rows))


def _fixed_table(rows: list[ProjectRow]) -> str:
    lines = [f"{'task':<10} {'csim vs emulation':>17} {'encoder vs float':>17} "
             f"{'task output vs float':>32} {'saturated results':>24} {'head TVM':>9}  verdict"]
    lines += [f"{row.task:<10} {row.kernel_error:>17.2e} {row.fidelity.features_column():>17} "
              f"{row.fidelity.task_column():>32} {row.fidelity.saturation_column():>24} "
              f"{_optional(row.head_oracle_error):>9}  {'PASS' if row.passed else 'FAIL'}"
              for row in rows]
    lines += ["fixed point: the C-simulation must equal the bit-accurate numpy emulation (0),",
              "and the outputs stay within the limits shown of the float model (onnxruntime):",
              "relative RMSE of the encoder features and of dense outputs, the share of pixels",
              "whose class agrees, results pinned at the data type's limits"]
    return "\n".join(lines + _oracle_lines(rows))


def _oracle_lines(rows: list[ProjectRow]) -> list[str]:
    if rows and all(row.head_oracle_error is None for row in rows):
        return ["TVM was not used (not installed, or --oracle is not both)"]
    if not all(row.oracles_agree for row in rows):
        return [f"FAIL: the oracles disagree: TVM and onnxruntime differ by more than "
                f"{ORACLE_TOLERANCE:.0e} on a host head"]
    return []


def _optional(error: float | None) -> str:
    return "-" if error is None else f"{error:.2e}"
