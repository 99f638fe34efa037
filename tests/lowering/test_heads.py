"""Task heads recognised as chains of stages (m3c/lowering/heads.py) from heads written by
both torch exporters, run in numpy against onnxruntime; heads with anything else stay on the
host with the node and the reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from m3c.lowering.heads import HeadPlan, HostHead, Resize, recognise_head

GRID = (3, 4)  # the tokens' map: 12 patches and a class token
DIM = 16


class PUP(nn.Module):
    """SETR-PUP: layer norm, (conv 3x3, BN, ReLU, bilinear x2) twice, conv 1x1."""

    def __init__(self, align_corners: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM, eps=1e-6)
        self.convs = nn.ModuleList([nn.Conv2d(DIM, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8)])
        self.last = nn.Conv2d(8, 5, 1)
        self.align_corners = align_corners

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(tokens[:, 1:])
        x = x.transpose(1, 2).reshape(1, DIM, *GRID)
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = F.interpolate(F.relu(bn(conv(x))), scale_factor=2.0, mode="bilinear",
                              align_corners=self.align_corners)
        return self.last(x)


class Naive(nn.Module):
    """SETR-naive: conv 1x1, BN, ReLU, conv 1x1, then bilinear to the image's size."""

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        self.first, self.bn, self.last = nn.Conv2d(DIM, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 1)
        self.align_corners = align_corners

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, 1:].transpose(1, 2).reshape(1, DIM, *GRID)
        x = self.last(F.relu(self.bn(self.first(x))))
        return F.interpolate(x, size=(24, 32), mode="bilinear", align_corners=self.align_corners)


class LinearHead(nn.Module):
    """A linear layer on the tokens, laid out as a map (channels last first), nearest x8."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.linear(tokens[:, 1:]).reshape(1, *GRID, 4).permute(0, 3, 1, 2)
        return F.interpolate(x, scale_factor=8.0, mode="nearest")


class OneChannel(nn.Module):
    """A linear layer to one channel, transposed to a map: the dynamo exporter spells the
    transpose of a size-1 axis as a reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.linear(tokens[:, 1:]).transpose(1, 2).reshape(1, 1, *GRID)
        return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)


class Strided(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(DIM, 4, 3, stride=2, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.conv(tokens[:, 1:].transpose(1, 2).reshape(1, DIM, *GRID))


class Scrambled(nn.Module):
    """Tokens reshaped to [1, C, H, W] without a transpose: not the tokens' map."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.relu(tokens[:, 1:].reshape(1, DIM, *GRID))


class Sigmoid(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(tokens[:, 1:].transpose(1, 2).reshape(1, DIM, *GRID))


def _export(module: nn.Module, path, dynamo: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    module.eval()
    for child in module.modules():  # batch norms with statistics of their own to fold
        if isinstance(child, nn.BatchNorm2d):
            child.running_mean.uniform_(-0.5, 0.5)
            child.running_var.uniform_(0.5, 2.0)
            child.weight.data.uniform_(0.5, 1.5)
            child.bias.data.uniform_(-0.5, 0.5)
    tokens = torch.randn(1, GRID[0] * GRID[1] + 1, DIM)
    torch.onnx.export(module, (tokens,), str(path), input_names=["features"],
                      output_names=["out"], dynamo=dynamo, opset_version=18)
    return onnx.load(str(path))


def _onnxruntime(model: onnx.ModelProto, tokens: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: tokens})[0]


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("module, words", [
    (PUP(), "drop class token, layer norm, 2 x (conv 3x3, ReLU, bilinear x2), conv 1x1"),
    (PUP(align_corners=True), "2 x (conv 3x3, ReLU, bilinear x2)"),
    (Naive(align_corners=False), "conv 1x1, ReLU, conv 1x1, bilinear x8"),
    (Naive(align_corners=True), "conv 1x1, ReLU, conv 1x1, bilinear x8"),
    (LinearHead(), "drop class token, linear, nearest x8"),
    (OneChannel(), "drop class token, linear, bilinear x4"),
], ids=["pup", "pup-align", "naive", "naive-align", "linear", "one-channel"])
def test_a_head_is_recognised_and_runs_as_onnxruntime_does(tmp_path, module, words, dynamo):
    model = _export(module, tmp_path / "head.onnx", dynamo)
    plan = recognise_head(model, "task")
    assert isinstance(plan, HeadPlan), plan
    assert words in plan.describe()
    tokens = np.random.default_rng(3).standard_normal(plan.tokens_shape).astype(np.float32)
    expected = _onnxruntime(model, tokens)
    assert plan.run(tokens).shape == expected.shape
    np.testing.assert_allclose(plan.run(tokens), expected, atol=1e-4, rtol=1e-4)
    resizes = [stage for stage in plan.stages if isinstance(stage, Resize)]
    assert {stage.align_corners for stage in resizes} == {
        getattr(module, "align_corners", False)}


def test_pup_macs_count_every_convolution_on_its_map(tmp_path):
    """conv 3x3 16 -> 8 on 3x4, conv 3x3 8 -> 8 on 6x8, conv 1x1 8 -> 5 on 12x16."""
    plan = recognise_head(_export(PUP(), tmp_path / "pup.onnx", False), "task")
    assert plan.macs() == (3 * 4 * 8 * DIM * 9) + (6 * 8 * 8 * 8 * 9) + (12 * 16 * 5 * 8)


@pytest.mark.parametrize("module, node, reason", [
    (Strided(), "Conv", "stride 1"),
    (Sigmoid(), "Sigmoid", "not a head stage"),
    (Scrambled(), "", "do not lay the tokens out as a map"),
])
def test_a_head_with_other_nodes_stays_on_the_host(tmp_path, module, node, reason):
    result = recognise_head(_export(module, tmp_path / "head.onnx", False), "task")
    assert isinstance(result, HostHead)
    assert node in result.node and reason in result.reason


def _handmade(opset: int, transform: str) -> onnx.ModelProto:
    """A head written with onnx.helper at `opset`: tokens to map (reshape, then transpose),
    conv 3x3 without bias, BatchNormalization (left for m3c to fold), ReLU, a Resize with the
    opset's inputs (opset 11: roi and scales; later: sizes)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(5)
    tensors = {
        "shape": np.array([1, *GRID, DIM], np.int64),
        "w": rng.standard_normal((6, DIM, 3, 3)).astype(np.float32) * 0.2,
        "gamma": rng.uniform(0.5, 1.5, 6).astype(np.float32),
        "beta": rng.uniform(-0.5, 0.5, 6).astype(np.float32),
        "mean": rng.uniform(-0.5, 0.5, 6).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, 6).astype(np.float32),
        "starts": np.array([1], np.int64), "ends": np.array([1 << 30], np.int64),
        "axes": np.array([1], np.int64),
        "roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32),
        "sizes": np.array([1, 6, 2 * GRID[0], 2 * GRID[1]], np.int64),
    }
    resize_inputs = ["r", "roi", "scales"] if opset == 11 else ["r", "", "", "sizes"]
    nodes = [
        helper.make_node("Slice", ["features", "starts", "ends", "axes"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["m"]),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"],
                         epsilon=1e-3),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Resize", resize_inputs, ["out"], mode="linear",
                         coordinate_transformation_mode=transform),
    ]
    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                       [1, GRID[0] * GRID[1] + 1, DIM])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value, name) for name, value in tensors.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset, transform", [(11, "pytorch_half_pixel"),
                                              (13, "align_corners"), (19, "half_pixel")])
def test_a_handmade_head_with_a_batch_norm_folds_it_exactly(opset, transform):
    model = _handmade(opset, transform)
    plan = recognise_head(model, "task")
    assert isinstance(plan, HeadPlan), plan
    assert plan.describe() == "drop class token, conv 3x3, ReLU, bilinear x2"
    tokens = np.random.default_rng(4).standard_normal(plan.tokens_shape).astype(np.float32)
    np.testing.assert_allclose(plan.run(tokens), _onnxruntime(model, tokens), atol=1e-4,
                               rtol=1e-4)


def test_a_compiled_project_records_its_heads_and_their_macs(compiled):
    """project.json and the report describe each task's head; its MACs are those of the
    head's Conv nodes on the maps onnx's shape inference gives them."""
    import json

    project = compiled("micro-nyud", "multi", "fixed")[1]
    manifest = json.loads((project / "project.json").read_text())
    assert set(manifest["heads"]) == set(manifest["tasks"])
    for task, head in manifest["heads"].items():
        model = onnx.shape_inference.infer_shapes(
            onnx.load(str(project / "host/heads" / f"{task}.onnx")))
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                  for i in [*model.graph.value_info, *model.graph.output]}
        weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        expected = sum(np.prod(shapes[n.output[0]][2:]) * weights[n.input[1]].size for n in convs)
        assert head["runs_on"] == "host" and head["macs"] == expected > 0
        kernels = {weights[n.input[1]].shape[-1] for n in convs}
        assert all(f"conv {k}x{k}" in head["stages"] for k in kernels)
    report = (project / "report/report.md").read_text()
    assert "## Task heads (on the host)" in report
    assert all(head["stages"] in report for head in manifest["heads"].values())


def test_a_slice_with_computed_bounds_stays_on_the_host():
    """A slice whose bounds are no constants: the node and the reason, not a traceback."""
    model = _handmade(13, "half_pixel")
    slice_node = model.graph.node[0]
    slice_node.input[1] = "features_shape_start"  # a tensor nothing defines
    result = recognise_head(model, "task")
    assert isinstance(result, HostHead) and "computed at run time" in result.reason
