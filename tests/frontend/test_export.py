"""ONNX export: static, complete MoE, onnxruntime equal to torch for every task."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import m3c
from m3c.errors import ExportError
from m3c.frontend.exporter import export, read_metadata


def _inputs(config, seed):
    # Images of different statistics so that tokens land on different experts.
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, *config.image_size, generator=generator) * (1 + seed)
    return image


def _routings(model):
    layers = model.backbone.moe_layers()
    return [{tuple(r) for r in layer.last_routing.tolist()} for layer in layers]


@pytest.mark.parametrize("preset", ["micro-nyud", "micro-pascal", "tiny-cityscapes"])
@pytest.mark.parametrize("gate", ["multi", "task"])
def test_onnxruntime_matches_torch_for_every_task(export_model, preset, gate):
    model, path = export_model(preset, gate)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tasks = list(model.config.tasks)
    assert [o.name for o in session.get_outputs()] == tasks
    for seed in range(3):
        image = _inputs(model.config, seed)
        for task_id in range(len(tasks)):
            with torch.no_grad():
                expected = model(image, torch.tensor(task_id))
            assert all(len(r) > 1 for r in _routings(model)), "routing should differ per token"
            feeds = {"image": image.numpy(), "task": np.array(task_id, dtype=np.int64)}
            actual = session.run(None, feeds)
            for want, got in zip(expected, actual, strict=True):
                assert np.abs(want.numpy() - got).max() <= 1e-4


def test_tiny_nyud_full_resolution_matches(export_model):
    model, path = export_model("tiny-nyud", "multi")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = _inputs(model.config, 1)
    with torch.no_grad():
        expected = model(image, torch.tensor(1))
    actual = session.run(None, {"image": image.numpy(), "task": np.array(1, dtype=np.int64)})
    assert max(np.abs(e.numpy() - a).max() for e, a in zip(expected, actual, strict=True)) <= 1e-4


def test_graph_is_static_and_keeps_every_expert(export_model):
    model, path = export_model("micro-pascal", "multi")
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    ops = {node.op_type for node in proto.graph.node}
    assert "NonZero" not in ops and {"TopK", "Softmax", "ScatterElements"} <= ops
    config = model.config
    shapes = {tuple(init.dims) for init in proto.graph.initializer}
    e, d, h = config.num_experts, config.embed_dim, config.expert_hidden
    assert {(e, d, h), (e, h, d)} <= shapes  # stacked expert weights, all E of them
    assert (len(config.tasks), d, e) in shapes  # the router table indexed by `task`
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert all(dim.HasField("dim_value") for dim in value.type.tensor_type.shape.dim)
    meta = read_metadata(proto)
    assert json.loads(meta["m3c.tasks"]) == list(config.tasks)
    assert json.loads(meta["m3c.config"])["num_experts"] == e


def test_single_task_model_has_no_task_input(tmp_path):
    from m3c.frontend.models import build_model, preset

    config = preset("micro-nyud").replace(tasks={"semseg": 40}, task_embed_dim=0)
    model = build_model(config)
    path = export(model, tmp_path / "one.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    image = _inputs(config, 0)
    with torch.no_grad():
        expected = model(image)[0].numpy()
    assert np.abs(session.run(None, {"image": image.numpy()})[0] - expected).max() <= 1e-4


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "m3c", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_cli_exports_small_nyud_that_passes_the_full_checker(tmp_path):
    out = tmp_path / "x.onnx"
    result = _cli("export", "--preset", "small-nyud", "--random", "-o", str(out))
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(str(out), full_check=True)


def test_cli_exports_the_single_shared_router(tmp_path):
    out = tmp_path / "single.onnx"
    result = _cli("export", "--preset", "micro-nyud", "--gate", "single", "--random", "-o",
                  str(out))
    assert result.returncode == 0, result.stderr
    assert "single-gate" in result.stdout
    routes = [n for n in m3c.lower(out).graph.nodes if n.op == "Route"]
    assert routes and all(route.inputs[2].values.shape[0] == 1 for route in routes)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge-nyud", "--random"], "unknown preset"),
        (["/no/such/ckpt.pth", "--preset", "micro-nyud"], "ckpt.pth"),
        (["--preset", "micro-nyud", "--random", "-o", "/no/such/dir/x.onnx"], "not writable"),
        (["/no/such/ckpt.pth"], "--preset"),  # a checkpoint does not say which model it holds
    ],
)
def test_cli_bad_input_is_one_clear_error(tmp_path, args, message):
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "x.onnx")]
    result = _cli("export", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_garbage_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = _cli("export", str(bad), "--preset", "micro-nyud", "-o", str(tmp_path / "x.onnx"))
    assert result.returncode == 2 and "bad.pth" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_refuses_a_directory_target(tmp_path):
    from m3c.frontend.models import build_model

    with pytest.raises(ExportError):
        export(build_model("micro-nyud"), tmp_path)


def test_compiling_a_checkpoint_says_to_export_it_first(tmp_path):
    import torch

    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": {}}, checkpoint)
    result = _cli("compile", str(checkpoint), "-o", str(tmp_path / "build"))
    assert result.returncode == 2
    assert "a PyTorch checkpoint" in result.stderr and "m3c export" in result.stderr
