"""Models m3c's own exporter did not write: each is built here, lowered, compared with
onnxruntime on the original file, and compiled (float), which itself refuses a lowered graph
more than 1e-4 away from onnxruntime; each MoE form also in fixed point, where the C-simulated
kernel must equal the emulation bit for bit."""

from __future__ import annotations

import copy
import importlib
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from moe_forms import (
    UserViT,
    export_dynamo,
    export_form,
    export_user,
    lowered_structure,
    rewrite_moe_layers,
    without_optional_contrib_inputs,
)
from torch import nn

import m3c
from m3c.errors import LoweringError
from m3c.frontend.models import build_model
from m3c.ir.sessions import ort_session
from m3c.project.compile import compile_model
from m3c.project.fidelity import FEATURES_LIMIT


def _feeds(path, seed=0):
    proto = onnx.load(str(path))
    inputs = {value.name: value for value in proto.graph.input}
    shape = [d.dim_value for d in inputs["image"].type.tensor_type.shape.dim]
    image = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    tasks = len(proto.graph.output) if "task" in inputs else 1
    return [{"image": image, **({"task": np.array(t, np.int64)} if "task" in inputs else {})}
            for t in range(tasks)]


def assert_lowers_like_onnxruntime(path, tmp_path, atol=1e-4):
    """Lowered (end to end, heads included) within `atol` of onnxruntime for every task, and
    the float compile accepts it; returns the lowered graph."""
    oracle = ort_session(onnx.load(str(path)))
    names = [output.name for output in oracle.get_outputs()]
    lowered = m3c.lower(path)
    for feeds in _feeds(path):
        want = dict(zip(names, oracle.run(None, feeds), strict=True))
        got = lowered.run_end_to_end(feeds)
        for name in names:
            np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=0)
    compile_model(path, out=tmp_path / "build", precision="float")
    return lowered


def _standard_only(graph) -> bool:
    return all((node.domain or "") in ("", "ai.onnx") for node in graph.nodes)


class LinearHead(nn.Module):
    """A per-token Linear task head (as in SETR's naive head)."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, channels)

    def forward(self, tokens, grid):
        x = self.fc(self.norm(tokens[:, 1:]))
        return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)


def test_linear_in_a_task_head_stays_standard_onnx(tmp_path):
    model = build_model("micro-nyud", seed=3)
    model.decoders["depth"] = LinearHead(model.config.embed_dim, 1)
    path = m3c.export(model, tmp_path / "linear_head.onnx")
    lowered = assert_lowers_like_onnxruntime(path, tmp_path)
    assert all(_standard_only(head) for head in lowered.heads.values())
    assert "MatMul" in {node.op for node in lowered.heads["depth"].nodes}
    saved = onnx.load(str(tmp_path / "build" / "host" / "heads" / "depth.onnx"))
    assert {node.domain for node in saved.graph.node} <= {""}


def test_compile_refuses_a_lowering_that_changes_the_numbers(tmp_path, monkeypatch):
    import m3c.passes.fuse_dense as fuse_dense

    original = fuse_dense._replace

    def off_by_a_little(graph, node, x, weight, bias):
        original(graph, node, x, weight, bias + 1e-2)

    monkeypatch.setattr(fuse_dense, "_replace", off_by_a_little)
    path = m3c.export(build_model("micro-nyud", seed=1), tmp_path / "m.onnx")
    with pytest.raises(LoweringError, match="first diverging stage: fuse_dense"):
        compile_model(path, out=tmp_path / "build", precision="float")
    assert not (tmp_path / "build").exists()
    assert not list(tmp_path.glob(".build*"))


@pytest.mark.parametrize("precision, calibrated", [("fixed", False), ("fixed", True),
                                                   ("float", False)])
def test_compile_refuses_a_kernel_plan_that_differs_from_every_stage(precision, calibrated,
                                                                     tmp_path, monkeypatch):
    """Every graph stage is right, the kernel planned from it is not: the check reads the float
    run of the kernel (calibration's on the test images, or its own with --calib or in float),
    and names the plan."""
    compile_module = importlib.import_module("m3c.project.compile")
    original = compile_module.plan_kernel

    def one_bias_off(graph):
        plan = original(graph)
        name = next(name for name in plan.weights.arrays if name.endswith("bias"))
        plan.weights.arrays[name] = plan.weights.arrays[name] + 1e-2
        return plan

    monkeypatch.setattr(compile_module, "plan_kernel", one_bias_off)
    path = m3c.export(build_model("micro-nyud", seed=1), tmp_path / "m.onnx")
    calib = np.random.default_rng(0).standard_normal((2, 3, 48, 64)) if calibrated else None
    with pytest.raises(LoweringError, match="first diverging stage: kernel plan"):
        compile_model(path, out=tmp_path / "build", precision=precision, calib=calib)
    assert not (tmp_path / "build").exists()


def test_compile_accepts_the_unchanged_model(tmp_path):
    path = m3c.export(build_model("micro-nyud", seed=1), tmp_path / "m.onnx")
    assert_lowers_like_onnxruntime(path, tmp_path)
    assert (tmp_path / "build" / "project.json").is_file()


def test_single_shared_router_runs_as_a_one_row_router_table(tmp_path):
    model = build_model("micro-nyud", gate="single", seed=4)
    path = m3c.export(model, tmp_path / "single.onnx")
    session = ort_session(onnx.load(str(path)))
    assert [i.name for i in session.get_inputs()] == ["image", "task"]
    for feeds in _feeds(path, seed=1):  # torch as the independent oracle for the export
        with torch.no_grad():
            expected = model(torch.from_numpy(feeds["image"]), int(feeds["task"]))
        for want, got in zip(expected, session.run(None, feeds), strict=True):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    lowered = assert_lowers_like_onnxruntime(path, tmp_path)
    routes = [n for n in lowered.graph.nodes if n.op == "Route"]
    assert len(routes) == len(model.config.moe_blocks)
    for route in routes:
        assert route.inputs[1].name == "task"
        assert route.inputs[2].values.shape[0] == 1 and route.inputs[3].values.shape[0] == 1
        assert not np.any(route.inputs[3].values)
    calls = json.loads((tmp_path / "build" / "kernel.json").read_text())["calls"]
    rows = [(c["weight_rows"], c["bias_rows"]) for c in calls
            if c["op"] == "route"]
    assert rows == [(1, 1)] * len(routes)


def test_one_task_task_conditioned_export_lowers(tmp_path):
    model = build_model("micro-nyud", gate="task", tasks={"semseg": 40}, seed=6)
    path = m3c.export(model, tmp_path / "one_task.onnx")
    lowered = assert_lowers_like_onnxruntime(path, tmp_path)
    assert [t.name for t in lowered.graph.inputs] == ["image"]
    assert lowered.op_counts()["m3c.Route"] == len(model.config.moe_blocks)


# (MoE form, gate, exporter, nn.Linear router with bias): every one lowers to the same
# expert-major graph as m3c's own export of the same model.
FORMS = [
    ("index_add", "multi", "torchscript", False),
    ("sparse", "single", "torchscript", True),
    ("einsum", "multi", "torchscript", False),
    ("scatter_einsum", "task", "torchscript", False),  # with expert hidden = 2 D
    *[pytest.param(*case, marks=pytest.mark.slow) for case in [  # dynamo exports take seconds
        ("index_add", "task", "dynamo", False),
        ("sparse", "task", "dynamo", False),
        ("einsum", "task", "dynamo", False),
        ("einsum", "single", "dynamo", True),
        ("dense", "multi", "dynamo", False),  # m3c's own model through the dynamo exporter
    ]],
]


def _base(gate, form):
    ratio = 2.0 if form == "scatter_einsum" else 1.0
    return build_model("micro-nyud", gate=gate, seed=5, moe_mlp_ratio=ratio)


@pytest.mark.parametrize("form, gate, exporter, gemm", FORMS)
def test_moe_form_lowers_to_the_expert_major_graph(tmp_path, form, gate, exporter, gemm):
    base = _base(gate, form)
    model = copy.deepcopy(base)
    if form != "dense":
        rewrite_moe_layers(model, form, gemm_router=gemm)
    write = export_dynamo if exporter == "dynamo" else export_form
    path = write(model, tmp_path / f"{form}.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if form == "index_add" and exporter == "torchscript":
        assert "ScatterElements" in ops and "ScatterND" not in ops
    if form == "einsum" and exporter == "torchscript":
        assert {"OneHot", "Einsum"} <= ops
    if gemm and exporter == "torchscript":
        assert "Gemm" in ops
    lowered = assert_lowers_like_onnxruntime(path, tmp_path)
    reference = m3c.lower(m3c.export(base, tmp_path / "reference.onnx"))
    assert lowered_structure(lowered) == lowered_structure(reference)
    routes = [n for n in lowered.graph.nodes if n.op == "Route"]
    if gemm:  # the router's bias is kept, in the one row of the router table
        assert all(np.any(route.inputs[3].values) for route in routes)
    # In fixed point, the C-simulated kernel equals the bit-exact emulation on every task.
    from m3c.check.verify_project import verify_project

    rows = verify_project(compile_model(path, out=tmp_path / "fixed", precision="fixed"),
                          oracle="ort")
    assert rows and all(row.kernel_error == 0 and row.passed for row in rows)


@pytest.mark.parametrize("tasks, drop", [(None, (5,)), ({"semseg": 40}, (3, 5))])
def test_contrib_moe_without_optional_inputs_or_value_info(tmp_path, tasks, drop):
    overrides = {"tasks": tasks} if tasks else {}
    base = build_model("micro-nyud", gate="multi", seed=5, **overrides)
    full = export_form(rewrite_moe_layers(copy.deepcopy(base), "contrib"), tmp_path / "c.onnx")
    path = without_optional_contrib_inputs(full, tmp_path / "stripped.onnx", drop)
    proto = onnx.load(str(path))
    assert not proto.graph.value_info
    assert all(len(n.input) == 5 or n.input[3] == "" for n in proto.graph.node
               if n.op_type == "MoE")
    lowered = assert_lowers_like_onnxruntime(path, tmp_path)
    assert lowered.op_counts()["m3c.Route"] == len(base.config.moe_blocks)


class TorchMHA(nn.Module):
    """`nn.MultiheadAttention` holding the weights of an m3c.frontend.models Attention."""

    def __init__(self, attention) -> None:
        super().__init__()
        dim = attention.proj.in_features
        self.mha = nn.MultiheadAttention(dim, attention.num_heads, batch_first=True)
        with torch.no_grad():
            self.mha.in_proj_weight.copy_(attention.qkv.weight)
            self.mha.in_proj_bias.copy_(attention.qkv.bias)
            self.mha.out_proj.weight.copy_(attention.proj.weight)
            self.mha.out_proj.bias.copy_(attention.proj.bias)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class SDPAttention(nn.Module):
    """The same attention through `F.scaled_dot_product_attention`."""

    def __init__(self, attention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x):
        b, n, d = x.shape
        heads = self.attention.num_heads
        qkv = self.attention.qkv(x).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(*qkv.unbind(0))
        return self.attention.proj(out.transpose(1, 2).reshape(b, n, d))


@pytest.mark.parametrize("layer, exporter", [
    ("mha", "torchscript"), ("sdpa", "torchscript"),
    pytest.param("mha", "dynamo", marks=pytest.mark.slow),
    pytest.param("sdpa", "dynamo", marks=pytest.mark.slow),
])
def test_standard_attention_layers_fuse_to_m3c_attention(tmp_path, layer, exporter):
    base = build_model("micro-nyud", seed=2)
    model = copy.deepcopy(base)
    for block in model.backbone.blocks:
        block.attn = (TorchMHA if layer == "mha" else SDPAttention)(block.attn)
    write = export_dynamo if exporter == "dynamo" else export_form
    path = write(model.eval(), tmp_path / f"{layer}.onnx")
    lowered = assert_lowers_like_onnxruntime(path, tmp_path)
    reference = m3c.lower(m3c.export(base, tmp_path / "reference.onnx"))
    assert lowered_structure(lowered) == lowered_structure(reference)


def test_fixed_project_is_held_to_onnxruntime_too(tmp_path):
    from m3c.check.verify_project import verify_project

    # the single shared router: its one-row router table on the C-simulated kernel too
    path = m3c.export(build_model("micro-nyud", gate="single", seed=1), tmp_path / "m.onnx")
    project = compile_model(path, out=tmp_path / "build", precision="fixed")
    rows = verify_project(project)
    assert all(row.passed and row.kernel_error == 0 for row in rows)
    assert all(0 < row.fidelity.features <= FEATURES_LIMIT for row in rows)
    # An emulation and kernel that agree with each other but not with the model must fail.
    reference = project / "data" / "features_onnxruntime_task1.bin"
    values = np.fromfile(reference, np.float32)
    (values + np.float32(np.sqrt(np.mean(values ** 2)))).tofile(reference)
    verdicts = {row.task: row.passed for row in verify_project(project)}
    assert verdicts == {"semseg": True, "depth": False}


# --- MoE layers and models as people write them (issue 26, item 8) ----------------------

def _verified(path) -> list:
    """m3c verify's rows: every stage, every output, within 1e-4 of onnxruntime."""
    from m3c.check.verify import verify

    rows = verify(path)
    assert rows and all(row.errors for row in rows)
    assert max(row.max_error for row in rows) <= 1e-4
    return rows


def _moe_layers(path) -> list:
    return [node for node in m3c.lower(path, until="recognize_moe").graph.nodes
            if node.op == "MoE" and node.domain == "m3c"]


def _export_checked(model, path, dynamo):
    """The export, held to torch itself (the independent oracle for what the file means)."""
    export_user(model, path, dynamo)
    image = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    feeds = {"x": image}
    if model.blocks[1].mlp.task_embed is not None:
        feeds["task"] = np.array(1, np.int64)
    with torch.no_grad():
        want = model(torch.from_numpy(image), torch.tensor(1))
    got = ort_session(onnx.load(str(path))).run(None, feeds)
    for expected, value in zip(want, got, strict=True):
        np.testing.assert_allclose(value, expected.numpy(), atol=1e-4, rtol=0)
    return path


# (form, exporter): each lowers to one m3c.MoE per layer with this top-k and gate form.
USER_CASES = [
    ("topk_loop", False), ("dense_softmax_loop", False), ("dense_topk_loop", False),
    ("dense_einsum", False), ("mixtral", False), ("deepseek", False),
    *[pytest.param(form, True, marks=pytest.mark.slow)
      for form in ("dense_softmax_loop", "dense_topk_loop", "dense_einsum", "mixtral",
                   "deepseek")],
]
EXPECTED_GATE = {"topk_loop": (2, 0), "dense_softmax_loop": (4, 0), "dense_topk_loop": (2, 0),
                 "dense_einsum": (4, 0), "mixtral": (2, 1), "deepseek": (2, 1)}


@pytest.mark.parametrize("form, dynamo", USER_CASES)
def test_user_written_moe_forms_verify(tmp_path, form, dynamo):
    """A model with one input named `x`, a router shared by its two outputs, MHA blocks and
    Resize heads: every stage of the lowering equals onnxruntime on every output."""
    path = _export_checked(UserViT(form), tmp_path / f"{form}.onnx", dynamo)
    _verified(path)
    (layer,) = _moe_layers(path)
    assert (layer.attrs["top_k"], layer.attrs.get("renormalise", 0)) == EXPECTED_GATE[form]
    lowered = m3c.lower(path)
    assert [t.name for t in lowered.graph.inputs] == ["image"]
    renormalised = lowered.op_counts().get("m3c.RenormaliseScores", 0)
    assert renormalised == EXPECTED_GATE[form][1]


@pytest.mark.parametrize("form, dynamo", [
    ("dense_topk_loop", False), ("dense_einsum", False),
    pytest.param("dense_topk_loop", True, marks=pytest.mark.slow),
    pytest.param("dense_einsum", True, marks=pytest.mark.slow),
])
def test_dense_moe_with_a_task_conditioned_linear_router(tmp_path, form, dynamo):
    """The router an nn.Linear over concat(tokens, task embedding): the embedding folds into
    one bias row per task (dynamo writes the Linear as a Gemm)."""
    model = UserViT(form, task_router=True)
    path = _export_checked(model, tmp_path / f"{form}.onnx", dynamo)
    _verified(path)
    (layer,) = _moe_layers(path)
    assert layer.inputs[3].values.shape == (2, 4)  # a bias row per task


@pytest.mark.parametrize("normalize, tokens_3d", [(True, False), (False, True)])
def test_contrib_moe_renormalised_or_fed_the_token_tensor(tmp_path, normalize, tokens_3d):
    import functools

    import moe_forms

    base = build_model("micro-nyud", gate="multi", seed=5)
    form = functools.partial(moe_forms.ContribMoE, normalize=normalize, tokens_3d=tokens_3d)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(moe_forms.FORMS, "contrib_variant", form)
        model = rewrite_moe_layers(copy.deepcopy(base), "contrib_variant")
    path = export_form(model, tmp_path / "contrib.onnx")
    moe_nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MoE"]
    assert moe_nodes and all(
        any(a.name == "normalize_routing_weights" and a.i == normalize for a in n.attribute)
        for n in moe_nodes)
    _verified(path)
    layers = _moe_layers(path)
    assert {layer.attrs.get("renormalise", 0) for layer in layers} == {int(normalize)}


def test_a_gate_outside_the_forms_is_refused_naming_it(tmp_path):
    """Sigmoid gates (neither softmax top-k nor its renormalised forms): one line naming the
    node that differs, not an internal error or a silently different model."""
    from m3c.errors import M3CError

    path = export_user(UserViT("sigmoid_loop"), tmp_path / "sigmoid.onnx", dynamo=False)
    with pytest.raises(M3CError) as refused:
        m3c.lower(path)
    assert "Sigmoid" in str(refused.value).splitlines()[0]


def test_batchnorm_on_the_residual_stream_is_refused_at_the_batchnorm(tmp_path):
    """A BatchNorm1d in place of a block's LayerNorm: one line naming the BatchNormalization
    node (not the transposes around it) and what the accelerator takes instead."""
    from m3c.errors import M3CError

    path = export_user(UserViT("topk_loop", norm="batch"), tmp_path / "bn.onnx", dynamo=False)
    with pytest.raises(M3CError) as refused:
        m3c.lower(path)
    first = str(refused.value).splitlines()[0]
    assert "BatchNormalization" in first and "norm1/bn" in first and "Transpose" not in first
    assert "LayerNorm" in refused.value.remedy


def test_batchnorm_after_the_patch_embedding_lowers(tmp_path):
    path = _export_checked(UserViT("topk_loop", embed_batchnorm=True), tmp_path / "bn.onnx",
                           dynamo=False)
    _verified(path)


@pytest.mark.parametrize("form, precision", [("mixtral", "fixed"), ("deepseek", "float")])
def test_renormalised_top_k_compiles_and_its_project_verifies(tmp_path, form, precision):
    """The router unit renormalises the chosen probabilities: the C-simulation equals the
    emulation bit for bit in fixed point, and both stay with onnxruntime on the original."""
    from m3c.check.verify_project import verify_project

    path = export_user(UserViT(form), tmp_path / f"{form}.onnx", dynamo=False)
    project = compile_model(path, out=tmp_path / "build", precision=precision)
    route = next(c for c in json.loads((project / "kernel.json").read_text())["calls"]
                 if c["op"] == "route")
    assert route["renormalise"] is True
    rows = verify_project(project, oracle="ort")
    assert rows and all(row.passed for row in rows), rows
    if precision == "fixed":
        assert all(row.kernel_error == 0 for row in rows)


def test_dense_modulelist_moe_compiles_and_its_project_verifies(tmp_path):
    from m3c.check.verify_project import verify_project

    path = export_user(UserViT("dense_topk_loop"), tmp_path / "dense.onnx", dynamo=False)
    project = compile_model(path, out=tmp_path / "build", precision="fixed")
    rows = verify_project(project, oracle="ort")
    assert rows and all(row.passed and row.kernel_error == 0 for row in rows)
