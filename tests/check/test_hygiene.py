"""HLS hygiene (m3c/check/hygiene.py) on projects of each kind; the `compiled` fixture also
applies it to every project the suite compiles."""

from __future__ import annotations

import json

import pytest

from m3c.check.hygiene import (
    ddr_and_arithmetic_findings,
    hygiene_findings,
    storage_findings,
    unit_findings,
)
from m3c.hw.design import Design, Precision
from m3c.hw.target import load_target

PROJECTS = [("micro-nyud", "multi", "fixed"), ("micro-pascal", "task", "fixed"),
            ("micro-nyud", "task", "float")]


@pytest.mark.parametrize("preset, gate, precision", PROJECTS)
def test_every_unit_is_one_non_inlined_instance(compiled, preset, gate, precision):
    assert unit_findings(compiled(preset, gate, precision)[1]) == []


@pytest.mark.parametrize("preset, gate, precision", PROJECTS)
def test_every_large_array_has_the_storage_the_estimate_counts(compiled, preset, gate, precision):
    assert storage_findings(compiled(preset, gate, precision)[1]) == []


@pytest.mark.parametrize("preset, gate, precision", PROJECTS)
def test_no_double_and_a_bundle_per_buffer(compiled, preset, gate, precision):
    assert ddr_and_arithmetic_findings(compiled(preset, gate, precision)[1]) == []


def test_fixed_point_sums_cost_a_fabric_adder_tree_as_wide_as_the_sums():
    """Each column's products add up in an adder tree of SUM_BITS-wide fabric adders (HLS
    balances `part += x * w` into a tree, not a DSP cascade), wider sums costing more."""
    from m3c.frontend.models.config import preset
    from m3c.hw.configs import calls_for_config
    from m3c.hw.units.shared import Matmul

    _, capacities = calls_for_config(json.loads(preset("tiny-cityscapes").to_json()))
    target = load_target("zcu104")
    narrow = Design(target, capacities, (32, 16), Precision(16, 16, 40, 18, False))
    wide = Design(target, capacities, (32, 16), Precision(24, 16, 56, 18, False))
    for design in (narrow, wide):
        adders = (32 - design.sizes["SCORE_GROUPS"]) * 16
        assert Matmul.reduction(design).lut == adders * design.sizes["SUM_BITS"]
    assert Matmul.reduction(wide).lut > Matmul.reduction(narrow).lut
    assert Matmul.reduction(Design(target, capacities, (32, 16))).lut == 0  # fp32: in the DSPs


@pytest.mark.parametrize("source, before, after, where", [
    ("m3c_ops.h", "M3C_HLS(inline off)", "M3C_HLS(inline)", "matmul"),
    ("kernel.cpp", "instances=m3c::matmul limit=1", "instances=m3c::matmul limit=2", "matmul"),
    ("m3c_ops.h", "}  // namespace m3c", "inline double twice(double x) { return 2 * x; }\n}",
     "m3c_ops.h"),
    ("kernel.cpp", "bundle=gmem_in", "bundle=gmem_w", "kernel.cpp"),
])
def test_each_injected_defect_is_found(compiled, tmp_path, source, before, after, where):
    """The analyses can fail: a copy of a clean project with one defect injected has a finding
    at the place of the defect."""
    import shutil

    project = tmp_path / "project"
    shutil.copytree(compiled("micro-nyud", "multi", "fixed")[1], project,
                    ignore=shutil.ignore_patterns("intermediate", "weights"))
    path = project / "hls/src" / source
    text = path.read_text()
    assert before in text
    path.write_text(text.replace(before, after))
    assert where in {finding.where for finding in hygiene_findings(project)}
