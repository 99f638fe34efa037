"""`m3c verify build/ --images N`: does a fixed-point project hold on images it never saw?

The fresh images go through the kernel's bit-exact emulation and the host heads, against
onnxruntime on the original model; the verdict is the encoder error all but a few routing-flipped
tokens stay within, and saturation is counted per layer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from m3c.check.fresh import verify_fresh_images
from m3c.check.metrics import ROUTING_FLIP_SHARE, encoder_error
from m3c.cli import main
from m3c.errors import CodegenError
from m3c.project.compile import compile_model
from m3c.project.fidelity import FEATURES_LIMIT


@pytest.fixture(scope="module")
def fixed_project(compiled):
    return compiled("micro-nyud", "multi", "fixed")[1]


def test_fresh_synthetic_scenes_pass_and_are_reported(fixed_project, capsys):
    assert main(["verify", str(fixed_project), "--images", "3", "--oracle", "ort"]) == 0
    out = capsys.readouterr().out
    assert "fresh images: 3 synthetic scenes" in out
    rows, saturation, _ = verify_fresh_images(fixed_project, 3)
    assert [row.task for row in rows] == ["semseg", "depth"]
    for row in rows:
        assert row.images == 3 and row.passed
        assert 0 < row.fidelity.features <= FEATURES_LIMIT and row.fidelity.results > 0
    assert saturation == {} and all(row.fidelity.saturated == 0 for row in rows)


def test_images_louder_than_the_calibration_fail_with_saturation(fixed_project, tmp_path,
                                                                 capsys):
    shape = json.loads((fixed_project / "project.json").read_text())["image_shape"]
    loud = np.random.default_rng(5).standard_normal((2, *shape[1:])).astype(np.float32) * 25
    np.save(tmp_path / "loud.npy", loud)
    assert main(["verify", str(fixed_project), "--images", str(tmp_path / "loud.npy"),
                 "--oracle", "ort"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out.splitlines()[-1]
    rows, saturation, _ = verify_fresh_images(fixed_project, str(tmp_path / "loud.npy"))
    assert all(not row.passed for row in rows)
    assert sum(saturation.values()) > 0


def test_a_model_takes_only_a_count(export_model, tmp_path, capsys):
    _, path = export_model("micro-nyud", "multi")
    assert main(["verify", str(path), "--images", str(tmp_path / "x.npy")]) == 2
    assert "a model is verified on random images" in capsys.readouterr().err


def test_a_few_routing_flipped_tokens_are_allowed_and_no_more():
    rng = np.random.default_rng(0)
    want = rng.standard_normal((1, 200, 16))
    got = want + 1e-3
    flipped = int(200 * ROUTING_FLIP_SHARE)
    got[0, :flipped] += 1.0
    judged, worst = encoder_error(got, want, [1, 200, 16], "features")
    assert judged == pytest.approx(1e-3) and worst == pytest.approx(1.0 + 1e-3)
    got[0, flipped] += 1.0  # one token more than a router's near-ties explain
    assert encoder_error(got, want, [1, 200, 16], "features")[0] > 1.0
    got[0, -1, 0] = np.nan
    assert encoder_error(got, want, [1, 200, 16], "features") == (np.inf, np.inf)


def test_headroom_widens_the_activation_type(export_model, tmp_path):
    _, path = export_model("micro-nyud", "multi")
    integers = []
    for headroom in (1, 8):
        config = tmp_path / f"headroom{headroom}.json"
        config.write_text(json.dumps({"headroom": headroom}))
        project = compile_model(path, out=tmp_path / f"h{headroom}", precision_config=config)
        manifest = json.loads((project / "project.json").read_text())
        assert manifest["calibration_headroom"] == headroom
        integers.append(manifest["types"]["data"]["integer"])
    assert integers[1] == integers[0] + 3


@pytest.mark.parametrize("headroom", [0.5, "wide", True])
def test_bad_headroom_is_refused(export_model, tmp_path, headroom):
    _, path = export_model("micro-nyud", "multi")
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"headroom": headroom}))
    with pytest.raises(CodegenError, match="headroom"):
        compile_model(path, out=tmp_path / "b", precision_config=config)


def test_eight_bit_layers_pass_the_same_limits(compiled, capsys):
    """int8 moves the encoder features further from float than 16-bit does, yet both are held
    to the same limits, which do not depend on the types."""
    rows = {precision: verify_fresh_images(compiled("micro-nyud", "multi", precision)[1], 2)[0]
            for precision in ("fixed", "int8")}
    for task_rows in rows.values():
        assert all(row.passed for row in task_rows)
    assert all(eight.fidelity.features > sixteen.fidelity.features
               for eight, sixteen in zip(rows["int8"], rows["fixed"], strict=True))
    project = compiled("micro-nyud", "multi", "int8")[1]
    assert main(["verify", str(project), "--images", "2", "--oracle", "ort"]) == 0
    assert "(<= 25%)" in capsys.readouterr().out
