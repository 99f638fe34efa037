"""`m3c check`: the static HLS checker of a generated project (m3c.check.hls)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from m3c.commands.registry import command

if TYPE_CHECKING:  # the checker (and tree-sitter) load only when the command runs
    from m3c.check.hls import CheckReport


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", help="project directory made by `m3c compile`")
    parser.add_argument("--json", action="store_true",
                        help="print instances, loops and findings as JSON")


@command("check", "prove instance counts and per-loop II from a project's HLS sources "
                  "(exit 1 when there are findings)", _configure)
def run_check(args: argparse.Namespace) -> int:
    from m3c.check.hls import check_project

    report = check_project(Path(args.project))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report))
        print(latency_line(Path(args.project), report))
    return 1 if report.findings else 0


ARRAY_FUNCTIONS = ("mac_array", "mac_row")  # matmul.h.j2: the array and its step loops


def array_loops(report: CheckReport) -> list:
    """The array's pipelined loops: its step loops (one per mode, run in mac_array) and the
    pipelined row it calls."""
    return [loop for loop in report.loops
            if loop.context.rsplit("::", 1)[-1] in ARRAY_FUNCTIONS]


def worst_loop(report: CheckReport):
    """The pipelined loop furthest from its target II (an undecidable one first)."""
    def distance(loop) -> float:
        return float("inf") if loop.bound_ii is None else loop.bound_ii / loop.target_ii

    return max(report.loops, key=distance, default=None)


def latency_line(project: Path, report: CheckReport) -> str:
    """The estimate's frame latency (which assumes II 1 in the array's loops) beside the
    latency at the II the checker bounds them to."""
    from m3c.hw.design import Design
    from m3c.hw.estimate import cycles_at_array_ii
    from m3c.project.report import mean_routing, read_project, simulated

    loops = array_loops(report)
    if not loops:
        return "the array's step loops (mac_array) were not found"
    project, manifest, kernel = read_project(project)
    design = Design.of_project(manifest, kernel)
    routing = mean_routing(simulated(project))
    clock = design.target.clock_mhz * 1e3
    assumed = cycles_at_array_ii(kernel["calls"], design, 1, routing) / clock
    if any(loop.bound_ii is None for loop in loops):
        return (f"estimate: {assumed:.2f} ms per frame at II 1 in the array's loops; their "
                "II cannot all be bounded statically")
    worst = max(loops, key=lambda loop: loop.bound_ii)
    if worst.bound_ii == 1:
        return (f"estimate: {assumed:.2f} ms per frame; the array's {len(loops)} pipelined "
                "loops reach II 1 (m3c check)")
    bound = cycles_at_array_ii(kernel["calls"], design, worst.bound_ii, routing) / clock
    return (f"estimate: {assumed:.2f} ms per frame assumes II 1 in the array's loops; at the "
            f"II {worst.bound_ii} {worst.function}: {worst.loop} allows, {bound:.2f} ms")


def format_report(report: CheckReport) -> str:
    """The instance table, the pipelined loops with their II, then the findings."""
    lines = ["instances (non-inlined functions):"]
    lines += [f"  {i.function:<28} {i.count:>3}{'  shared unit' if i.shared else ''}"
              for i in report.instances]
    lines.append("pipelined loops (target II -> bound II):")
    for loop in report.loops:
        bound = "?" if loop.bound_ii is None else str(loop.bound_ii)
        why = f"  [{'; '.join(loop.reasons)}]" if loop.reasons else ""
        lines.append(f"  {loop.function}: {loop.loop:<20} {loop.target_ii} -> {bound}{why}")
    if report.findings:
        lines.append(f"{len(report.findings)} finding(s):")
        lines += [f"  {finding}" + (f"\n    remedy: {finding.remedy}" if finding.remedy else "")
                  for finding in report.findings]
    else:
        lines.append("no findings: one instance per shared unit, every pipelined loop at its "
                     "target II")
    return "\n".join(lines)
