"""The compile-time guard against a silently wrong project: the lowered kernel vs onnxruntime.

Before any code is generated, the kernel the lowered graph became (kernel.json run by the float
emulator, which is what the generated C++ computes) and the host heads (onnxruntime) are
pushed through the project's own test vectors and compared with onnxruntime on the original
model. Above the tolerance the compile is refused, naming the first lowering stage whose
output diverges (or the kernel plan, when every stage agrees), so a pass that rewrote
something wrongly cannot produce a project that passes its own checks.
"""

from __future__ import annotations

import numpy as np

from m3c.errors import LoweringError
from m3c.ir.graph import Graph, graph_runner

# Error relative to the reference's magnitude (at least 1): absolute for the usual
# activations of order one, and not failing large-valued outputs on float32 rounding.
TOLERANCE = 1e-4
KERNEL_PLAN = "kernel plan"  # every graph stage agrees: the plan of kernel.json diverges


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    return float(np.abs(np.asarray(got, np.float64) - want).max(initial=0.0)) / scale


def check_heads_standard(graph: Graph) -> None:
    """Host heads run in plain onnxruntime on the board: standard ONNX ops only."""
    for task, head in graph.heads.items():
        for node in head.nodes:
            if (node.domain or "") not in ("", "ai.onnx"):
                raise LoweringError(
                    f"the {task!r} head keeps node {node.name!r} ({node.domain}::{node.op}), "
                    "which onnxruntime on the host cannot run",
                    remedy="keep encoder-only layers (attention, MoE) out of the task heads")


def _feeds(graph: Graph, image: np.ndarray, task: int) -> dict[str, np.ndarray]:
    feeds = {"image": image}
    if any(tensor.name == "task" for tensor in graph.graph.inputs):
        feeds["task"] = np.array(task, np.int64)
    return feeds


def check_lowering(original: Graph, lowered: Graph, tasks: list[str], vectors: list[dict],
                   features: list[np.ndarray], tolerance: float = TOLERANCE) -> float:
    """Refuse (LoweringError) a lowering whose kernel differs from onnxruntime on the test
    vectors.

    `vectors[i]` holds task i's image and onnxruntime's encoder features and task output on
    it; `features[i]` is what the lowered kernel computes in float on that image (the float
    emulation). Returns the largest relative error seen.
    """
    check_heads_standard(lowered)
    worst, failing = 0.0, None
    for index, (task, vector) in enumerate(zip(tasks, vectors, strict=True)):
        ours = np.asarray(features[index], np.float32).reshape(vector["features"].shape)
        error = relative_error(ours, vector["features"])
        if lowered.heads:
            head = lowered.heads[task]
            output = graph_runner(lowered.to_onnx(head))({head.inputs[0].name: ours})[task]
            error = max(error, relative_error(output, vector["output"]))
        if error > worst:
            worst = error
            if error > tolerance and failing is None:
                failing = (index, task, vector)
    if failing is not None:
        index, task, vector = failing
        stage, stage_error = first_diverging_stage(original, _feeds(original, vector["image"],
                                                                    index),
                                                   task, vector["output"], tolerance)
        raise LoweringError(
            f"the lowered kernel differs from onnxruntime by {worst:.2e} (relative; limit "
            f"{tolerance:.0e}) on task {task!r}; first diverging stage: {stage} "
            f"(error {stage_error:.2e})",
            remedy=f"run `m3c verify` on the model to see every stage; the {stage}"
                   f"{'' if stage == KERNEL_PLAN else ' pass'} rewrote something it should not "
                   "have (please report it)")
    return worst


def first_diverging_stage(original: Graph, feeds: dict, task: str, want: np.ndarray,
                          tolerance: float) -> tuple[str, float]:
    """The first pipeline stage whose output for `task` differs from `want` above tolerance."""
    from m3c.passes import default_pipeline

    for _, name, stage in default_pipeline().stages(original.copy(), snapshot=False):
        error = relative_error(stage.run_output(feeds, task), want)
        if error > tolerance:
            return name, error
        last = error
    return KERNEL_PLAN, last
