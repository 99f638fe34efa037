"""TVM as the second oracle: verify with both oracles, their disagreement, the domain check."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from m3c.check import tvm_oracle
from m3c.check.tvm_oracle import TVMModel, TVMOracleError
from m3c.check.verify import format_oracles, verify_model
from m3c.check.verify_project import format_project_table, verify_project
from m3c.cli import main
from m3c.ir.sessions import ort_session


@pytest.fixture
def needs_tvm():
    return pytest.importorskip("tvm")


class AlteredTVMModel(TVMModel):
    """TVM handed a deliberately altered copy: the last float weight of the graph (a Conv's,
    MatMul's, Gemm's or Add's: not a Resize's scales, which would change the output's shape)
    shifted by 0.5, so its output moves while onnxruntime keeps the true model."""

    def __init__(self, model: onnx.ModelProto, label: str = "the model") -> None:
        altered = copy.deepcopy(model)
        weights = {init.name: init for init in altered.graph.initializer
                   if init.data_type == TensorProto.FLOAT}
        name = next(name for node in reversed(altered.graph.node)
                    if node.op_type in ("Conv", "MatMul", "Gemm", "Add")
                    for name in node.input if name in weights)
        shifted = numpy_helper.to_array(weights[name]) + np.float32(0.5)
        weights[name].CopyFrom(numpy_helper.from_array(shifted, name))
        super().__init__(altered, label)


@pytest.mark.tvm
@pytest.mark.parametrize(("preset", "gate"), [("micro-nyud", "multi"), ("micro-pascal", "task")])
def test_cli_verify_shows_tvm_column_and_passes(needs_tvm, export_model, preset, gate):
    _, path = export_model(preset, gate)
    result = subprocess.run([sys.executable, "-m", "m3c", "verify", str(path), "--images", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = lines[0].split()
    tasks = [output.name for output in onnx.load(str(path)).graph.output]
    columns = [f"{oracle}[{task}]" for task in tasks for oracle in ("ort", "tvm")]
    assert header[-len(columns):] == columns
    stages = [line.split() for line in lines[1:] if line.split()[0].isdigit()]
    assert len(stages) == 14
    assert all(float(cell) <= 1e-4 for stage in stages for cell in stage[-len(columns):])
    oracle_rows = {(cells[0], cells[1]): float(cells[2]) for cells in map(str.split, lines)
                   if cells[0] in ("model", "head")}
    assert set(oracle_rows) == {(graph, task) for graph in ("model", "head") for task in tasks}
    # TVM is its own compiler: its results differ from onnxruntime's in the last bits
    assert all(0 < oracle_rows["model", task] <= 1e-4 for task in tasks)
    assert all(error <= 1e-4 for error in oracle_rows.values())
    assert "oracles agree within 1e-04: PASS" in result.stdout


@pytest.mark.tvm
def test_oracles_disagreeing_fail_verify(needs_tvm, export_model, monkeypatch, capsys):
    _, path = export_model("micro-nyud", "multi")
    monkeypatch.setattr(tvm_oracle, "TVMModel", AlteredTVMModel)
    status = main(["verify", str(path), "--images", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    assert any(line.startswith("FAIL: the oracles disagree") for line in lines)
    failing = {cells[0] for cells in map(str.split, lines)
               if cells[0] in ("model", "head") and float(cells[2]) > 1e-4}
    assert failing == {"model", "head"}
    # the onnxruntime columns still pass: the oracles are what failed, not the stages
    # the error columns end each line; the m3c ops cell before them has spaces of its own
    columns = [name for name in lines[0].split() if name[:4] in ("ort[", "tvm[")]
    ort_columns = [i - len(columns) for i, name in enumerate(columns) if name[:4] == "ort["]
    stages = [line.split() for line in lines[1:] if line.split()[0].isdigit()]
    assert stages and all(float(stage[i]) <= 1e-4 for stage in stages for i in ort_columns)


@pytest.mark.tvm
def test_project_heads_checked_by_both_oracles(needs_tvm, compiled, monkeypatch):
    _, project = compiled("micro-nyud", precision="float")
    rows = verify_project(project)
    assert all(row.head_oracle_error is not None and row.passed for row in rows), rows
    monkeypatch.setattr(tvm_oracle, "TVMModel", AlteredTVMModel)
    altered = verify_project(project)
    assert not any(row.passed for row in altered)
    assert "the oracles disagree" in format_project_table(altered)
    assert all(row.head_oracle_error is None for row in verify_project(project, oracle="ort"))


@pytest.mark.tvm
def test_tvm_model_runs_a_single_output_graph(needs_tvm):
    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"])], "erf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    got = TVMModel(model).run({"x": x})["y"]
    want = ort_session(model).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-6
    with pytest.raises(TVMOracleError, match="no value for inputs"):
        TVMModel(model).run({})


@pytest.mark.parametrize("domain", ["m3c", "com.microsoft"])
def test_custom_domain_refused_before_the_frontend(domain, monkeypatch):
    # The frontend dispatches on op type alone: an m3c::Attention would reach Microsoft's
    # converter. The check must refuse the graph before TVM is even imported.
    monkeypatch.setattr(tvm_oracle, "_tvm", lambda: pytest.fail("TVM was reached"))
    graph = helper.make_graph(
        [helper.make_node("Attention", ["x"], ["y"], name="blocks.0/attn", domain=domain)],
        "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(domain, 1)])
    with pytest.raises(TVMOracleError, match=f"'blocks.0/attn' is {domain}::Attention"):
        TVMModel(model)


def test_without_tvm_verify_says_so_in_one_line(export_model, monkeypatch):
    _, path = export_model("micro-nyud", "multi")
    monkeypatch.setattr(tvm_oracle, "available", lambda: False)
    result = verify_model(path, count=1)
    assert not result.oracles and all(not row.tvm_errors for row in result.stages)
    assert all(row.max_error <= 1e-4 for row in result.stages)
    line = format_oracles(result)
    assert "\n" not in line and line.startswith("TVM was not used") and "m3c[tvm]" in line
    with pytest.raises(TVMOracleError, match="TVM is not installed"):
        verify_model(path, count=1, oracle="tvm")


def test_a_model_tvm_cannot_read_keeps_onnxruntimes_verdict(needs_tvm, tmp_path):
    """A second oracle that cannot read a model (here a com.microsoft::MoE) is no
    disagreement: one line says so and onnxruntime's verdict stands, unless TVM alone was
    asked for (issue 26, item 3)."""
    from moe_forms import export_form, rewrite_moe_layers

    from m3c.check.verify import worst_error
    from m3c.frontend.models import build_model

    model = rewrite_moe_layers(build_model("micro-nyud", seed=5), "contrib")
    path = export_form(model, tmp_path / "contrib.onnx")
    result = verify_model(path, count=1, oracle="both")
    assert result.oracles == [] and "not a standard ONNX op" in result.note
    assert worst_error(result.stages) < 1e-4
    assert "TVM was not used" in format_oracles(result)
    with pytest.raises(TVMOracleError, match="not a standard ONNX op"):
        verify_model(path, count=1, oracle="tvm")
