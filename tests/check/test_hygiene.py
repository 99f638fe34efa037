"""HLS hygiene (m3c/check/hygiene.py) on projects of each kind; the `compiled` fixture also
applies it to every project the suite compiles."""

from __future__ import annotations

import json
import re

import pytest

from m3c.check.hygiene import (
    ddr_and_arithmetic_findings,
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


def _declared_tree(source: str, name: str, base: int, pairs: int) -> int:
    """LUTs (one a bit) of the fabric levels (2 on) of the product tree `name` as the generated
    code declares them: per level its adders (half the values of the level below, `pairs` at
    level 1, the DSP pairs) at the level's width, `base` + level."""
    counts = {1: pairs}
    pattern = rf"typedef M3C_PART_T\(\w+ \+ (\d+)\) {name}\1_t;\s*{name}\1_t {name}\1\[(\d+)\]"
    counts.update({int(level): int(count) for level, count in re.findall(pattern, source)})
    assert len(counts) > 1, name
    return sum(counts[k - 1] // 2 * (base + k) for k in sorted(counts) if k > 1)


@pytest.mark.parametrize("precision", ["fixed", "int8"])
def test_the_reduction_cost_is_the_tree_the_code_declares(compiled, precision):
    """The estimate's fabric adders of the array's column sums (Matmul.reduction) are those of
    the trees the generated mac_row declares, level by level at their widths, plus one
    SUM_BITS adder per key group and column onto the running sum (and, packed, the operand
    muxes and product split of every DSP)."""
    from m3c.hw.units.shared import PACK_LUT_PER_DSP, Matmul

    _, project = compiled("micro-nyud", precision=precision)
    manifest = json.loads((project / "project.json").read_text())
    kernel = json.loads((project / "kernel.json").read_text())
    design = Design.of_project(manifest, kernel)
    g, sizes = design.geometry, design.sizes
    source = (project / "hls/src/m3c_ops.h").read_text()
    product = sizes["X_BITS"] + g.lane_bits
    groups, pairs = sizes["SCORE_GROUPS"], (sizes["GROUP_K"] + 1) // 2
    if g.packed:
        trees = g.tm // 2 * groups * (_declared_tree(source, "low", product, pairs)
                                      + _declared_tree(source, "high", 17, pairs))
        pack = g.dsps * PACK_LUT_PER_DSP
    else:
        trees = g.tm * groups * _declared_tree(source, "level", product, pairs)
        pack = 0
    assert Matmul.reduction(design).lut == trees + g.tm * groups * sizes["SUM_BITS"] + pack
    assert Matmul.reduction(Design(design.target, design.capacities, design.tiles)).lut == 0


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
