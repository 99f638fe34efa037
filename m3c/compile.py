"""`m3c compile`: ONNX -> a complete accelerator project (HLS, Vivado, weights, data, host).

The project is built in a temporary sibling directory and renamed into place, so a failure
never leaves a half-written project; the same inputs give byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jinja2
import numpy as np
import onnx

from m3c.codegen import KernelPlan, plan_kernel
from m3c.dse import DEFAULT_BUDGET, Choice, check_budget, choose_design, parse_tiles
from m3c.errors import CodegenError
from m3c.estimate import Precision
from m3c.graph import Graph, load_model, ort_session
from m3c.report import build_report, write_report
from m3c.target import Target, load_target
from m3c.verify import sample_feeds, task_names

PRECISIONS = {"float": {"data": "float", "weight": "float", "acc": "float", "prob": "float"}}
FLOAT_TOLERANCE = 1e-4
HP_BUNDLES = ["gmem_w", "gmem_ain", "gmem_aout", "gmem_in", "gmem_out"]


def _templates() -> jinja2.Environment:
    from m3c import templates

    root = Path(templates.__file__).parent
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CodegenError(f"{out} exists and is not a directory", remedy="choose another -o")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CodegenError(f"{out} is not empty", remedy="pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CodegenError(f"cannot create {out}: {parent} is missing or not writable")


def compile_model(model, target: str = "zcu104", out: str | os.PathLike = "build",
                  precision: str = "float", force: bool = False, tiles=None,
                  budget: float = DEFAULT_BUDGET) -> Path:
    """Compile an ONNX model (path, ModelProto, gs.Graph or Graph) into a project at `out`.

    `tiles` (TILE_IN, TILE_OUT) force the linear unit's size; by default m3c.dse picks the
    fastest that fits `budget` x the target's resources.
    """
    tiles = parse_tiles(tiles)
    check_budget(budget)
    if precision not in PRECISIONS:
        raise CodegenError(f"precision {precision!r} is not available",
                           remedy="use --precision " + " or ".join(PRECISIONS))
    out = Path(out)
    _check_output(out, force)
    board = load_target(target)
    original = load_model(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.m3c-", dir=out.parent or "."))
    try:
        _build(original, board, precision, staging, tiles, budget)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _build(original: Graph, board: Target, precision: str, project: Path, tiles, budget) -> None:
    from m3c.passmanager import default_pipeline

    proto = original.to_onnx()
    graph = default_pipeline().run(original.copy(), save_dir=project / "intermediate")
    plan = plan_kernel(graph.graph)
    kernel = plan.to_json()
    choice = choose_design(kernel["calls"], plan.capacities, board,
                           Precision.from_types(PRECISIONS[precision]), budget, tiles)
    tasks = task_names(proto)
    data_files = _write_data(project / "data", proto, graph, tasks)
    _write_weights(project / "weights", plan)
    _write_heads(project / "host" / "heads", graph)
    context = _context(graph, plan, board, precision, tasks, data_files, choice.design.tiles)
    _render_all(project, context)
    manifest = _write_manifest(project, graph, plan, board, precision, tasks, choice)
    write_report(project, build_report(manifest, kernel, choice))


def _write_data(folder: Path, proto: onnx.ModelProto, graph: Graph, tasks: list[str]):
    """One test image per task; expected encoder output and task outputs from onnxruntime."""
    folder.mkdir(parents=True)
    boundary = graph.metadata["m3c.features_tensor"]
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(boundary, onnx.TensorProto.FLOAT,
                                                                 None))
    session = ort_session(probe)
    feeds_per_task = sample_feeds(proto, count=1, seed=2024)
    names = []
    for index, (task, feeds) in enumerate(zip(tasks, feeds_per_task, strict=True)):
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                           strict=True))
        feeds["image"].astype(np.float32).tofile(folder / f"input_task{index}.bin")
        outputs[boundary].astype(np.float32).tofile(folder / f"features_task{index}.bin")
        np.save(folder / f"expected_{task}.npy", outputs[task])
        names += [f"data/input_task{index}.bin", f"data/features_task{index}.bin"]
    names.append("weights/weights_f32.bin")
    return names


def _write_weights(folder: Path, plan: KernelPlan) -> None:
    folder.mkdir(parents=True)
    plan.weights.packed().tofile(folder / "weights_f32.bin")
    table = {name: {"offset": offset, "shape": list(plan.weights.arrays[name].shape)}
             for name, offset in plan.weights.offsets.items()}
    layout = {"dtype": "float32", "elements": plan.weights.size, "tensors": table}
    (folder / "weights.json").write_text(json.dumps(layout, indent=1, sort_keys=True) + "\n")


def _write_heads(folder: Path, graph: Graph) -> None:
    folder.mkdir(parents=True)
    for task, head in graph.heads.items():
        onnx.save(graph.to_onnx(head), str(folder / f"{task}.onnx"))


def _context(graph: Graph, plan: KernelPlan, board: Target, precision: str,
             tasks: list[str], data_files: list[str], tiles: tuple[int, int]) -> dict:
    config = json.loads(graph.metadata.get("m3c.config", "{}"))
    hp_ports = [{"bundle": bundle, "gp": 2 + i % 4, "slave": f"S_AXI_HP{i % 4}_FPD",
                 "width": board.hp_port_bits} for i, bundle in enumerate(HP_BUNDLES)]
    return {
        "model_name": config.get("name", graph.graph.name or "model"),
        "gate": config.get("gate", "multi"), "tasks": tasks, "num_tasks": len(tasks),
        "precision": precision, "types": PRECISIONS[precision], "target": board,
        "clock_mhz": board.clock_mhz, "tolerance": FLOAT_TOLERANCE,
        "calls": [call.to_cpp() for call in plan.calls],
        "weight_elements": plan.weights.size, "arena_elements": plan.arena.size,
        "image_elements": int(np.prod(plan.image_shape)),
        "feature_elements": plan.features_elements, "features_offset": plan.features_offset,
        "data_files": data_files, "hp_ports": hp_ports,
        "tile_in": tiles[0], "tile_out": tiles[1], **plan.capacities,
    }


RENDERED = {
    "hls/kernel/m3c_ops.h.j2": "hls/src/m3c_ops.h",
    "hls/kernel/m3c_types.h.j2": "hls/src/m3c_types.h",
    "hls/kernel/kernel.h.j2": "hls/src/kernel.h",
    "hls/kernel/kernel.cpp.j2": "hls/src/kernel.cpp",
    "hls/kernel/csim_api.cpp.j2": "hls/src/csim_api.cpp",
    "hls/kernel/testbench.cpp.j2": "hls/tb/testbench.cpp",
    "project/hls_config.cfg.j2": "hls/hls_config.cfg",
    "project/run_hls.tcl.j2": "hls/run_hls.tcl",
    "vivado/block_design.tcl.j2": "vivado/block_design.tcl",
    "project/Makefile.j2": "Makefile",
    "project/README.md.j2": "README.md",
}


def _render_all(project: Path, context: dict) -> None:
    environment = _templates()
    for template, target in RENDERED.items():
        path = project / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(environment.get_template(template).render(**context))


def _write_manifest(project: Path, graph: Graph, plan: KernelPlan, board: Target,
                    precision: str, tasks: list[str], choice: Choice) -> dict:
    features = graph.graph.outputs[0]
    manifest = {
        "m3c_version": 1, "target": board.name, "precision": precision, "tasks": tasks,
        "config": json.loads(graph.metadata.get("m3c.config", "{}")),
        "image_shape": plan.image_shape, "features_shape": list(features.shape),
        "features_tensor": graph.metadata["m3c.features_tensor"],
        "weight_elements": plan.weights.size, "arena_elements": plan.arena.size,
        "moe_layers": plan.layers, "tiles": list(choice.design.tiles),
        "types": PRECISIONS[precision], "tiles_forced": choice.forced,
        "tile_candidates": choice.candidates,
        "budget": choice.budget,
    }
    (project / "project.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (project / "kernel.json").write_text(json.dumps(plan.to_json(), indent=1) + "\n")
    return manifest
