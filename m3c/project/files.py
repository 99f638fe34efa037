"""The project's files: test vectors, DDR weights, host heads, every rendered template, the
manifest (project.json) and the host runtime copy."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx

from m3c.hw.calls import Call
from m3c.hw.codegen import GELU_FORMS, KernelPlan, gelu_forms
from m3c.hw.design import Precision
from m3c.hw.dse import Choice
from m3c.hw.estimate import band_rows
from m3c.hw.fit import storage_bindings
from m3c.hw.layout import DdrLayout, build_program, narrow_kinds, render_calls
from m3c.hw.memories import template_memories
from m3c.hw.resources import MULTIPLIER_GROUPS
from m3c.hw.target import Target
from m3c.hw.units import FUNCTIONS, Interfaces
from m3c.hw.units.base import min_span
from m3c.hw.units.embed import pixels_by_lane
from m3c.hw.units.shared import Matmul, table_bits
from m3c.ir.graph import Graph
from m3c.project.calibrate import Typing
from m3c.project.render import template_environment
from m3c.runtime import fixed
from m3c.runtime.emulator import LOG2E
from m3c.runtime.fixed import EXP_TABLE_BITS, GELU_RANGE, gelu_step_bits, lookup_tables

HP_BUNDLES = ["gmem_w", "gmem_in", "gmem_out"]


def copy_ap_types(project: Path) -> None:
    """The Apache-2.0 Xilinx ap_types headers (from the hls4ml wheel) and their license into
    hls/ap_types, so `make csim` needs g++ and the project alone. hls_stream.h is left out:
    the project has its own in hls/csim."""
    from m3c.project.csim import AP_TYPES_DIR, ap_types_dir, ap_types_license

    source, target = ap_types_dir(), project / AP_TYPES_DIR
    headers = sorted([*source.glob("ap_*.h"), source / "etc" / "ap_private.h"])
    for header in headers:
        destination = target / header.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(header, destination)
    shutil.copyfile(ap_types_license(), target / "LICENSE")


def write_data(folder: Path, vectors: list[dict], tasks: list[str],
                expected_features: list[np.ndarray]) -> list[str]:
    """Test vectors: inputs, expected kernel features, onnxruntime's features and outputs."""
    folder.mkdir(parents=True)
    names = []
    for index, (task, vector, expected) in enumerate(zip(tasks, vectors, expected_features,
                                                         strict=True)):
        vector["image"].tofile(folder / f"input_task{index}.bin")
        expected.tofile(folder / f"features_task{index}.bin")
        vector["features"].tofile(folder / f"features_onnxruntime_task{index}.bin")
        np.save(folder / f"expected_{task}.npy", vector["output"])
        names += [f"data/input_task{index}.bin", f"data/features_task{index}.bin"]
    names.append("weights/weights.bin")
    return names


def write_weights(folder: Path, plan: KernelPlan, typing: Typing, layout: DdrLayout) -> None:
    """weights_f32.bin: the kernel's weight values at their kernel.json offsets (what the
    emulator reads); weights.bin: the DDR words the kernel reads, in consumption order."""
    folder.mkdir(parents=True)
    typing.weights.tofile(folder / "weights_f32.bin")
    lane_dtype = _lane_dtype(typing, layout)
    layout.lanes.astype(lane_dtype).tofile(folder / "weights.bin")
    table = {name: {"offset": offset, "shape": list(plan.weights.arrays[name].shape)}
             for name, offset in plan.weights.offsets.items()}
    description = {"dtype": "float32", "ddr_dtype": lane_dtype, "elements": plan.weights.size,
                   "ddr_words": layout.words, "ddr_lanes": int(layout.lanes.size),
                   "tensors": table}
    (folder / "weights.json").write_text(json.dumps(description, indent=1, sort_keys=True)
                                         + "\n")


def _lane_dtype(typing: Typing, layout: DdrLayout) -> str:
    if typing.types is None:
        return "float32"
    return "int16" if layout.port_lanes == 8 else "int32"


def write_heads(folder: Path, graph: Graph) -> dict[str, onnx.ModelProto]:
    """Each task's head as host/heads/<task>.onnx; the models, by task."""
    folder.mkdir(parents=True)
    models = {task: graph.to_onnx(head) for task, head in graph.heads.items()}
    for task, model in models.items():
        onnx.save(model, str(folder / f"{task}.onnx"))
    return models


def template_context(graph: Graph, plan: KernelPlan, kernel: dict, board: Target, typing: Typing,
                     tasks: list[str], data_files: list[str], choice: Choice,
                     layout: DdrLayout, preprocess: dict[str, list[float]]) -> dict:
    """What every template renders from."""
    from m3c.runtime.preprocess import normalisation

    design = choice.design
    g = design.geometry
    config = json.loads(graph.metadata.get("m3c.config", "{}"))
    mean, std = normalisation({**config, **preprocess})
    hp_ports = [{"bundle": bundle, "gp": 2 + i % 4, "slave": f"S_AXI_HP{i % 4}_FPD",
                 "width": board.hp_port_bits} for i, bundle in enumerate(HP_BUNDLES)]
    sizes = dict(design.sizes)
    embed = next((c for c in kernel["calls"] if c["op"] == "embed"), None)
    sizes["BAND_ROWS"] = band_rows(embed, design) if embed else 1
    kinds = narrow_kinds(kernel["calls"])
    tokens, dim = plan.features_shape[-2], plan.features_shape[-1]
    return {
        "model_name": config.get("name", graph.graph.name or "model"),
        "routing": _routing(kernel["calls"]),
        "image_mean": mean.ravel().tolist(), "image_std": std.ravel().tolist(),
        "tasks": tasks, "num_tasks": len(tasks),
        "precision": typing.precision, "types": typing.types_json(),
        "type_classes": sorted(typing.types_json().items()), **_tables(typing, kernel["calls"]),
        "target": board, "clock_mhz": board.clock_mhz, "tolerance": typing.tolerance,
        "port_bits": board.hp_port_bits, "g": g,
        "sizes": sorted((name, value) for name, value in sizes.items() if name != "BAND_ROWS"),
        "panel_fifo": design.panel_fifo, "min_span": min_span(g), "step_modes": Matmul.STEP_MODES,
        "mul_impl": {group: "dsp" if group in design.dsp_multipliers else "fabric"
                     for group in MULTIPLIER_GROUPS},
        # a table copy per two readers a cycle: the softmax's TK or the router's experts
        # (exp2), the epilogue's TM columns (GELU); m3c/hw/units count them the same way
        "exp2_copies": math.ceil(max(g.tk, plan.capacities["max_experts"]) / 2),
        "gelu_copies": math.ceil(g.tm / 2),
        "pixels_by_lane": bool(embed) and pixels_by_lane(Call.of(embed), g),
        "storage": storage_bindings(design, choice.budget), "narrow_types": kinds,
        "program": build_program(render_calls(kernel["calls"], layout, g, sizes, kinds)),
        "units": FUNCTIONS,
        "num_calls": len(kernel["calls"]),
        "ddr": {"weights": layout.words, "image": g.words(int(np.prod(plan.image_shape))),
                "features": tokens * g.words(dim)},
        "bursts": {"beats": Interfaces.BURST_BEATS, "latency": Interfaces.LATENCY,
                   **Interfaces.OUTSTANDING},
        "features_tokens": tokens, "features_dim": dim,
        "data_files": data_files, "hp_ports": hp_ports, **template_memories(g),
    }


def _routing(calls: list[dict]) -> str:
    """How the kernel routes, read off its router table (whatever the model's metadata says):
    a router per task, one with a bias row per task (task-conditioned), or one shared."""
    route = next((call for call in calls if call["op"] == "route"), None)
    if route is None:
        return "no MoE layer"
    if route["weight_rows"] > 1:
        return "a router per task (multi-gate)"
    if route["bias_rows"] > 1:
        return "task-conditioned routing"
    return "one router shared by all tasks"


def routers_read_task(calls: list[dict]) -> bool:
    """Does any router hold per-task rows (a router per task, or a bias per task)? If not, the
    encoder's features are the same for every task and one kernel run feeds every head."""
    return any(call["weight_rows"] > 1 or call["bias_rows"] > 1
               for call in calls if call["op"] == "route")


def _tables(typing: Typing, calls: list[dict]) -> dict:
    """The lookup tables' entries and constants; a GELU table only for the forms the calls
    use (GELU's when none does: activate() reads one)."""
    if typing.types is None:
        return {}
    data, prob = typing.types["data"], typing.types["prob"]
    tables = {f"{name}_table": [str(int(code)) for code in raw]
              for name, raw in lookup_tables(data, prob).items()}
    forms = gelu_forms(calls) or ["gelu"]
    tables["gelu_tables"] = {form: tables.pop(f"{form}_table") for form in GELU_FORMS
                             if form in forms}
    tables["table_bits"] = table_bits(Precision.from_types(typing.types_json()))
    tables["recip_table"] = [str(int(code)) for code in fixed.recip_table()]
    tables["rsqrt_table"] = [str(int(code)) for code in fixed.rsqrt_table()]
    reciprocals = {name.lower(): getattr(fixed, name) for name in (
        "RECIP_TABLE_BITS", "SEED_FRAC", "MANTISSA_FRAC", "NEWTON_FRAC", "RESULT_FRAC",
        "NEWTON_STEPS")}
    return {**tables, **reciprocals, "exp_table_bits": EXP_TABLE_BITS,
            "gelu_step_bits": gelu_step_bits(data), "gelu_range": GELU_RANGE,
            "log2e_bits": int(prob.from_float(LOG2E))}


RENDERED = {
    "hls/kernel/m3c_ops.h.j2": "hls/src/m3c_ops.h",
    "hls/kernel/m3c_types.h.j2": "hls/src/m3c_types.h",
    "hls/kernel/m3c_dataflow.h.j2": "hls/src/m3c_dataflow.h",
    "hls/kernel/m3c_trace.h.j2": "hls/src/m3c_trace.h",
    "hls/kernel/kernel.h.j2": "hls/src/kernel.h",
    "hls/kernel/kernel.cpp.j2": "hls/src/kernel.cpp",
    "hls/kernel/csim_api.cpp.j2": "hls/src/csim_api.cpp",
    "hls/kernel/testbench.cpp.j2": "hls/tb/testbench.cpp",
    "hls/csim/hls_stream.h.j2": "hls/csim/hls_stream.h",
    "project/hls_config.cfg.j2": "hls/hls_config.cfg",
    "project/run_hls.tcl.j2": "hls/run_hls.tcl",
    "vivado/block_design.tcl.j2": "vivado/block_design.tcl",
    "project/Makefile.j2": "Makefile",
    "project/README.md.j2": "README.md",
}


FIXED_ONLY = {"hls/kernel/m3c_tables.h.j2": "hls/src/m3c_tables.h"}


def render_all(project: Path, context: dict) -> None:
    environment = template_environment()
    rendered = {**RENDERED, **(FIXED_ONLY if context["precision"] == "fixed" else {})}
    for template, target in rendered.items():
        path = project / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(environment.get_template(template).render(**context))


def write_manifest(project: Path, graph: Graph, plan: KernelPlan, kernel: dict, board: Target,
                   typing: Typing, tasks: list[str], choice: Choice, layout: DdrLayout,
                   preprocess: dict[str, list[float]], heads: dict[str, dict]) -> dict:
    """project.json (with the pictures' normalisation in its config, which every runtime
    reads, and the task heads as m3c.lowering.heads describes them) and kernel.json."""
    features = graph.graph.outputs[0]
    g = choice.design.geometry
    manifest = {
        "m3c_version": 2, "target": board.name, "precision": typing.precision, "tasks": tasks,
        "mac8_layers": sorted(typing.mac8),
        **({"mixed": typing.mixed.to_json()} if typing.mixed else {}),
        "types": typing.types_json(), "tolerance": typing.tolerance,
        "calibration_max_abs": typing.activation_max, "calibration_headroom": typing.headroom,
        "config": {**json.loads(graph.metadata.get("m3c.config", "{}")), **preprocess},
        "image_shape": plan.image_shape, "features_shape": list(features.shape),
        "features_tensor": graph.metadata["m3c.features_tensor"],
        "weight_elements": plan.weights.size, "moe_layers": plan.layers,
        "routers_read_task": routers_read_task(kernel["calls"]), "heads": heads,
        "tiles": list(choice.design.tiles), "row_tile": g.row_tile, "query_tile": g.query_tile,
        "dsp_multipliers": sorted(choice.design.dsp_multipliers),
        "tiles_forced": choice.forced, "tile_candidates": choice.candidates,
        "budget": choice.budget,
        # DDR buffers in lanes (elements of the DDR words): what the host allocates.
        "ddr": {"port_lanes": g.port_lanes, "weights": int(layout.lanes.size),
                "image": g.words(int(np.prod(plan.image_shape))) * g.port_lanes,
                "features": plan.features_shape[-2] * g.words(plan.features_shape[-1])
                * g.port_lanes,
                "features_row": g.words(plan.features_shape[-1]) * g.port_lanes},
    }
    (project / "project.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (project / "kernel.json").write_text(json.dumps(kernel, indent=1) + "\n")
    return manifest


def write_host(project: Path, manifest: dict, model_name: str) -> None:
    """The register map, and host/: runtime copy, project files, run_on_board.py, README
    (`model_name` as the project's Makefile names the board package)."""
    from m3c import runtime
    from m3c.hw.register_map import register_map_for
    from m3c.runtime.preprocess import normalisation

    registers = json.dumps(register_map_for(project), indent=1, sort_keys=True) + "\n"
    host = project / "host"
    for path in (project / "hls" / "register_map.json", host / "register_map.json"):
        path.write_text(registers)
    shutil.copyfile(project / "project.json", host / "project.json")
    (host / "m3c_runtime").mkdir()
    for source in sorted(Path(runtime.__file__).parent.glob("*.py")):
        shutil.copyfile(source, host / "m3c_runtime" / source.name)
    mean, std = normalisation(manifest["config"])
    context = {"model_name": model_name, "tasks": manifest["tasks"],
               "target": manifest["target"], "image_shape": manifest["image_shape"],
               "image_mean": mean.ravel().tolist(), "image_std": std.ravel().tolist()}
    environment = template_environment()
    for name in ("run_on_board.py", "README.md"):
        text = environment.get_template(f"host/{name}.j2").render(**context)
        (host / name).write_text(text)
