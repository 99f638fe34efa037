"""HLS hygiene (tests/hygiene.py) on projects of each kind; the `compiled` fixture also
applies it to every project the suite compiles."""

from __future__ import annotations

import json

import pytest
from hygiene import check_ddr_and_arithmetic, check_storage, check_units

from m3c.estimate import Design, Precision
from m3c.target import load_target

PROJECTS = [("micro-nyud", "multi", "fixed"), ("micro-pascal", "task", "fixed"),
            ("micro-nyud", "task", "float")]


@pytest.mark.parametrize("preset, gate, precision", PROJECTS)
def test_every_unit_is_one_non_inlined_instance(compiled, preset, gate, precision):
    check_units(compiled(preset, gate, precision)[1])


@pytest.mark.parametrize("preset, gate, precision", PROJECTS)
def test_every_large_array_has_the_storage_the_estimate_counts(compiled, preset, gate, precision):
    check_storage(compiled(preset, gate, precision)[1])


@pytest.mark.parametrize("preset, gate, precision", PROJECTS)
def test_no_double_and_a_bundle_per_buffer(compiled, preset, gate, precision):
    check_ddr_and_arithmetic(compiled(preset, gate, precision)[1])


def test_sums_wider_than_the_dsp_cascade_cost_fabric_adders():
    from m3c.estimate import DSP_ACC_BITS, calls_for_config, unit_logic
    from m3c.models.config import preset

    _, capacities = calls_for_config(json.loads(preset("tiny-cityscapes").to_json()))
    target = load_target("zcu104")
    narrow = Design(target, capacities, (32, 16), Precision(16, 16, 40, 18, False))
    wide = Design(target, capacities, (32, 16), Precision(24, 16, 56, 18, False))
    assert narrow.sizes["SUM_BITS"] <= DSP_ACC_BITS < wide.sizes["SUM_BITS"]
    macs = narrow.geometry.macs
    extra = unit_logic(wide)["matmul"].lut - unit_logic(narrow)["matmul"].lut
    assert extra >= macs * wide.sizes["SUM_BITS"]
