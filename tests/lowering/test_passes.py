"""Each canonicalisation pass on small torch modules, against onnxruntime on the original."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from m3c.frontend.load import load_model
from m3c.ir.passmanager import Pipeline
from m3c.ir.sessions import ort_session
from m3c.passes import (
    FoldConstants,
    FuseAttention,
    FuseDense,
    FuseGelu,
    FuseLayerNorm,
    InferShapes,
    RecognizeMoE,
)


class HandWrittenLayerNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)
        self.beta = nn.Parameter(torch.randn(dim))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.gamma + self.beta


class Block(nn.Module):
    """A decomposed LayerNorm, timm attention, and an MLP with erf GELU."""

    def __init__(self, dim: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.norm = HandWrittenLayerNorm(dim)
        self.qkv, self.proj, self.heads = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(x)))


def _export(module: nn.Module, shape, path) -> onnx.ModelProto:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(*shape),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"])
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def block_model(tmp_path_factory):
    torch.manual_seed(1)
    return _export(Block(), (1, 7, 24), tmp_path_factory.mktemp("m") / "block.onnx")


def _stages(model, passes):
    return list(Pipeline([p() for p in passes]).stages(load_model(model)))


CANONICAL = [InferShapes, FoldConstants, FuseLayerNorm, FuseGelu, FuseDense, FuseAttention]


def test_each_fusion_keeps_the_numbers(block_model):
    x = np.random.default_rng(0).standard_normal((1, 7, 24)).astype(np.float32)
    want = ort_session(block_model).run(None, {"x": x})[0]
    counts = {}
    for _, name, stage in _stages(block_model, CANONICAL):
        np.testing.assert_allclose(stage.run({"x": x})["y"], want, atol=1e-5)
        counts[name] = stage.op_counts()
    assert "ReduceMean" in counts["fold_constants"]
    assert counts["fuse_layernorm"]["LayerNormalization"] == 1
    assert "ReduceMean" not in counts["fuse_layernorm"] and "Sqrt" not in counts["fuse_layernorm"]
    assert counts["fuse_gelu"]["m3c.Gelu"] == 1 and "Erf" not in counts["fuse_gelu"]
    dense = counts["fuse_dense"]
    assert dense["m3c.Dense"] == 4 and "m3c.Gelu" not in dense and "MatMul" in dense
    final = counts["fuse_attention"]
    assert final == {"Add": 2, "LayerNormalization": 1, "m3c.Attention": 1, "m3c.Dense": 4}


def test_passes_report_no_change_when_nothing_matches(block_model):
    graph = load_model(block_model)
    for step in CANONICAL:
        graph, _ = step().apply(graph)
    for step in [FuseLayerNorm, FuseGelu, FuseDense, FuseAttention, RecognizeMoE]:
        graph, changed = step().apply(graph)
        assert not changed, step.name


def test_gemm_on_two_dimensional_input_becomes_dense(tmp_path):
    model = _export(nn.Sequential(nn.Linear(5, 6), nn.GELU(), nn.Linear(6, 3)), (4, 5),
                    tmp_path / "mlp.onnx")
    assert {n.op_type for n in model.graph.node} >= {"Gemm"}
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    want = ort_session(model).run(None, {"x": x})[0]
    final = _stages(model, CANONICAL)[-1][2]
    assert final.op_counts() == {"m3c.Dense": 2}
    activations = [n.attrs["activation"] for n in final.graph.nodes]
    assert activations == ["gelu", "none"]
    np.testing.assert_allclose(final.run({"x": x})["y"], want, atol=1e-5)


def test_task_switch_only_changes_router_rows(export_model):
    import m3c

    model, path = export_model("micro-pascal", "task")
    graph = m3c.lower(path)
    task = next(t for t in graph.graph.inputs if t.name == "task")
    assert {node.op for node in task.outputs} == {"Route"}
    tasks = len(model.config.tasks)
    for route in task.outputs:
        router_w, router_b = route.inputs[2], route.inputs[3]
        # task-conditioned: shared weights, the task embedding folded into one bias row per task
        assert router_w.values.shape[0] == 1 and router_b.values.shape[0] == tasks
        assert not np.allclose(router_b.values[0], router_b.values[1])


class TwoLinears(nn.Module):
    """Two F.linear calls in one forward: the exporter names both MatMuls under prefix ''."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(6))
        self.w2, self.b2 = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        return F.linear(F.linear(x, self.w1, self.b1), self.w2, self.b2)


def test_fused_layers_with_colliding_node_names_keep_their_own_weights(tmp_path):
    torch.manual_seed(3)
    model = _export(TwoLinears(), (1, 3, 5), tmp_path / "two.onnx")
    prefixes = {n.name.rsplit("/", 1)[0] for n in model.graph.node if n.op_type == "MatMul"}
    assert len(prefixes) == 1  # the collision this test is about
    x = np.random.default_rng(2).standard_normal((1, 3, 5)).astype(np.float32)
    want = ort_session(model).run(None, {"x": x})[0]
    final = _stages(model, CANONICAL)[-1][2]
    assert final.op_counts() == {"m3c.Dense": 2}
    names = [t.name for n in final.graph.nodes for t in n.inputs[1:]]
    assert len(set(names)) == 4
    # saved and reloaded: a name clash would make one weight replace the other here
    reloaded = load_model(final.to_onnx())
    np.testing.assert_allclose(reloaded.run({"x": x})["y"], want, atol=1e-5)


def test_duplicate_tensor_names_are_refused():
    import onnx_graphsurgeon as gs

    from m3c.errors import LoweringError
    from m3c.ir.graph import check_unique_names

    x = gs.Variable("x", np.float32, [2])
    nodes = [gs.Node("Add", inputs=[x, gs.Constant("c", np.ones(2, np.float32))],
                     outputs=[gs.Variable("y", np.float32, [2])])]
    nodes.append(gs.Node("Mul", inputs=[nodes[0].outputs[0],
                                        gs.Constant("c", np.zeros(2, np.float32))],
                         outputs=[gs.Variable("z", np.float32, [2])]))
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[nodes[1].outputs[0]])
    with pytest.raises(LoweringError, match="'c'"):
        check_unique_names(graph, "test")
