"""The fixed-point criterion that does not move with the user's types: a too-narrow data type
is refused by compile (naming the first layer that leaves the limits) and, written anyway with
--allow-inaccurate, FAILs `m3c verify build/`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from m3c.cli import main
from m3c.errors import NumericError
from m3c.project.compile import compile_model
from m3c.project.fidelity import (
    FEATURES_LIMIT,
    Fidelity,
    LayerRecorder,
    SaturationCounter,
    agreement,
    first_layer_off,
    relative_rmse,
)
from m3c.runtime.fixed import FixedType

NARROW = "types:\n  data: ap_fixed<8,3>\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The micro model trained on synthetic scenes: its activations reach ~9, past a data
    type of 3 integer bits (random weights stay within +-4 and would not show it)."""
    import m3c
    from m3c.frontend.models.train import load_or_train

    model = load_or_train("micro-nyud", gate="multi", quiet=True)
    folder = tmp_path_factory.mktemp("trained")
    (folder / "narrow.yaml").write_text(NARROW)
    return m3c.export(model, folder / "trained.onnx"), folder / "narrow.yaml"


def test_compile_refuses_a_too_narrow_type_naming_the_first_layer(trained, tmp_path):
    model, narrow = trained
    with pytest.raises(NumericError) as refused:
        compile_model(model, out=tmp_path / "build", precision_config=narrow)
    message = str(refused.value)
    assert "first at\n/model/" in message and "saturate" in message
    assert "--allow-inaccurate" in refused.value.remedy
    assert not (tmp_path / "build").exists()


def test_verify_fails_a_too_narrow_type_written_anyway(trained, tmp_path, capsys):
    from m3c.check.verify_project import project_passed, verify_project

    model, narrow = trained
    project = compile_model(model, out=tmp_path / "build", precision_config=narrow,
                            allow_inaccurate=True)
    rows = verify_project(project, oracle="ort")
    assert not project_passed(rows)
    assert all(row.kernel_error == 0.0 for row in rows)  # the C-simulation is still exact
    assert any(row.fidelity.saturated > 0 for row in rows)
    assert any(not row.fidelity.features <= FEATURES_LIMIT for row in rows)
    assert main(["--quiet", "verify", str(project), "--oracle", "ort"]) == 1
    table = capsys.readouterr().out
    assert "FAIL" in table and "(<= 25%)" in table and "(<= 0.1%)" in table


def test_verify_passes_the_default_types_of_the_same_model(trained, tmp_path):
    from m3c.check.verify_project import project_passed, verify_project

    project = compile_model(trained[0], out=tmp_path / "build")
    rows = verify_project(project, oracle="ort")
    assert project_passed(rows), [row.fidelity for row in rows]
    assert all(row.fidelity.saturated == 0 and row.fidelity.results > 0 for row in rows)


def test_the_measures_fail_on_nan_and_empty_inputs():
    assert relative_rmse(np.array([np.nan]), np.array([1.0])) == math.inf
    assert relative_rmse(np.array([]), np.array([])) == math.inf
    assert relative_rmse(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_rmse(np.array([1.1, 2.0]), np.array([1.0, 2.0])) == pytest.approx(
        0.1 / math.sqrt(5))
    scores = np.random.default_rng(0).standard_normal((1, 4, 3, 3))
    assert agreement(scores, scores) == 1.0
    assert agreement(np.full_like(scores, np.nan), scores) == 0.0
    nan_row = Fidelity("depth", False, math.nan, 0.0, 0, 10)
    assert not nan_row.passed
    assert not Fidelity("semseg", True, 1.0, 0.0, 0, 0).passed  # no result counted


def test_first_layer_off_finds_the_saturating_layer_before_a_drifting_one():
    data = FixedType.parse("ap_fixed<8,3>", "AP_RND_CONV", "AP_SAT")
    counter, fixed, floating = SaturationCounter(data), LayerRecorder(data), LayerRecorder()
    exact = np.arange(-20, 20, dtype=np.int64)  # codes well inside the type
    pinned = exact.copy()
    pinned[:5] = data.raw_max
    for layer, codes in (("a", exact), ("b", pinned), ("c", exact)):
        call = {"layer": layer}
        for observer in (counter, fixed):
            observer(call, "output", codes)
        floating(call, "output", exact * 2.0 ** -data.frac)
    assert first_layer_off(fixed, floating, counter) == ("b", "5 of its results saturate")
    assert counter.results == 3 * exact.size and counter.saturated == 5
