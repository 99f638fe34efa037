"""The compiler core: every stage against onnxruntime, the three MoE forms, the schedule."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from moe_forms import export_form, rewrite_moe_layers

import m3c
from m3c.check.verify import verify
from m3c.errors import GraphImportError, LoweringError
from m3c.frontend.load import load_model
from m3c.ir.graph import Graph, run_graph
from m3c.lowering.expert_major import analyse_schedule


@pytest.mark.parametrize("preset", ["micro-nyud", "micro-pascal", "tiny-cityscapes"])
@pytest.mark.parametrize("gate", ["multi", "task"])
def test_every_stage_matches_onnxruntime(export_model, preset, gate):
    _, path = export_model(preset, gate)
    rows = verify(path, count=2)
    assert [row.stage for row in rows][-2:] == ["lower_expert_major", "check_schedule"]
    tasks = set(rows[0].errors)
    assert len(tasks) == len(onnx.load(str(path)).graph.output)
    for row in rows:
        assert set(row.errors) == tasks
        assert row.max_error <= 1e-4, (row.stage, row.errors)
    final = rows[-1].op_counts
    assert "m3c.MoE" not in final and final["m3c.Route"] == len(m3c_moe_blocks(preset))


def m3c_moe_blocks(preset):
    from m3c.frontend.models import preset as make_preset

    return make_preset(preset).moe_blocks


def _lowered_structure(graph: Graph) -> list[tuple[str, tuple]]:
    """m3c ops in order with their attributes, except the expert activation's name."""
    return [(node.op, tuple(sorted((k, str(v)) for k, v in node.attrs.items()
                                   if not (node.op == "ExpertMLP" and k == "activation"))))
            for node in graph.graph.nodes if node.domain == "m3c"]


def _expert_activations(graph: Graph) -> set[str]:
    return {n.attrs["activation"] for n in graph.graph.nodes if n.op == "ExpertMLP"}


@pytest.fixture(scope="module")
def three_forms(tmp_path_factory):
    from m3c.frontend.models import build_model

    base = build_model("micro-nyud", gate="task", seed=5)
    folder = tmp_path_factory.mktemp("forms")
    paths = {"dense": m3c.export(base, folder / "dense.onnx")}
    for form in ("contrib", "sparse"):
        paths[form] = export_form(rewrite_moe_layers(copy.deepcopy(base), form),
                                  folder / f"{form}.onnx")
    return paths


def test_three_moe_forms_lower_to_the_same_expert_major_graph(three_forms):
    lowered = {form: m3c.lower(path) for form, path in three_forms.items()}
    structures = {form: _lowered_structure(graph) for form, graph in lowered.items()}
    assert structures["sparse"] == structures["dense"] == structures["contrib"]
    # onnxruntime's contrib MoE uses the tanh form of GELU; the lowering keeps it.
    assert _expert_activations(lowered["dense"]) == _expert_activations(lowered["sparse"])
    assert _expert_activations(lowered["dense"]) == {"gelu"}
    assert _expert_activations(lowered["contrib"]) == {"gelu_tanh"}
    feeds = {"image": np.random.default_rng(3).standard_normal((1, 3, 48, 64), np.float32),
             "task": np.array(1, dtype=np.int64)}
    outputs = {form: graph.run_end_to_end(feeds) for form, graph in lowered.items()}
    for task in outputs["dense"]:
        np.testing.assert_allclose(outputs["sparse"][task], outputs["dense"][task], atol=1e-5)
        # tanh-GELU vs erf-GELU differ by < 1e-3 per activation
        np.testing.assert_allclose(outputs["contrib"][task], outputs["dense"][task], atol=1e-2)


@pytest.mark.parametrize("form", ["contrib", "sparse"])
def test_other_forms_match_onnxruntime_at_every_stage(three_forms, form):
    for row in verify(three_forms[form], count=1):
        assert row.max_error <= 1e-4, (row.stage, row.errors)


def _with_outputs(graph: Graph, names: list[str]) -> Graph:
    copy_ = graph.copy()
    tensors = copy_.graph.tensors()
    copy_.graph.outputs = copy_.graph.outputs + [tensors[name] for name in names]
    return copy_


def test_queue_lengths_sum_to_tokens_times_k(export_model):
    model, path = export_model("micro-pascal", "multi")
    graph = m3c.lower(path)
    queues = [n for n in graph.graph.nodes if n.op == "ExpertQueues"]
    assert len(queues) == len(model.config.moe_blocks)
    probe = _with_outputs(graph, [n.outputs[2].name for n in queues])
    image = np.random.default_rng(0).standard_normal((1, 3, 64, 64), np.float32)
    for task in range(len(model.config.tasks)):
        results = probe.run({"image": image, "task": np.array(task, dtype=np.int64)})
        for node in queues:
            lengths = results[node.outputs[2].name]
            assert lengths.sum() == model.config.num_tokens * model.config.top_k
            assert (lengths > 0).sum() > 1  # tokens spread over several experts


def test_sixty_four_experts_still_use_two_weight_slots(export_model):
    _, path = export_model("micro-nyud", "multi", num_experts=64, top_k=4)
    graph = m3c.lower(path)
    schedules = analyse_schedule(graph.graph)
    assert len(schedules) == 2
    for layer in schedules:
        assert layer.experts == 64 and layer.slots == 2 and layer.max_live_buffers == 2
        assert layer.slot_reuse_ordered and layer.prefetch_distance == 1
    loads = [n for n in graph.graph.nodes if n.op == "LoadExpert"]
    assert {n.attrs["slot"] for n in loads} == {0, 1}


def test_lower_accepts_proto_and_graphsurgeon_graph(export_model):
    _, path = export_model("micro-nyud", "multi")
    proto = onnx.load(str(path))
    by_path = m3c.lower(path)
    by_proto = m3c.lower(proto)
    by_gs = m3c.lower(gs.import_onnx(proto), until="fuse_attention")
    assert by_proto.op_counts() == by_path.op_counts()
    assert "m3c.Attention" in by_gs.op_counts() and "m3c.Route" not in by_gs.op_counts()


def test_schedule_analysis_catches_a_missing_slot_dependency(export_model):
    _, path = export_model("micro-nyud", "multi")
    graph = m3c.lower(path)
    load = next(n for n in graph.graph.nodes if n.op == "LoadExpert" and len(n.inputs) == 5)
    del load.inputs[4]  # the load no longer waits for its slot to be free
    broken = [layer for layer in analyse_schedule(graph.graph) if not layer.slot_reuse_ordered]
    assert len(broken) == 1


def _insert_after(path, out, tensor_of, op: str, name: str):
    """A copy of the model at `path`, saved as `out`, with an `op` node named `name` between
    the tensor `tensor_of(graph)` and its consumers."""
    graph = gs.import_onnx(onnx.load(str(path)))
    original = tensor_of(graph)
    bent = gs.Variable("bent", dtype=np.float32)
    for node in list(original.outputs):
        node.inputs[node.inputs.index(original)] = bent
    graph.nodes.append(gs.Node(op, name=name, inputs=[original], outputs=[bent]))
    graph.toposort()
    onnx.save(gs.export_onnx(graph), str(out))
    return out


def _insert_unsupported_op(path, tmp_path):
    return _insert_after(path, tmp_path / "unsupported.onnx",
                         lambda graph: next(n for n in graph.nodes
                                            if n.op == "LayerNormalization").outputs[0],
                         "Sin", "odd_sin")


def test_unsupported_op_names_the_node(export_model, tmp_path):
    _, path = export_model("micro-nyud", "multi")
    with pytest.raises(LoweringError) as caught:
        m3c.lower(_insert_unsupported_op(path, tmp_path))
    message = str(caught.value)
    assert "odd_sin" in message and "Sin" in message and "position" in message


def test_dynamic_and_broken_files_are_refused(export_model, tmp_path):
    _, path = export_model("micro-nyud", "multi")
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(GraphImportError, match="image"):
        load_model(proto)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[: 5000])
    with pytest.raises(GraphImportError, match="truncated"):
        load_model(truncated)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "m3c", *args], capture_output=True, text=True)


def test_cli_lower_verify_and_passes(export_model, tmp_path):
    _, path = export_model("micro-nyud", "task")
    listed = _cli("passes")
    assert listed.returncode == 0 and "lower_expert_major" in listed.stdout
    out = tmp_path / "lowered.onnx"
    lowered = _cli("lower", str(path), "-o", str(out), "--save-stages", str(tmp_path / "st"))
    assert lowered.returncode == 0, lowered.stderr
    assert {p.name for p in tmp_path.glob("lowered*.onnx")} == {
        "lowered.onnx", "lowered.head_semseg.onnx", "lowered.head_depth.onnx"}
    assert (tmp_path / "st" / "12_lower_expert_major.onnx").exists()
    # the saved lowered graph runs on its own
    saved = onnx.load(str(out))
    feeds = {"image": np.zeros((1, 3, 48, 64), np.float32), "task": np.array(0, np.int64)}
    assert run_graph(saved, feeds)["features"].shape == (1, 13, 32)
    verified = _cli("verify", str(path), "--images", "1")
    assert verified.returncode == 0 and "PASS" in verified.stdout


PROGRESS = re.compile(r"^lowering: \d+/\d+$")


@pytest.mark.parametrize("make_bad", ["truncated", "unsupported", "missing", "until"])
def test_cli_errors_exit_2_without_traceback(export_model, tmp_path, make_bad):
    _, path = export_model("micro-nyud", "multi")
    target, extra = path, []
    if make_bad == "truncated":
        target = tmp_path / "cut.onnx"
        target.write_bytes(path.read_bytes()[:3000])
    elif make_bad == "unsupported":
        target = _insert_unsupported_op(path, tmp_path)
    elif make_bad == "missing":
        target = tmp_path / "nothing.onnx"
    else:
        extra = ["--until", "no_such_pass"]
    result = _cli("lower", str(target), "-o", str(tmp_path / "o.onnx"), *extra)
    assert result.returncode == 2, result.stderr
    # The error is at most three lines after the progress lines of the passes that ran.
    error = [line for line in result.stderr.splitlines() if not PROGRESS.match(line)]
    assert "Traceback" not in result.stderr and len(error) <= 3
    assert not (tmp_path / "o.onnx").exists()


def _insert_into_expert_hidden(path, tmp_path, op):
    """A `op` node on the expert activation's output (the input of the second expert Linear)
    in the first MoE layer."""
    return _insert_after(path, tmp_path / "odd_moe.onnx",
                         lambda graph: next(
                             n for n in graph.nodes
                             if n.name.endswith("blocks.1/mlp/experts/h4toh/MatMul")).inputs[0],
                         op, "odd_node")


def test_an_unknown_node_inside_a_moe_layer_is_an_error_not_dropped(export_model, tmp_path):
    _, path = export_model("micro-nyud", "multi")
    with pytest.raises(LoweringError) as caught:
        m3c.lower(_insert_into_expert_hidden(path, tmp_path, "Sin"))
    assert "'odd_node' (Sin)" in str(caught.value) and "MoE layer" in str(caught.value)
