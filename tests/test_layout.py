"""The package's layout holds: no import circles, stage packages depending downwards only, no
private names across modules, every pass module a listed pass, every quoted repository path
present, and each hardware unit's parts (class, template, emulation, memories) in agreement."""

from __future__ import annotations

import ast
import json
import re

import networkx as nx
import pytest
from layout_graph import REPO, ROOTS, import_graph, modules

import m3c
import m3c.passes
from m3c.frontend.models.config import preset
from m3c.hw import units
from m3c.hw.configs import calls_for_config
from m3c.hw.design import Design
from m3c.hw.memories import MEMORIES, MEMORY_ARGS
from m3c.hw.target import load_target
from m3c.runtime import emulator

# Stage packages from the bottom up: a module may import its own package and those below it.
LAYERS = ["m3c.errors", "m3c.progress", "m3c.runtime", "m3c.ir", "m3c.frontend", "m3c.lowering",
          "m3c.passes", "m3c.hw", "m3c.templates", "m3c.project", "m3c.check", "m3c.api",
          "m3c.commands", "m3c.cli"]
# The runtime's csim backend builds the kernel with m3c's g++ driver; the board copy of the
# runtime never takes that path (tests/runtime/test_runtime.py runs it without m3c).
UPWARD = {("m3c.runtime.accelerator", "m3c.project.csim")}


def _layer(module: str) -> int | None:
    for index, package in enumerate(LAYERS):
        if module == package or module.startswith(package + "."):
            return index
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 80  # every module was read
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], f"import cycles: {cycles[:5]}"


def test_the_cycle_test_sees_a_lazy_import_cycle(tmp_path, monkeypatch):
    """The graph counts an import inside a function: a planted one closes a circle."""
    import layout_graph

    package = tmp_path / "m3c"
    package.mkdir()
    (package / "a.py").write_text("def f():\n    from m3c import b\n")
    (package / "b.py").write_text("from m3c.a import f\n")
    monkeypatch.setattr(layout_graph, "ROOTS", {"m3c": package})
    assert list(nx.simple_cycles(layout_graph.import_graph()))


def test_stage_packages_depend_only_downwards():
    upward = []
    for source, target in import_graph().edges:
        low, high = _layer(target), _layer(source)
        if low is not None and high is not None and low > high and (source, target) not in UPWARD:
            upward.append((source, target))
    assert upward == []


def test_no_private_name_is_imported_across_modules():
    found = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("m3c"):
                found += [f"{module}: {alias.name} from {node.module}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert found == []


def test_every_module_in_passes_is_a_listed_pass():
    listed = {step.__module__ for step in m3c.passes.PIPELINE if isinstance(step, type)}
    files = {f"m3c.passes.{path.stem}" for path in (REPO / "passes").glob("*.py")
             if path.stem != "__init__"}
    assert files == listed


QUOTED_PATH = re.compile(r"(?<![\w/.~-])((?:m3c|passes|runtime|templates|tests|benchmarks|docs)/"
                         r"[\w./-]*\w)")
QUOTED_MODULE = re.compile(r"(?<![\w/.])m3c(?:\.[a-z_]\w*)+")
# m3c.<name> that are not modules: the API, the export's metadata keys, the overlay's files.
NOT_MODULES = {*m3c.__all__, "tasks", "config", "preprocess", "features_tensor", "producer", "bit",
               "hwh", "bd"}


def _quoted_texts():
    for root in (*ROOTS.values(),):
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".j2", ".md", ".h", ".tcl", ".cfg"):
                yield path, path.read_text()


def _module_exists(dotted: str) -> bool:
    """A dotted m3c name is a module, or an attribute of one."""
    known = set(modules())
    parts = dotted.split(".")
    if parts[1] in NOT_MODULES:
        return True
    return any(".".join(parts[:end]) in known for end in range(len(parts), 1, -1))


def test_every_quoted_repository_path_exists():
    missing = []
    for path, text in _quoted_texts():
        for quoted in QUOTED_PATH.findall(text):
            target = REPO / quoted
            if not (target.exists() or target.with_suffix(".py").exists() or "*" in quoted):
                missing.append(f"{path.relative_to(REPO)}: {quoted}")
        for dotted in QUOTED_MODULE.findall(text):
            if not _module_exists(dotted):
                missing.append(f"{path.relative_to(REPO)}: {dotted}")
    assert missing == []


def test_every_kernel_op_has_one_unit_and_one_emulation():
    assert sorted(units.OPS) == sorted(emulator.OPS)
    ops = [op for unit in units.UNITS for op in unit.ops]
    assert len(ops) == len(set(ops))


@pytest.mark.parametrize("unit", units.UNITS, ids=lambda unit: unit.name)
def test_each_unit_has_its_template_and_functions(unit):
    template = REPO / "templates" / unit.template
    assert template.is_file()
    text = template.read_text()
    for function in unit.functions + unit.layers:
        assert re.search(rf"\binline void {function}\(", text), function
    if unit.template.startswith("hls/units/"):
        ops_header = (REPO / "templates/hls/kernel/m3c_ops.h.j2").read_text()
        assert f'{{% include "{unit.template}" %}}' in ops_header


def test_the_memories_are_declared_passed_and_bound_from_the_one_list(compiled):
    """A compiled project's top function declares exactly the listed memories, every unit
    function takes them, and every memory a unit sizes has a binding."""
    project = compiled("micro-nyud", "multi", "fixed")[1]
    kernel = (project / "hls/src/kernel.cpp").read_text()
    declared = re.findall(r"^\s*static [\w:]+ (\w+)\[", kernel, re.M)
    assert declared == [memory.name for memory in MEMORIES]
    ops = (project / "hls/src/m3c_ops.h").read_text()
    args = re.search(r"#define M3C_MEMORY_ARGS \\\n(.*?)\n\n", ops, re.S).group(1)
    assert re.sub(r"[\s\\]+", " ", args).strip() == MEMORY_ARGS
    params = re.search(r"#define M3C_MEMORY_PARAMS \\\n(.*?)\n#define", ops, re.S).group(1)
    assert re.sub(r"[\s\\]+", " ", params).strip() == ", ".join(m.parameter() for m in MEMORIES)
    _, capacities = calls_for_config(json.loads(preset("micro-nyud").to_json()))
    design = Design(load_target("zcu104"), capacities)
    sized = {array.name: array.unit for unit in units.UNITS for array in unit.arrays(design)}
    for memory in MEMORIES:  # (m3c.check.hygiene holds each binding to the estimate's)
        if memory.name in sized:
            assert sized[memory.name] == memory.unit and memory.bind, memory.name
