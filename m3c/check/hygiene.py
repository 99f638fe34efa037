"""HLS hygiene of a generated project's sources: what Vitis would build from them, checked
here as analyses returning findings (m3c.ir.analysis). The tests' `compiled` fixture runs
`hygiene_findings` on every project the suite compiles.

Every unit is a non-inlined function with one instance, every array above a few hundred bits
has the storage binding the estimate counts, every bound multiplier the binding the estimate
counts, each DDR buffer has its own bundle reached by unconditional accesses, and nothing in
the synthesis path computes in double.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from m3c.hw.design import Design
from m3c.hw.fit import unit_arrays
from m3c.hw.resources import MULTIPLIER_GROUPS, bind_memories
from m3c.hw.units import FUNCTIONS, HELPERS, LAYERS, UNITS
from m3c.ir.analysis import Finding

SYNTHESIS_SOURCES = ("kernel.cpp", "m3c_ops.h", "m3c_types.h", "m3c_tables.h")
PARTITIONED = r"array_partition variable={} type=complete dim=0"
SMALL_ARRAY_BITS = 512  # "a few hundred bits": smaller arrays may go where HLS puts them
INDEX_PRODUCTS = "index"  # memory.h.j2 index_product: always fabric (Memory.logic)


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
    return Design.of_project(manifest, kernel), manifest["budget"]


def declared_constants(source: str) -> dict[str, int]:
    """The sources' `constexpr int NAME = value;` constants."""
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
    names = {**declared_constants(source), "PORT_BITS": g.port_bits, "BANKS": g.banks,
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


def unit_findings(project: Path) -> list[Finding]:
    """The shared functions (the MAC array, the DDR loops, the router) are never inlined and
    have one instance each; the layer functions are inlined into their one call site, the
    top function's program loop, so the shared functions are all called from its scope;
    helpers that are part of a pipeline (window reads, the feed, the epilogue) are inlined
    into it on purpose."""
    source = _sources(project)
    bodies = _functions(source)
    findings = [Finding(name, "unit not defined in the sources")
                for name in sorted(set(FUNCTIONS + LAYERS) - set(bodies))]
    for name in sorted(set(FUNCTIONS) & set(bodies)):
        if "M3C_HLS(inline off)" not in bodies[name]:
            findings.append(Finding(name, "may be inlined into its callers"))
        if f"allocation function instances=m3c::{name} limit=1" not in source:
            findings.append(Finding(name, "no allocation limit of one instance"))
    kernel = (project / "hls/src/kernel.cpp").read_text()
    for name in sorted(set(LAYERS) & set(bodies)):
        if "M3C_HLS(inline off)" in bodies[name]:
            findings.append(Finding(name, "a layer function kept as a function: the shared "
                                          "functions it calls get an instance of their own"))
        if len(re.findall(rf"\bm3c::{name}\(", kernel)) > 1:
            findings.append(Finding(name, "called from more than one site of the program"))
    for name, body in bodies.items():
        if name not in FUNCTIONS + LAYERS + HELPERS and ("M3C_LOOP(" in body or
                                                          "pipeline" in body):
            findings.append(Finding(name, "a helper with a loop of its own (only units have)"))
    calls = {name: len(re.findall(rf"\b{name}(?:<[^>]*>)?\(", source)) - 1
             for name in FUNCTIONS + LAYERS}
    for shared in ("matmul", "mlp_tile"):  # shared by several callers
        if calls.get(shared, 0) <= 1:
            findings.append(Finding(shared, f"called from {calls.get(shared, 0)} site(s), "
                                            "expected several"))
    return findings


def storage_findings(project: Path) -> list[Finding]:
    """Every array above a few hundred bits has the storage binding the estimate counts."""
    source = _sources(project)
    design, budget = _design(project)
    bindings = {b.array.name: b for b in bind_memories(unit_arrays(design), design.target,
                                                       budget)}
    declared = _declared_arrays(source, design)
    pragmas = dict(re.findall(r"bind_storage variable=(\w+) type=\w+ impl=(\w+)", source))
    findings = []
    for variable, bits in declared.items():
        partitioned = re.search(PARTITIONED.format(variable), source)
        if bits <= SMALL_ARRAY_BITS or partitioned:
            continue
        if variable not in bindings:
            findings.append(Finding(variable, f"{bits} bits the estimate does not count"))
            continue
        binding = bindings[variable]
        if binding.storage != "registers" and pragmas.get(variable) != binding.impl:
            findings.append(Finding(variable, f"{bits} bits: kernel binds "
                                              f"{pragmas.get(variable)}, estimate counts "
                                              f"{binding.impl}"))
    counted = {name for name, b in bindings.items() if b.storage in ("bram18", "uram")}
    findings += [Finding(name, "estimated but never declared")
                 for name in sorted(counted - set(pragmas))]
    return findings


def ddr_and_arithmetic_findings(project: Path) -> list[Finding]:
    """No double in the synthesis path; a bundle per DDR buffer, accessed unconditionally."""
    findings = []
    for name in SYNTHESIS_SOURCES:
        path = project / "hls/src" / name
        if path.exists() and re.search(r"\bdouble\b", path.read_text()):
            findings.append(Finding(name, "computes in double"))
    kernel = (project / "hls/src/kernel.cpp").read_text()
    bundles = re.findall(r"interface mode=m_axi port=(\w+) bundle=(\w+)", kernel)
    if not len({bundle for _, bundle in bundles}) == len(bundles) == 3:
        findings.append(Finding("kernel.cpp", f"m_axi bundles {bundles}: expected one per "
                                              "DDR buffer, three in all"))
    # burst-friendly DDR: every m_axi access in a loop of its own, unconditional and sequential
    ops = (project / "hls/src/m3c_ops.h").read_text()
    for pointer in ("weights", "image", "features"):
        findings += [Finding("m3c_ops.h", f"conditional DDR access {access}")
                     for access in re.findall(rf"\b{pointer}\[[^\]]+\]", ops)
                     if "?" in access or "if" in access]
    return findings


def multiplier_findings(project: Path) -> list[Finding]:
    """Every multiplier bound in the code (bind_op op=mul) names its group (`// multipliers:
    group`, MULTIPLIER_GROUPS, or the memories' always-fabric index products) and has the
    binding the estimate counts for it (DSPs for the design's dsp_multipliers, else fabric);
    every group the estimate counts is bound in the code."""
    source = _sources(project)
    design, _ = _design(project)
    bound = re.findall(r"bind_op variable=(\w+) op=mul impl=(\w+)\)(?:\s*// multipliers: (\w+))?",
                       source)
    findings = []
    for variable, impl, group in bound:
        if group not in (*MULTIPLIER_GROUPS, INDEX_PRODUCTS):
            findings.append(Finding(variable, "a multiplier of no group the estimate counts"))
            continue
        counted = "dsp" if group in design.dsp_multipliers else "fabric"
        if impl != counted:
            findings.append(Finding(variable, f"{group} multiplier: kernel binds {impl}, "
                                              f"estimate counts {counted}"))
    counted_groups = {m.group for unit in UNITS for m in unit.multipliers(design) if m.count}
    findings += [Finding(group, "estimated but never bound in the code")
                 for group in sorted(counted_groups - {group for *_, group in bound})]
    return findings


def hygiene_findings(project: Path) -> list[Finding]:
    """Every finding of the analyses above."""
    return (unit_findings(project) + storage_findings(project)
            + ddr_and_arithmetic_findings(project) + multiplier_findings(project))
