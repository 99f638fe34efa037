"""Analyses: functions that read a graph (or a project) and return findings, never changing it.

As in qonnx, an analysis is kept apart from the transforms: a pipeline runs it at its place
between passes (`AnalysisStep`), and a finding there stops the pipeline with the finding's text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from m3c.errors import LoweringError
from m3c.ir.graph import Graph


@dataclass(frozen=True)
class Finding:
    """Something an analysis found wrong: where (a node, layer, loop or file), what, and what
    a user can do about it."""

    where: str
    message: str
    remedy: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class AnalysisStep:
    """A named analysis in a pipeline: the graph passes through unchanged; a finding raises
    LoweringError (the first finding's text and remedy, the others counted)."""

    def __init__(self, name: str, description: str,
                 analyse: Callable[[Graph], list[Finding]]) -> None:
        self.name = name
        self.description = description
        self.analyse = analyse

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        findings = self.analyse(graph)
        if findings:
            first = findings[0]
            more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
            raise LoweringError(f"{first.message}{more}", remedy=first.remedy or None)
        return graph, False
