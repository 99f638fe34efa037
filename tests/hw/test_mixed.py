"""int8 and mixed precision on the synthetic-trained micro model against onnxruntime's float
outputs; the per-layer choice, its precision config round trip and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from accuracy import head_losses

from m3c.errors import CodegenError
from m3c.hw.estimate import call_macs
from m3c.hw.mixed import choose_layers, parse_loss, task_loss
from m3c.hw.precision import MAC8_CAPABLE
from m3c.project.compile import PRECISION_CONFIG, compile_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import m3c
    from m3c.frontend.models.data import make_dataset
    from m3c.frontend.models.train import load_or_train

    model = load_or_train("micro-nyud", gate="multi", quiet=True)
    folder = tmp_path_factory.mktemp("trained")
    path = m3c.export(model, folder / "trained.onnx")
    return model, path, make_dataset(model.config, 8, seed=99)["image"], folder


def _share_8bit(project) -> float:
    kernel = json.loads((project / "kernel.json").read_text())
    top_k = next((c["top_k"] for c in kernel["calls"] if c["op"] == "route"), 1)
    macs = [(call_macs(call, top_k), "mac8" in call) for call in kernel["calls"]]
    return sum(m for m, narrow in macs if narrow) / sum(m for m, _ in macs)


def test_int8_on_the_trained_model(trained):
    """>= 97 % of segmentation pixels and <= 4 % relative depth RMSE against float."""
    model, path, calibration, folder = trained
    project = compile_model(path, out=folder / "int8", precision="int8", calib=calibration)
    losses = head_losses(project, path, model.config)
    assert losses["semseg"] <= 0.03 and losses["depth"] <= 0.04, losses
    kernel = json.loads((project / "kernel.json").read_text())
    assert all(("mac8" in call) == (call["op"] in MAC8_CAPABLE) for call in kernel["calls"])
    assert _share_8bit(project) > 0.5  # the 16-bit patch embedding is a third of micro's


def test_mixed_on_the_trained_model_and_its_config(trained):
    """1 % budget: >= 99 % / <= 2 % with at least half the MACs 8-bit; its saved precision
    config reproduces the same kernel."""
    model, path, calibration, folder = trained
    project = compile_model(path, out=folder / "mixed", precision="mixed", calib=calibration,
                            max_agreement_loss="1%")
    manifest = json.loads((project / "project.json").read_text())
    assert manifest["mixed"]["measured_loss"] <= 0.01
    assert sorted(manifest["mixed"]["layers_8bit"]) == manifest["mac8_layers"]
    losses = head_losses(project, path, model.config)
    assert losses["semseg"] <= 0.01 and losses["depth"] <= 0.02, losses
    assert _share_8bit(project) >= 0.5
    again = compile_model(path, out=folder / "again", calib=calibration,
                          precision_config=project / PRECISION_CONFIG)
    assert (again / "kernel.json").read_text() == (project / "kernel.json").read_text()
    assert (again / "weights" / "weights.bin").read_bytes() == (
        project / "weights" / "weights.bin").read_bytes()


def test_greedy_choice_keeps_within_the_budget():
    """A layer too lossy alone is never taken; the combination is measured, not summed."""
    alone = {"a": 0.004, "b": 0.006, "c": 0.02, "d": 0.0}

    def loss(layers):  # interacting layers: a and b together cost more than their sum
        total = sum(alone[layer] for layer in layers)
        return total * 1.5 if {"a", "b"} <= set(layers) else total

    choice = choose_layers(loss, {"a": 100, "b": 100, "c": 1000, "d": 0}, budget=0.01)
    assert choice.layers == ["a"]  # b would push the measured loss to 0.015
    assert "d" not in choice.sensitivity  # no cycles saved: not a candidate
    assert choice.loss == pytest.approx(0.004)


def test_task_loss_is_disagreement_or_relative_rmse():
    classes = np.zeros((1, 3, 2, 2), np.float32)
    classes[0, 0] = 1
    other = classes.copy()
    other[0, 1, 0, 0] = 2  # one of four pixels changes class
    assert task_loss(classes, other) == pytest.approx(0.25)
    depth = np.full((1, 1, 2, 2), 2.0, np.float32)
    assert task_loss(depth, depth * 1.01) == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("text, value", [("1%", 0.01), ("0.5%", 0.005), ("0.02", 0.02)])
def test_parse_loss(text, value):
    assert parse_loss(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "150%", "-1%", "1"])
def test_bad_agreement_loss(text):
    with pytest.raises(CodegenError, match="not a fraction"):
        parse_loss(text)


def test_bad_agreement_loss_exits_2(trained, tmp_path):
    _, path, _, _ = trained
    result = subprocess.run([sys.executable, "-m", "m3c", "compile", str(path), "-o",
                             str(tmp_path / "build"), "--precision", "mixed",
                             "--max-agreement-loss", "lots"], capture_output=True, text=True)
    assert result.returncode == 2 and "1% or 0.01" in result.stderr


@pytest.mark.parametrize("text, message", [
    ('{"layers": {"*/Route": {"bits": 8}}}', "can be 8-bit"),
    ('{"layers": {"*/qkv/*": {"bits": 4}}}', "bits are 8"),
])
def test_bad_bits_in_precision_config(trained, tmp_path, text, message):
    _, path, _, _ = trained
    config = tmp_path / "bad.json"
    config.write_text(text)
    with pytest.raises(CodegenError, match=message):
        compile_model(path, out=tmp_path / "build", precision_config=config)


def test_int8_refuses_types_wider_than_its_shifts(trained, tmp_path):
    _, path, _, _ = trained
    config = tmp_path / "wide.json"
    config.write_text('{"types": {"weight": "ap_fixed<32,2>"}}')
    with pytest.raises(CodegenError, match="at most 16 bits"):
        compile_model(path, out=tmp_path / "build", precision="int8", precision_config=config)
    assert not (tmp_path / "build").exists()
