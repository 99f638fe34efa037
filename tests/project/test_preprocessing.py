"""Preprocessing as data (issue 26, item 7): the pictures' mean and std come from
`compile --mean/--std` or the model's `m3c.preprocess` metadata, are kept in project.json,
shown in the READMEs and used by the runtime's preprocessing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from m3c.errors import M3CError
from m3c.project.compile import compile_model
from m3c.runtime import Accelerator
from m3c.runtime.preprocess import resize_bilinear

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _expected(picture: np.ndarray, shape: list[int]) -> np.ndarray:
    image = resize_bilinear(picture.transpose(2, 0, 1).astype(np.float32) / 255.0, *shape[2:])
    return ((image - np.reshape(MEAN, (3, 1, 1))) / np.reshape(STD, (3, 1, 1)))[None]


def _check_project(project) -> None:
    manifest = json.loads((project / "project.json").read_text())
    assert manifest["config"]["image_mean"] == MEAN and manifest["config"]["image_std"] == STD
    assert "0.485" in (project / "README.md").read_text()
    assert "0.485" in (project / "host/README.md").read_text()
    picture = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    with Accelerator.open(project, backend="reference") as accelerator:
        got = accelerator.prepare(picture)
    np.testing.assert_allclose(got, _expected(picture, manifest["image_shape"]), atol=1e-5)


def test_compile_mean_and_std_reach_project_and_runtime(export_model, tmp_path):
    _, path = export_model("micro-nyud")
    _check_project(compile_model(path, out=tmp_path / "build", precision="float",
                                 mean=MEAN, std=STD))


def test_the_models_preprocess_metadata_is_used(export_model, tmp_path):
    _, path = export_model("micro-nyud")
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "m3c.preprocess", json.dumps({"mean": MEAN, "std": STD})
    onnx.save(model, str(tmp_path / "with_metadata.onnx"))
    _check_project(compile_model(tmp_path / "with_metadata.onnx", out=tmp_path / "build",
                                 precision="float"))


@pytest.mark.parametrize("mean, std", [([0.5, 0.5], None), (None, [0.2, 0.0, 0.2])])
def test_bad_statistics_are_refused(export_model, tmp_path, mean, std):
    _, path = export_model("micro-nyud")
    with pytest.raises(M3CError, match="1 or 3 finite numbers"):
        compile_model(path, out=tmp_path / "build", mean=mean, std=std)
    assert not (tmp_path / "build").exists()
