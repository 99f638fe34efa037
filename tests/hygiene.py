"""HLS hygiene of generated sources: what Vitis would build from them, checked here. The
`compiled` fixture runs `check` on every project the suite compiles.

Every unit is a non-inlined function with one instance, every array above a few hundred bits
has the storage binding the estimate counts, each DDR buffer has its own bundle reached by
unconditional accesses, and nothing in the synthesis path computes in double.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from m3c.compile import UNITS
from m3c.estimate import Design, Precision, bind_memories, unit_arrays
from m3c.target import load_target

SYNTHESIS_SOURCES = ("kernel.cpp", "m3c_ops.h", "m3c_types.h", "m3c_tables.h")
PARTITIONED = r"array_partition variable={} type=complete dim=0"
SMALL_ARRAY_BITS = 512  # "a few hundred bits": smaller arrays may go where HLS puts them


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
                    manifest["row_tile"], manifest["query_tile"])
    return design, manifest["budget"]


def _constants(source: str) -> dict[str, int]:
    return {name: int(value) for name, value in
            re.findall(r"constexpr int (\w+) = (-?\d+);", source)}


def _declared_arrays(source: str, design: Design) -> dict[str, int]:
    """Array variable -> bits, for every array the sources declare (sizes evaluated)."""
    p, g = design.precision, design.geometry
    sizes = design.sizes
    widths = {"data_t": p.data, "weight_t": p.weight, "acc_t": p.acc, "prob_t": p.prob,
              "logit_t": p.logit, "recip_t": p.prob + 6, "norm_t": 24, "int": 32, "bool": 1,
              "bank_t": 64, "lane_t": g.lane_bits, "word_t": g.port_bits,
              "mac_w_t": g.lane_bits, "mac_x_t": sizes["X_BITS"], "mac_sum_t": sizes["SUM_BITS"]}
    names = {**_constants(source), "PORT_BITS": g.port_bits, "BANKS": g.banks,
             "PORT_LANES": g.port_lanes, "LANES": g.lanes}
    arrays = {}
    declaration = r"^\s*(?:static )?(?:m3c::)?(\w+) (\w+)((?:\[[^\]]+\])+);"
    for type_name, variable, dims in re.findall(declaration, source, re.M):
        if type_name not in widths:
            continue
        elements = 1
        for dim in re.findall(r"\[([^\]]+)\]", dims):
            if not re.fullmatch(r"[\w\s*+/-]+", dim.replace("m3c::", "")):
                continue
            elements *= eval(dim.replace("m3c::", ""), {}, dict(names))  # noqa: S307
        arrays[variable] = elements * widths[type_name]
    return arrays


def check_units(project: Path) -> None:
    """The units (functions with their own loops or dataflow) are never inlined and have one
    instance each however many call sites they have; helpers that are part of a unit's
    pipeline (window reads, the feed, the epilogue) are inlined into it on purpose."""
    source = _sources(project)
    bodies = _functions(source)
    assert set(UNITS) <= set(bodies)
    for name in UNITS:
        assert "M3C_HLS(inline off)" in bodies[name], f"{name} may be inlined into its callers"
        assert f"allocation function instances=m3c::{name} limit=1" in source, name
    for name, body in bodies.items():
        if name not in UNITS:  # a helper: no loop of its own that would need a pipeline
            assert "M3C_LOOP(" not in body and "pipeline" not in body, name
    calls = {name: len(re.findall(rf"\b{name}(?:<[^>]*>)?\(", source)) - 1 for name in UNITS}
    assert calls["matmul"] > 1 and calls["mlp_tile"] > 1  # shared by several callers


def check_storage(project: Path) -> None:
    """Every array above a few hundred bits has the storage binding the estimate counts."""
    source = _sources(project)
    design, budget = _design(project)
    bindings = {b.array.name: b for b in bind_memories(unit_arrays(design), design.target,
                                                       budget)}
    declared = _declared_arrays(source, design)
    pragmas = dict(re.findall(r"bind_storage variable=(\w+) type=\w+ impl=(\w+)", source))
    for variable, bits in declared.items():
        partitioned = re.search(PARTITIONED.format(variable), source)
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


def check_ddr_and_arithmetic(project: Path) -> None:
    """No double in the synthesis path; a bundle per DDR buffer, accessed unconditionally."""
    for name in SYNTHESIS_SOURCES:
        path = project / "hls/src" / name
        if path.exists():
            assert not re.search(r"\bdouble\b", path.read_text()), f"double in {name}"
    kernel = (project / "hls/src/kernel.cpp").read_text()
    bundles = re.findall(r"interface mode=m_axi port=(\w+) bundle=(\w+)", kernel)
    assert len({bundle for _, bundle in bundles}) == len(bundles) == 3  # a bundle per buffer
    # burst-friendly DDR: every m_axi access in a loop of its own, unconditional and sequential
    ops = (project / "hls/src/m3c_ops.h").read_text()
    for pointer in ("weights", "image", "features"):
        for access in re.findall(rf"\b{pointer}\[[^\]]+\]", ops):
            assert "?" not in access and "if" not in access, access


def check(project: Path) -> None:
    check_units(project)
    check_storage(project)
    check_ddr_and_arithmetic(project)
