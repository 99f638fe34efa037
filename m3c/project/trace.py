"""The estimate checked against the code: a traced C-simulation of one test vector.

The project's kernel is built with -DM3C_TRACE (templates/hls/kernel/m3c_trace.h.j2): per
kernel.json call it counts the DDR beats of each m_axi bundle and the cycles the MAC array was
issued. The same calls are estimated (m3c.hw.estimate) with the routing the emulation finds for the
same image, so the experts' queues are the real ones. `m3c report --trace` writes the rows to
report/trace.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from m3c.hw.estimate import estimate_calls
from m3c.project import csim
from m3c.project.report import project_design, read_project
from m3c.runtime.emulator import KernelEmulator


def routing_of(project: Path, image: np.ndarray, task: int) -> dict[str, list[int]]:
    """Queue lengths per MoE layer that the emulation finds for `image` and `task`."""
    emulator = KernelEmulator.from_project(project)
    calls = emulator.plan["calls"]
    experts_of = {call["layer"]: next(c["layer"] for c in calls[i:] if c["op"] == "experts")
                  for i, call in enumerate(calls) if call["op"] == "route"}
    routing: dict[str, list[int]] = {}

    def observe(call: dict, what: str, values: np.ndarray) -> None:
        if what == "queue_lengths":
            routing[experts_of[call["layer"]]] = [int(v) for v in values]

    emulator.run(image, task, observe)
    return routing


def trace_project(project: str | Path, task: int = 0) -> list[dict]:
    """Per call: its layer, what the traced C-simulation counted, what the estimate says."""
    project, manifest, kernel = read_project(project)
    image = np.fromfile(project / "data" / f"input_task{task}.bin", np.float32)
    traced_kernel = csim.load(project, traced=True)
    traced_kernel.reset_trace()
    traced_kernel.run(image, task)
    traced = traced_kernel.trace(len(kernel["calls"]))
    routing = routing_of(project, image, task)
    design = project_design(manifest, kernel).design
    rows = []
    for call, counted, estimate in zip(kernel["calls"], traced,
                                       estimate_calls(kernel["calls"], design, routing),
                                       strict=True):
        rows.append({"layer": call["layer"], "op": call["op"], "traced": counted,
                     "estimated": {"ddr_beats": dict(estimate.beats),
                                   "array_cycles": estimate.array_cycles}})
    return rows


def write_trace(project: str | Path, rows: list[dict]) -> Path:
    path = Path(project) / "report" / "trace.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path
