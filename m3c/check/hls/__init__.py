"""`m3c check`: a static HLS checker of a generated project, independent of the generator.

It reads only hls/src (kernel.cpp and the headers it includes), parses them with a real C++
parser after the C preprocessor has expanded the M3C_HLS / M3C_LOOP macros, and proves two
things the speed estimate assumes: one instance of every shared unit (the functions an
`allocation ... limit=1` pragma names) and the target II of every pipelined loop. Whatever it
cannot decide statically is a finding of kind "unknown", never a clean verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m3c.check.hls.program import read_program
from m3c.check.hls.rules import Issue, LoopVerdict, instance_counts, loop_issues, verdict
from m3c.check.hls.source import RECOMPILE, load_translation_unit
from m3c.check.hls.walker import Walker
from m3c.errors import ProjectError
from m3c.ir.analysis import Finding

TOP = "m3c_kernel"


@dataclass(frozen=True)
class Instance:
    function: str
    count: int
    shared: bool  # named by an allocation limit=1 pragma: one instance is the design
    callers: tuple[str, ...]


@dataclass(frozen=True)
class CheckReport:
    instances: tuple[Instance, ...]
    loops: tuple[LoopVerdict, ...]
    issues: tuple[Issue, ...]
    findings: tuple[Finding, ...]

    def to_json(self) -> dict:
        return {
            "instances": [vars(i) | {"callers": list(i.callers)} for i in self.instances],
            "loops": [vars(loop) | {"reasons": list(loop.reasons)} for loop in self.loops],
            "findings": [{"where": f.where, "message": f.message, "remedy": f.remedy}
                         for f in self.findings],
        }


def check_project(project: Path) -> CheckReport:
    """Instances and per-loop II of a generated project's HLS sources (ProjectError when the
    directory holds no generated kernel, or it cannot be read)."""
    project = Path(project)
    unit = load_translation_unit(project)
    program = read_program(unit.root)
    tops = program.definitions(TOP)
    if not tops:
        raise ProjectError(f"{project / 'hls/src/kernel.cpp'}: defines no top function {TOP}",
                           remedy=RECOMPILE)
    walker = Walker(program, unit)
    walker.run(tops[0])
    instances = _instances(walker.calls, tops[0].allocation_limits())
    issues, loops = [], []
    for iteration in walker.loops:
        found = loop_issues(iteration)
        loop = verdict(iteration, found)
        if loop not in loops:
            loops.append(loop)
            issues += [issue for issue in found if issue not in issues]
    unknown = [Finding(where, f"unknown: {what}", remedy="") for where, what in walker.unknowns]
    findings = _instance_findings(instances) + [_finding(i) for i in issues] + unknown
    return CheckReport(tuple(instances), tuple(loops), tuple(issues), tuple(findings))


def _instances(calls: dict[str, set[str]], limits: dict[str, int]) -> list[Instance]:
    counts = instance_counts(calls, TOP)
    rows = []
    for name in sorted(counts):
        callers = tuple(sorted(c for c, callees in calls.items() if name in callees))
        rows.append(Instance(name, counts[name], limits.get(name.rsplit("::", 1)[-1]) == 1,
                             callers))
    return rows


def _instance_findings(instances: list[Instance]) -> list[Finding]:
    return [Finding(i.function, f"instances: the shared unit has {i.count} instances (one per "
                                f"instance of its callers {', '.join(i.callers)}); "
                                "`allocation limit=1` governs only calls in its own scope",
                    remedy="call it from one non-inlined function (or inline its callers "
                           "into the function that carries the allocation pragma)")
            for i in instances if i.shared and i.count > 1]


REMEDIES = {
    "ports": "partition the array further or bind it to storage with more ports",
    "table": "replicate the table (one copy per reader) or partition it",
    "runtime-bank-write": "write at compile-time bank indices (a shift register or a "
                          "per-bank loop), or leave the dimension unpartitioned",
    "recurrence": "keep the running value in registers, or add a `dependence` pragma whose "
                  "distance covers the read-modify-write latency when the addresses differ",
    "divider": "replace the division by counters, or hoist it out of the loop",
    "wide-multiply": "narrow the operands below 64 bits",
    "unknown": "simplify the loop so it can be analysed, or confirm its II with Vitis",
}


def _finding(issue: Issue) -> Finding:
    forced = f"forces II {issue.forced_ii}" if issue.forced_ii else "II not decidable"
    return Finding(f"{issue.function}: loop {issue.loop}",
                   f"{issue.kind}: {issue.subject}: {issue.detail}; {forced}",
                   remedy=REMEDIES[issue.kind])


__all__ = ["CheckReport", "Instance", "Issue", "LoopVerdict", "check_project"]
