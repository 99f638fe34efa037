"""Pass infrastructure: a pass rewrites a `Graph`; a named pipeline runs passes in order.

As in qonnx/FINN, `apply(graph)` returns the (possibly new) graph and whether anything
changed; pattern passes repeat until nothing matches. As in MLIR/TVM, the pipeline is a named
list that can be listed and run up to any pass, saving each stage's model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx_graphsurgeon as gs

from m3c import progress
from m3c.errors import LoweringError
from m3c.ir.analysis import AnalysisStep
from m3c.ir.graph import Graph, check_unique_names
from m3c.ir.stage_store import StageStore


class Pass:
    """A named graph transformation."""

    name = "pass"
    description = ""

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        raise NotImplementedError


class RewritePass(Pass):
    """A pattern rewrite applied until it no longer matches (a fixed point)."""

    max_rounds = 1000

    def rewrite_once(self, graph: gs.Graph) -> bool:
        """Rewrite one match in place; return False when there is none left."""
        raise NotImplementedError

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for _ in range(self.max_rounds):
            if not self.rewrite_once(graph.graph):
                break
            changed = True
        if changed:
            graph.graph.cleanup().toposort()
        return graph, changed


class Pipeline:
    """Passes in order; run fully or up to a named pass, optionally saving every stage."""

    def __init__(self, passes: list[Pass | AnalysisStep]) -> None:
        self.passes = passes

    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def _check_until(self, until: str | None) -> None:
        if until is not None and until not in self.names():
            raise LoweringError(f"unknown pass {until!r}",
                                remedy="choose one of: " + ", ".join(self.names()))

    def stages(self, graph: Graph, until: str | None = None,
               snapshot: bool = True) -> Iterator[tuple[int, str, Graph]]:
        """Yield (index, pass name, graph after it), starting with the imported graph."""
        self._check_until(until)
        yield 0, "import", graph.copy() if snapshot else graph
        for index, step in enumerate(self.passes, start=1):
            graph, _ = step.apply(graph)
            # Downstream stages (weights, codegen) key tensors by name: a duplicate would
            # silently merge two weights.
            for part in [graph.graph, *graph.heads.values()]:
                check_unique_names(part, f"after pass {step.name}")
            yield index, step.name, graph.copy() if snapshot else graph
            if step.name == until:
                return

    def run(self, graph: Graph, until: str | None = None,
            save_dir: str | os.PathLike | None = None) -> Graph:
        """The graph after every pass (or after `until`); stages saved as NN_<name>.onnx."""
        store = None
        if save_dir is not None:
            save_dir = Path(save_dir)
            save_dir.mkdir(parents=True, exist_ok=True)
            store = StageStore(save_dir)
        heads_saved = None
        stages = self.stages(graph, until, snapshot=False)
        for index, name, stage in progress.steps(stages, len(self.passes) + 1, "lowering"):
            if save_dir is not None:
                # Head graphs do not change after the partition: save them where they appear.
                new_heads = stage.heads is not heads_saved
                stage.save(save_dir / f"{index:02d}_{name}.onnx", with_heads=new_heads,
                           store=store)
                heads_saved = stage.heads
            graph = stage
        return graph
