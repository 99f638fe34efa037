"""`m3c verify`: push the same inputs through every stage and compare with the oracles.

The oracle is onnxruntime on the original file; with the `tvm` extra, TVM on the same file is a
second, independent one (`m3c.check.tvm_oracle`), and the two must agree with each other before
either is trusted. Inputs are seeded random images (several scales, so that tokens spread
over experts) for every task id.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3c import progress
from m3c.check.metrics import ORACLE_TOLERANCE, max_error
from m3c.errors import GraphImportError
from m3c.frontend.interface import sample_feeds, task_names, task_of, tasks_of


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


def verify(model_path: str | Path, count: int = 2, seed: int = 0,
           until: str | None = None) -> list[StageRow]:
    """Run every stage of the lowering pipeline on the same inputs; one `StageRow` per stage,
    against onnxruntime alone (`verify_model` adds TVM)."""
    return verify_model(model_path, count, seed, until, oracle="ort").stages


def verify_model(model_path: str | Path, count: int = 2, seed: int = 0,
                 until: str | None = None, oracle: str = "both") -> Verification:
    """Every stage against onnxruntime and/or TVM (`oracle`: ort, tvm or both), and with both,
    TVM against onnxruntime on the original model and on every host head graph."""
    from m3c.check import tvm_oracle
    from m3c.frontend.load import load_model
    from m3c.frontend.validate import check_count
    from m3c.ir.sessions import ort_session
    from m3c.passes import default_pipeline

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
        tvm_model, note = tvm_oracle.second_oracle(proto, label, required=oracle == "tvm")
        use_tvm = tvm_model is not None
    if use_tvm:
        tvm_expected = [tvm_model.run(feeds) for feeds in feeds_list]
        del tvm_model  # its compiled weights are not needed while the stages run
        if oracle == "both":
            oracle_rows = _oracle_rows("model", expected, tvm_expected)
    rows, final = [], None
    pipeline = default_pipeline()
    stages = pipeline.stages(original, until=until)
    for index, name, graph in progress.steps(stages, len(pipeline.passes) + 1,
                                             "verifying stages"):
        row = StageRow(index, name, dict(sorted(Counter(graph.op_types()).items())))
        for position, feeds in enumerate(feeds_list):
            # With a task input, a task's output is what the model computes for that task
            # (the others are ignored); without one, every output is every task's.
            for task in tasks_of(feeds, tasks):
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
        head_rows, unread = _head_oracle_rows(final, feeds_list, tasks)
        oracle_rows += head_rows
        note = "; ".join(unread) or None
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


def _head_oracle_rows(graph, feeds_list: list[dict], tasks: list[str]
                      ) -> tuple[list[OracleRow], list[str]]:
    """Each host head through both oracles on the final stage's features for its task's
    feeds (the heads run on the host, so their oracle is the only check they get); and a
    line for each head TVM cannot read."""
    from m3c.check import tvm_oracle
    from m3c.ir.sessions import ort_session

    rows, unread = [], []
    for task, head in graph.heads.items():
        proto = graph.to_onnx(head)
        session = ort_session(proto)
        head_model, why = tvm_oracle.second_oracle(proto, f"the host head of {task}", False)
        if head_model is None:
            unread.append(why)
            continue
        input_name = head.inputs[0].name
        ort_outputs, tvm_outputs = [], []
        for feeds in feeds_list:
            if "task" in feeds and task_of(feeds, tasks) != task:
                continue  # features routed for another task are not this head's input
            head_feeds = {input_name: next(iter(graph.run(feeds).values()))}
            ort_outputs.append({task: session.run([task], head_feeds)[0]})
            tvm_outputs.append({task: head_model.run(head_feeds)[task]})
        rows += _oracle_rows("head", ort_outputs, tvm_outputs)
    return rows, unread


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


# -- fresh images: does the calibration hold on images the project never saw? ---------------


