"""Models written outside m3c.models, end to end as a user runs them (issue 26's suite): one
input named `x`, a router shared by both outputs (no `task` input), opset 18 Resize heads,
nn.MultiheadAttention, MoE forms m3c.models does not write; both torch exporters. Every
command PASSes or refuses with one clear line; none ends in an internal error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from moe_forms import UserViT, export_user

from m3c.cli import main

FORMS = [("dense_einsum", False), ("mixtral", False),
         pytest.param("deepseek", True, marks=pytest.mark.slow),
         pytest.param("dense_topk_loop", True, marks=pytest.mark.slow)]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--quiet", *argv])
    captured = capsys.readouterr()
    assert "internal error" not in captured.err, captured.err
    return code, captured.out, captured.err


@pytest.mark.parametrize("form, dynamo", FORMS)
def test_a_model_of_ones_own_through_every_command(tmp_path, capsys, form, dynamo):
    model = UserViT(form)
    path = export_user(model, tmp_path / f"{form}.onnx", dynamo=dynamo)
    assert _cli(capsys, "verify", str(path), "--oracle", "ort")[0] == 0
    build = tmp_path / "build"
    assert _cli(capsys, "compile", str(path), "-o", str(build))[0] == 0
    manifest = json.loads((build / "project.json").read_text())
    assert manifest["tasks"] == ["semseg", "depth"] and manifest["routers_read_task"] is False

    code, out, _ = _cli(capsys, "verify", str(build), "--images", "3", "--oracle", "ort")
    assert code == 0 and "semseg" in out and "depth" in out  # every output verified

    # Images with labels the model's own way: pictures drawn by its own float forward.
    rng = np.random.default_rng(3)
    images = rng.standard_normal((4, 3, model.image, model.image)).astype(np.float32)
    np.save(tmp_path / "val.npy", images)
    labels = tmp_path / "labels"
    labels.mkdir()
    import torch

    with torch.no_grad():  # the model takes one image at a time
        outputs = [model(torch.from_numpy(image[None])) for image in images]
    semseg = np.concatenate([out[0].argmax(1).numpy() for out in outputs])
    depth = np.concatenate([out[1][:, 0].numpy() for out in outputs])
    np.save(labels / "semseg.npy", semseg)
    np.save(labels / "depth.npy", depth)
    code, out, err = _cli(capsys, "evaluate", str(build), "--images", str(tmp_path / "val.npy"),
                        "--labels", str(labels), "--workers", "1", "--no-plots",
                        "-o", str(tmp_path / "evaluation"))
    assert code == 0, err
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    figures = report["projects"][0]["tasks"]
    assert figures["semseg"]["miou"] > 0.9 and figures["semseg"]["pixel_agreement"] > 0.99
    assert figures["depth"]["rmse"] < 0.05 * float(np.sqrt(np.mean(depth ** 2)))

    assert _cli(capsys, "simulate", str(build), "--images", str(tmp_path / "val.npy"))[0] == 0
    picture = tmp_path / "one.npy"
    np.save(picture, images[0])
    code, out, _ = _cli(capsys, "run", str(build), "--image", str(picture), "--all-tasks",
                        "-o", str(tmp_path / "maps"))
    assert code == 0 and "FAIL" not in out
    assert sorted(p.stem for p in (tmp_path / "maps").glob("*.npy")) == ["depth", "semseg"]


def test_heads_narrower_than_a_bank_word_are_refused_in_fixed_and_run_in_float(tmp_path,
                                                                               capsys):
    # dim 24 over 4 heads: 6-element heads; a bank word holds 4 16-bit lanes, or 2 in fp32
    path = export_user(UserViT("topk_loop", dim=24, heads=4), tmp_path / "six.onnx",
                       dynamo=False)
    code, _, err = _cli(capsys, "compile", str(path), "-o", str(tmp_path / "fixed"))
    assert code == 2 and "heads of 6 elements" in err and "/attn/" in err
    assert not (tmp_path / "fixed").exists()
    build = tmp_path / "float"
    assert _cli(capsys, "compile", str(path), "-o", str(build), "--precision", "float")[0] == 0
    code, out, _ = _cli(capsys, "verify", str(build), "--oracle", "ort")
    assert code == 0 and "PASS" in out
