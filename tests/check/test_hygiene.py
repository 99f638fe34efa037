"""HLS hygiene (m3c/check/hygiene.py) on projects of each kind; the `compiled` fixture also
applies it to every project the suite compiles."""

from __future__ import annotations

import json

import pytest

from m3c.check.hygiene import (
    ddr_and_arithmetic_findings,
    declared_constants,
    hygiene_findings,
    storage_findings,
    unit_findings,
)
from m3c.hw.design import Design

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


@pytest.mark.parametrize("precision", ["fixed", "int8"])
def test_the_reduction_cost_follows_the_chains_the_code_declares(compiled, precision):
    """The estimate's fabric of the array's column sums (Matmul.reduction) is that of the
    chains the generated mac_row declares: a chain of CHAIN stages per key group whose adds
    are the DSPs' (none in fabric), one SUM_BITS adder per key group and column (finish_row)
    and, packed, per chain of PACKED_CHAIN DSPs its separation (CHAIN8_BITS) and the adders
    of the two running sums, and the operand muxes of every DSP (A's, and B's when 16-bit
    operands take A)."""
    import math
    import re

    from m3c.hw.resources import DSP_A_BITS, DSP_B_BITS
    from m3c.hw.units.shared import Matmul

    _, project = compiled("micro-nyud", precision=precision)
    manifest = json.loads((project / "project.json").read_text())
    kernel = json.loads((project / "kernel.json").read_text())
    design = Design.of_project(manifest, kernel)
    g = design.geometry
    source = (project / "hls/src/m3c_ops.h").read_text()
    c = declared_constants(source)
    assert c["CHAIN"] == g.chain == c["GROUP_K"] and c["TK"] == g.chain * c["SCORE_GROUPS"]
    stage = "dsp[g][u - 1][q]) +" if g.packed else "chain[g][u - 1][j]) +"
    assert stage in source  # a stage adds onto the stage above: the cascade
    expected = g.tm * c["SCORE_GROUPS"] * c["SUM_BITS"]
    if g.packed:
        columns = g.tm // 2 * c["SCORE_GROUPS"]
        ends = math.ceil(c["CHAIN"] / c["PACKED_CHAIN"])
        growth = math.ceil(math.log2(c["CHAIN"]))
        low = c["X_BITS"] + c["LANE_BITS"] + growth
        runs = c["CHAIN8_BITS"] + low + (c["CHAIN8_BITS"] + growth) + low  # + the low's mux
        wide = re.search(r"#define M3C_WIDE_OPERANDS (\d)", source).group(1) == "1"
        assert wide == g.wide_operands
        # A chooses by mode (the packed pair or the pass's weight); B too when it is wide
        expected += columns * ends * runs + g.dsps * (DSP_A_BITS + wide * DSP_B_BITS)
    assert Matmul.reduction(design).lut == expected
    assert Matmul.reduction(Design(design.target, design.capacities, design.tiles)).lut == 0


@pytest.mark.parametrize("source, before, after, where", [
    ("m3c_ops.h", "M3C_HLS(inline off)", "M3C_HLS(inline)", "matmul"),
    ("kernel.cpp", "instances=m3c::matmul limit=1", "instances=m3c::matmul limit=2", "matmul"),
    ("m3c_ops.h", "}  // namespace m3c", "inline double twice(double x) { return 2 * x; }\n}",
     "m3c_ops.h"),
    ("kernel.cpp", "bundle=gmem_in", "bundle=gmem_w", "kernel.cpp"),
    ("m3c_ops.h", "impl=fabric)  // multipliers: gelu", "impl=dsp)  // multipliers: gelu",
     "product"),
    ("m3c_ops.h", "impl=fabric)  // multipliers: gate", "impl=fabric)", "gated"),
    ("m3c_ops.h", "impl=fabric)  // multipliers: square", "impl=fabric)  // multipliers: sq",
     "square"),
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
