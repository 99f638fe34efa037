"""HLS hygiene of the generated sources: what Vitis would build from them, checked here.

Every unit is a non-inlined function with one instance, every array above a few hundred bits
has the storage binding the estimate counts, no buffer is reached through two bundles without
an alias declaration, and nothing in the synthesis path computes in double.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from m3c.estimate import Design, Precision, bind_memories, unit_arrays
from m3c.target import load_target

SYNTHESIS_SOURCES = ("kernel.cpp", "m3c_ops.h", "m3c_types.h", "m3c_tables.h")
SMALL_ARRAY_BITS = 512  # "a few hundred bits": smaller arrays may go where HLS puts them
PROJECTS = [("micro-nyud", "multi", "fixed"), ("micro-pascal", "task", "fixed"),
            ("micro-nyud", "task", "float")]


def _sources(project: Path) -> str:
    return "\n".join((project / "hls/src" / name).read_text()
                     for name in SYNTHESIS_SOURCES if (project / "hls/src" / name).exists())


def _functions(source: str) -> dict[str, str]:
    """Body of every `inline void` unit, by name (up to the next top-level closing brace)."""
    bodies = {}
    for match in re.finditer(r"^(?:template <[^>]*>\n)?inline void (\w+)\(", source, re.M):
        end = source.index("\n}\n", match.end())
        bodies[match.group(1)] = source[match.end():end]
    return bodies


def _design(project: Path) -> tuple[Design, float]:
    manifest = json.loads((project / "project.json").read_text())
    kernel = json.loads((project / "kernel.json").read_text())
    design = Design(load_target(manifest["target"]), kernel["capacities"],
                    tuple(manifest["tiles"]), Precision.from_types(manifest["types"]),
                    manifest["query_block"], manifest["token_block"])
    return design, manifest["budget"]


def _constants(source: str) -> dict[str, int]:
    return {name: int(value) for name, value in
            re.findall(r"constexpr int (\w+) = (-?\d+);", source)}


def _declared_arrays(source: str, design: Design) -> dict[str, int]:
    """Array variable -> bits, for every array the sources declare (sizes evaluated)."""
    p = design.precision
    widths = {"data_t": p.data, "weight_t": p.weight, "acc_t": p.acc, "prob_t": p.prob,
              "logit_t": p.logit, "int": 32, "bool": 1}
    names = {**_constants(source), "TILE_OUT": design.tiles[1], "TILE_IN": design.tiles[0],
             "EXPERT_LANES": design.tiles[1]}
    arrays = {}
    declaration = r"^\s*(?:static )?(\w+) (\w+)((?:\[[^\]]+\])+);"
    for type_name, variable, dims in re.findall(declaration, source, re.M):
        if type_name not in widths:
            continue
        elements = 1
        for dim in re.findall(r"\[([^\]]+)\]", dims):
            elements *= eval(dim.replace("m3c::", ""), {}, dict(names))  # noqa: S307
        arrays[variable] = elements * widths[type_name]
    return arrays


@pytest.mark.parametrize("preset, gate, precision", PROJECTS)
def test_every_unit_is_one_non_inlined_instance(compiled, preset, gate, precision):
    _, project = compiled(preset, gate, precision)
    source = _sources(project)
    units = _functions(source)
    assert {"linear", "attention", "expert_ffn", "load_expert", "compute_expert"} <= set(units)
    for name, body in units.items():
        assert "M3C_HLS(inline off)" in body, f"{name} may be inlined into its callers"
    calls = {name: len(re.findall(rf"\b{name}(?:<[^>]*>)?\(", source)) - 1 for name in units}
    shared = {name for name, count in calls.items() if count > 1}
    assert {"load_expert", "compute_expert", "linear"} <= shared
    for name in shared:
        assert f"allocation function instances=m3c::{name} limit=1" in source, (
            f"{name} has {calls[name]} call sites and no single-instance directive")


@pytest.mark.parametrize("preset, gate, precision", PROJECTS)
def test_every_large_array_has_the_storage_the_estimate_counts(compiled, preset, gate, precision):
    _, project = compiled(preset, gate, precision)
    source = _sources(project)
    design, budget = _design(project)
    bindings = {b.array.name: b for b in bind_memories(unit_arrays(design), design.target,
                                                       budget)}
    declared = _declared_arrays(source, design)
    pragmas = dict(re.findall(r"bind_storage variable=(\w+) type=\w+ impl=(\w+)", source))
    for variable, bits in declared.items():
        partitioned = re.search(rf"array_partition variable={variable} type=complete dim=0",
                                source)
        if bits <= SMALL_ARRAY_BITS or partitioned:
            continue
        assert variable in bindings, f"the estimate does not count array {variable}"
        binding = bindings[variable]
        if binding.storage == "registers":
            continue
        assert pragmas.get(variable) == binding.impl, (
            f"{variable} ({bits} bits): kernel binds {pragmas.get(variable)}, estimate counts "
            f"{binding.impl}")
    counted = {name for name, b in bindings.items() if b.storage in ("bram18", "uram")}
    assert counted <= set(pragmas), f"estimated but never declared: {counted - set(pragmas)}"


@pytest.mark.parametrize("preset, gate, precision", PROJECTS)
def test_no_double_and_no_undeclared_aliasing(compiled, preset, gate, precision):
    _, project = compiled(preset, gate, precision)
    for name in SYNTHESIS_SOURCES:
        path = project / "hls/src" / name
        if path.exists():
            assert not re.search(r"\bdouble\b", path.read_text()), f"double in {name}"
    kernel = (project / "hls/src/kernel.cpp").read_text()
    ports = dict(re.findall(r"interface mode=m_axi port=(\w+) bundle=\w+ offset=slave "
                            r"depth=(\d+)", kernel))
    assert ports["act_in"] == ports["act_out"]  # one buffer, declared as such
    assert "alias ports=act_in,act_out distance=0" in kernel
    header = (project / "hls/src/kernel.h").read_text()
    testbench = (project / "hls/tb/testbench.cpp").read_text()
    assert "arena.data(), arena.data()" in testbench and "act_in" in header


def test_accumulators_wider_than_the_dsp_cascade_cost_fabric_adders():
    from m3c.estimate import DSP_ACC_BITS, _macs

    narrow = Precision(data=16, weight=16, acc=DSP_ACC_BITS, prob=18, floating=False)
    wide = Precision(data=16, weight=16, acc=DSP_ACC_BITS + 1, prob=18, floating=False)
    assert _macs(10, wide).dsp == _macs(10, narrow).dsp == 10
    assert _macs(10, wide).lut - _macs(10, narrow).lut >= 10 * DSP_ACC_BITS
