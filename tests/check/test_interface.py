"""A model written without a `task` input (one router shared by its tasks, every task's
output from one run, no m3c metadata), as `torch.onnx.export` writes it: verify compares
every output, and evaluate, simulate and fresh-image verification run on its project
(issue 26, items 1, 2 and 5)."""

from __future__ import annotations

import json
import warnings

import onnx
import pytest
import torch
from torch import nn

from m3c.check.evaluate import evaluate
from m3c.check.fresh import verify_fresh_images
from m3c.check.images import synthetic_images
from m3c.check.memsim import simulate_project
from m3c.check.verify import verify_model
from m3c.frontend.models import build_model
from m3c.project.compile import compile_model


class SharedRouterModel(nn.Module):
    """The model called for task 0: with one shared router the task changes nothing."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model(image, torch.tensor(0))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = build_model("micro-nyud", gate="single", seed=3).eval()
    path = tmp_path_factory.mktemp("interface") / "shared.onnx"
    image = torch.randn(1, 3, *model.config.image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SharedRouterModel(model), (image,), str(path), dynamo=False,
                          opset_version=17, input_names=["image"],
                          output_names=list(model.config.tasks))
    inputs = [value.name for value in onnx.load(str(path)).graph.input]
    assert inputs == ["image"]
    return path


@pytest.fixture(scope="module")
def project(model_path, tmp_path_factory):
    return compile_model(model_path, out=tmp_path_factory.mktemp("shared") / "build")


def test_verify_compares_every_output(model_path):
    result = verify_model(model_path, count=2, oracle="ort")
    assert all(set(row.errors) == {"semseg", "depth"} for row in result.stages)
    assert max(error for row in result.stages for error in row.errors.values()) < 1e-4


def test_evaluate_runs_every_task_without_a_task_input(project):
    manifest = json.loads((project / "project.json").read_text())
    images = synthetic_images(manifest, 2, seed=1)
    assert "standard-normal" in images.source  # no generator for a model m3c did not export
    summary = evaluate([project], images, backend="emulate", workers=1)["projects"][0]
    assert set(summary["tasks"]) == {"semseg", "depth"}


def test_simulate_and_fresh_images_run_on_generated_images(project):
    simulation = simulate_project(project, images=2)
    assert simulation["designs"]
    rows, _, source = verify_fresh_images(project, 2)
    assert {row.task for row in rows} == {"semseg", "depth"} and "standard-normal" in source
    assert all(row.passed for row in rows)
