"""`m3c compile`: ONNX -> a complete accelerator project (HLS, Vivado, weights, data, host).

The project is built in a temporary sibling directory and renamed into place, so a failure
never leaves a half-written project; the same inputs give byte-identical files.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from m3c.errors import CodegenError
from m3c.frontend.interface import sample_feeds, task_names
from m3c.frontend.load import load_model
from m3c.hw.codegen import KernelPlan, apply_mac8, plan_kernel
from m3c.hw.design import Precision
from m3c.hw.dse import DEFAULT_BUDGET, Choice, check_budget, choose_design, parse_tiles
from m3c.hw.estimate import band_rows
from m3c.hw.fit import storage_bindings
from m3c.hw.layout import DdrLayout, layout_weights, narrow_kinds, render_calls
from m3c.hw.mixed import (
    MixedChoice,
    choose_layers,
    emulated_loss,
    layer_savings,
    parse_loss,
    precision_config,
)
from m3c.hw.precision import (
    HEADROOM,
    ROLES,
    calibrate,
    choose_types,
    config_mac8_layers,
    float_types,
    layer_result_types,
    layer_weight_types,
    load_config,
    mac8_types,
    observe_inputs,
    quantize_blob,
)
from m3c.hw.target import Target, load_target
from m3c.hw.units import FUNCTIONS
from m3c.hw.units.base import MIN_SPAN
from m3c.hw.units.embed import pixels_by_lane
from m3c.ir.graph import Graph
from m3c.ir.sessions import ort_session
from m3c.project.atomic import check_destination, staged_directory
from m3c.project.render import template_environment
from m3c.project.report import build_report, write_report
from m3c.runtime import fixed
from m3c.runtime.emulator import LOG2E, KernelEmulator
from m3c.runtime.fixed import EXP_TABLE_BITS, GELU_RANGE, FixedType, gelu_step_bits, lookup_tables

PRECISIONS = ("fixed", "float", "int8", "mixed")
PRECISION_CONFIG = "precision_config.json"  # the layers' bits as chosen (--precision-config)
CALIBRATION_SCENES = 1  # per compile without --calib, every task run on each
FLOAT_TOLERANCE = 1e-4  # float C-simulation vs onnxruntime; fixed must equal the emulation
HP_BUNDLES = ["gmem_w", "gmem_in", "gmem_out"]

def compile_model(model, target: str = "zcu104", out: str | os.PathLike = "build",
                  precision: str = "fixed", force: bool = False,
                  calib: str | os.PathLike | np.ndarray | None = None,
                  precision_config: str | os.PathLike | None = None, tiles=None,
                  budget: float = DEFAULT_BUDGET, max_agreement_loss: str | float = "1%") -> Path:
    """Compile an ONNX model (path, ModelProto, gs.Graph or Graph) into a project at `out`.

    Fixed precision calibrates on `calib` (images [N,3,H,W] or a .npy of them; by default the
    project's own test vectors) and applies the overrides of `precision_config` (JSON/YAML).
    `int8` is fixed point whose dense layers and experts multiply 8-bit operands, two per DSP
    (m3c.hw.precision says which layers and why); `mixed` chooses 8 or 16 bits per layer for the
    least estimated latency within `max_agreement_loss` (m3c.hw.mixed), and the project keeps the
    choice as a precision config (precision_config.json) that `precision_config` reuses.
    `tiles` (TK, TM) force the MAC array's size; by default m3c.hw.dse picks the
    fastest that fits `budget` x the target's resources.
    """
    tiles = parse_tiles(tiles)
    check_budget(budget)
    if precision not in PRECISIONS:
        raise CodegenError(f"precision {precision!r} is not available",
                           remedy="use --precision " + " or ".join(PRECISIONS))
    out = Path(out)
    _check_output(out, force)  # before the slow part: a bad -o fails at once
    board = load_target(target)
    original = load_model(model)
    settings = {"precision": precision, "calib": _calibration_images(calib),
                "config": load_config(precision_config), "board": board, "budget": budget,
                "tiles": tiles, "max_loss": parse_loss(max_agreement_loss)}
    with staged_directory(out, force, error=CodegenError) as staging:
        _build(original, board, settings, staging, tiles, budget)
        copy_ap_types(staging)
        check_finite_outputs(staging)
    return out


def check_finite_outputs(project: Path) -> None:
    """Refuse to put a project in place whose calibration, weights or test vectors hold NaN or
    Inf: its types would be nonsense and its checks would compare nonsense."""
    from m3c.errors import NumericError

    manifest = json.loads((project / "project.json").read_text())
    peak = manifest.get("calibration_max_abs")
    if peak is not None and not math.isfinite(peak):
        raise NumericError(f"calibration saw activations of magnitude {peak}: the model "
                           "overflows on its calibration images",
                           remedy="check the model's weights and the --calib images")
    files = sorted((project / "data").glob("*.bin")) + [project / "weights" / "weights_f32.bin"]
    for path in files:
        if not np.isfinite(np.fromfile(path, np.float32)).all():
            raise NumericError(f"{path.relative_to(project)} holds NaN or infinite values: the "
                               "model overflows in float32 or in its fixed-point types",
                               remedy="check the model's weights, inputs and precision config")


def _check_output(out: Path, force: bool) -> None:
    check_destination(out.absolute(), force, error=CodegenError)


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


def _calibration_images(calib) -> np.ndarray | None:
    if calib is None or isinstance(calib, np.ndarray):
        return calib
    try:
        return np.load(calib)
    except (OSError, ValueError) as error:
        raise CodegenError(f"cannot read calibration images {calib}: {error}",
                           remedy="give a .npy array of images shaped [N,3,H,W]") from None


def _build(original: Graph, board: Target, settings: dict, project: Path, tiles,
           budget: float) -> None:
    from m3c.passes import default_pipeline
    from m3c.project.lowering_check import check_lowering

    with ThreadPoolExecutor(2) as background:
        # Drawn while the passes run (one core each).
        scenes = background.submit(_calibration_scenes, original.metadata, settings)
        graph = default_pipeline().run(original.copy(), save_dir=project / "intermediate")
        probe = original.to_onnx()
        tasks, feeds = task_names(probe), sample_feeds(probe, count=1, seed=2024)
        images = [feed["image"].astype(np.float32) for feed in feeds]
        # onnxruntime's outputs on the test images come in beside the emulations, which need
        # only the images.
        references = background.submit(_test_vectors, probe,
                                       graph.metadata["m3c.features_tensor"], tasks, feeds)
        del probe
        plan = plan_kernel(graph.graph)
        kernel = plan.to_json()
        settings = {**settings, "heads": _head_runner(graph, tasks, plan.features_shape)}
        # The emulator runs images in parallel threads beside onnxruntime; BLAS threads on
        # top would oversubscribe.
        with threadpool_limits(limits=1, user_api="blas"):
            try:
                typing = _typing(plan, kernel, settings, images, len(tasks),
                                 [scene for scene in scenes.result()
                                  if scene.shape == tuple(plan.image_shape[1:])])
            except Exception:
                references.result()  # onnxruntime's refusal names what is wrong with the model
                raise
            vectors = references.result()
            # No silently wrong project: the kernel in float against onnxruntime.
            lowering = background.submit(check_lowering, original, graph, tasks, vectors,
                                         typing.float_features)
            if typing.types is not None:  # per-layer result types: narrowing calls after layers
                plan.narrow_results(layer_result_types(kernel, settings["config"]))
                plan.use_mac8(typing.mac8)
                kernel = plan.to_json()
            # Its own copy: the layout below records DDR segments in the calls meanwhile.
            expected = background.submit(_expected_features, copy.deepcopy(kernel), typing,
                                         vectors)
            try:  # the design and the weights, while the fixed-point emulation runs
                choice, layout = _place(kernel, plan, board, typing, budget, tiles)
                _write_weights(project / "weights", plan, typing, layout)
            except Exception:
                lowering.result()  # a wrong lowering is what the user must hear of first
                raise
            lowering.result()
            data_files = _write_data(project / "data", vectors, tasks, expected.result())
    if typing.mixed is not None:  # the choice, reusable: --precision-config
        document = precision_config(typing.mixed, settings["config"])
        (project / PRECISION_CONFIG).write_text(json.dumps(document, indent=1, sort_keys=True)
                                                + "\n")
    _write_heads(project / "host" / "heads", graph)
    context = _context(graph, plan, kernel, board, typing, tasks, data_files, choice, layout)
    _render_all(project, context)
    manifest = _write_manifest(project, graph, plan, kernel, board, typing, tasks, choice,
                               layout)
    write_report(project, build_report(manifest, kernel, choice))
    _write_host(project, manifest)


def _place(kernel: dict, plan: KernelPlan, board: Target, typing: Typing, budget: float,
           tiles) -> tuple[Choice, DdrLayout]:
    """The design point, and the weights laid out for it (each call's DDR segments recorded in
    its kernel.json entry)."""
    choice = choose_design(kernel["calls"], plan.capacities, board,
                           Precision.from_types(typing.types_json()), budget, tiles)
    layout = layout_weights(kernel["calls"], choice.design.geometry, typing.ddr_values())
    for call, segments in zip(kernel["calls"], layout.segments, strict=True):
        call["ddr"] = segments
    return choice, layout


@dataclass
class Typing:
    """The precision pass's result: class types (None in float) and the kernel's weights."""

    precision: str
    types: dict[str, FixedType] | None
    weights: np.ndarray  # the values the kernel computes with (float32)
    activation_max: float | None = None
    raw_weights: np.ndarray | None = None  # fixed: the weight_t codes DDR holds
    mac8: dict[str, dict] = field(default_factory=dict)  # 8-bit layers: kernel.json "mac8"
    mixed: MixedChoice | None = None  # --precision mixed: the choice and its measurements
    headroom: float | None = None  # fixed: the data type's range over the calibrated peak
    float_features: list[np.ndarray] = field(default_factory=list)  # per task's test image

    @property
    def tolerance(self) -> float:
        return 0.0 if self.types else FLOAT_TOLERANCE

    def ddr_values(self) -> np.ndarray:
        """What DDR lanes hold: the raw weight_t codes, or the fp32 values."""
        return self.weights if self.types is None else self.raw_weights

    def types_json(self) -> dict:
        if self.types is None:
            return float_types()
        return {name: {**kind.to_json(), "role": ROLES[name]} for name, kind in self.types.items()}


def _typing(plan: KernelPlan, kernel: dict, settings: dict, test_images: list[np.ndarray],
            num_tasks: int, scenes: list[np.ndarray] = ()) -> Typing:
    """Without --calib, calibration runs each task on its test image and on every scene. The
    float kernel's features on the test images come with it (the lowering check's)."""
    blob = plan.weights.packed()
    tests = list(zip(test_images, range(num_tasks), strict=True))
    if settings["precision"] == "float":
        features = KernelEmulator(kernel, blob).run_many(tests)
        return Typing("float", None, blob, float_features=features)
    images = settings["calib"]
    if images is None:  # each task on its own test image, and on every scene
        samples = tests + [(scene, task) for scene in scenes for task in range(num_tasks)]
    else:
        images = np.asarray(images, np.float32)
        if images.ndim not in (3, 4) or images.shape[-3:] != tuple(plan.image_shape[1:]):
            raise CodegenError(f"calibration images have shape {list(images.shape)}, the model "
                               f"takes {list(plan.image_shape)}",
                               remedy="give a .npy of images shaped [N,3,H,W] as the model's")
        images = images.reshape(-1, *plan.image_shape[1:])
        samples = [(image, task) for image in images for task in range(num_tasks)]
    activation_max, features = calibrate(kernel, blob, samples)
    float_features = (features[:num_tasks] if images is None
                      else KernelEmulator(kernel, blob).run_many(tests))
    types = choose_types(kernel, blob, activation_max, settings["config"])
    sizes = {name: array.size for name, array in plan.weights.arrays.items()}
    narrowed = layer_weight_types(kernel, settings["config"])
    layers = config_mac8_layers(kernel, settings["config"])
    mac8: dict[str, dict] = {}
    mixed = None
    if settings["precision"] in ("int8", "mixed") or layers:
        inputs = observe_inputs(kernel, blob, samples)
        everything = None if settings["precision"] in ("int8", "mixed") else layers
        mac8, narrowed8 = mac8_types(kernel, blob, types, inputs, everything)
        if settings["precision"] == "mixed":
            raw16 = quantize_blob(blob, plan.weights.offsets, sizes, types["weight"], narrowed)
            mixed = _choose_mixed(kernel, blob, types, raw16, mac8, samples, settings)
            mac8, narrowed8 = mac8_types(kernel, blob, types, inputs, mixed.layers)
        narrowed |= narrowed8
    raw = quantize_blob(blob, plan.weights.offsets, sizes, types["weight"], narrowed)
    # In float32 directly (a power-of-two scale): the same values as through float64, without
    # a float64 copy of the whole blob.
    values = raw.astype(np.float32)
    values *= np.float32(math.ldexp(1.0, -types["weight"].frac))
    return Typing("fixed", types, values, activation_max, raw, mac8, mixed,
                  settings["config"].get("headroom", HEADROOM), float_features)


def _choose_mixed(kernel: dict, blob: np.ndarray, types: dict, raw: np.ndarray,
                  specs: dict[str, dict], samples: list, settings: dict) -> MixedChoice:
    """8 or 16 bits per layer (m3c.hw.mixed): savings estimated on the array the DSE picks with
    every candidate 8-bit, losses measured on the calibration samples."""
    wide = Precision.from_types({name: kind.to_json() for name, kind in types.items()})
    packed = apply_mac8(kernel, specs)
    design = choose_design(packed["calls"], packed["capacities"], settings["board"], wide,
                           settings["budget"], settings["tiles"]).design
    loss = emulated_loss(kernel, types, raw, blob, specs, samples, settings["heads"])
    return choose_layers(loss, layer_savings(kernel, specs, design), settings["max_loss"])


def _head_runner(graph: Graph, tasks: list[str], features_shape: list[int]):
    """Task index, encoder features (flat) -> the task head's output (onnxruntime)."""
    sessions: dict = {}

    def run(task: int, features: np.ndarray) -> np.ndarray:
        if task not in sessions:
            sessions[task] = ort_session(graph.to_onnx(graph.heads[tasks[task]]))
        session = sessions[task]
        feeds = {session.get_inputs()[0].name: features.reshape(features_shape)}
        return session.run(None, feeds)[0]

    return run


def _calibration_scenes(metadata: dict, settings: dict) -> list[np.ndarray]:
    """Synthetic scenes from the model's own generator (models m3c exported): beside the test
    vectors' standard-normal images they give calibration the flat regions and edges of real
    pictures, whose patch embeddings the noise never reaches."""
    from m3c.frontend.models.config import ModelConfig
    from m3c.frontend.models.data import make_dataset

    config = metadata.get("m3c.config")
    if not config or settings["precision"] == "float" or settings["calib"] is not None:
        return []
    try:
        scenes = make_dataset(ModelConfig.from_json(config), CALIBRATION_SCENES, seed=7)["image"]
    except (ValueError, KeyError, TypeError):  # a config m3c's generator cannot draw for
        return []
    return list(scenes.astype(np.float32))


def _test_vectors(probe: onnx.ModelProto, boundary: str, tasks: list[str],
                  feeds_per_task: list[dict]) -> list[dict]:
    """Per task its test image with onnxruntime's encoder features (tensor `boundary` of the
    original model `probe`) and task output on it."""
    probe.graph.output.append(onnx.helper.make_tensor_value_info(boundary, onnx.TensorProto.FLOAT,
                                                                 None))
    session = ort_session(probe)
    names = [output.name for output in session.get_outputs()]
    vectors = []
    for task, feeds in zip(tasks, feeds_per_task, strict=True):
        outputs = dict(zip(names, session.run(None, feeds), strict=True))
        vectors.append({"image": feeds["image"].astype(np.float32),
                        "features": outputs[boundary].astype(np.float32),
                        "output": outputs[task]})
    return vectors


def _expected_features(kernel: dict, typing: Typing, vectors: list[dict]) -> list[np.ndarray]:
    """What the kernel must output per task: onnxruntime's features in float, the bit-exact
    emulation's in fixed point."""
    if typing.types is None:
        return [vector["features"] for vector in vectors]
    emulator = KernelEmulator(kernel, typing.raw_weights, typing.types, raw=True)
    return emulator.run_many([(vector["image"], task) for task, vector in enumerate(vectors)])


def _write_data(folder: Path, vectors: list[dict], tasks: list[str],
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


def _write_weights(folder: Path, plan: KernelPlan, typing: Typing, layout: DdrLayout) -> None:
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


def _write_heads(folder: Path, graph: Graph) -> None:
    folder.mkdir(parents=True)
    for task, head in graph.heads.items():
        onnx.save(graph.to_onnx(head), str(folder / f"{task}.onnx"))


def _context(graph: Graph, plan: KernelPlan, kernel: dict, board: Target, typing: Typing,
             tasks: list[str], data_files: list[str], choice: Choice,
             layout: DdrLayout) -> dict:
    design = choice.design
    g = design.geometry
    config = json.loads(graph.metadata.get("m3c.config", "{}"))
    hp_ports = [{"bundle": bundle, "gp": 2 + i % 4, "slave": f"S_AXI_HP{i % 4}_FPD",
                 "width": board.hp_port_bits} for i, bundle in enumerate(HP_BUNDLES)]
    sizes = dict(design.sizes)
    embed = next((c for c in kernel["calls"] if c["op"] == "embed"), None)
    sizes["BAND_ROWS"] = band_rows(embed, design) if embed else 1
    kinds = narrow_kinds(kernel["calls"])
    tokens, dim = plan.features_shape[-2], plan.features_shape[-1]
    return {
        "model_name": config.get("name", graph.graph.name or "model"),
        "gate": config.get("gate", "multi"), "tasks": tasks, "num_tasks": len(tasks),
        "precision": typing.precision, "types": typing.types_json(),
        "type_classes": sorted(typing.types_json().items()), **_tables(typing),
        "target": board, "clock_mhz": board.clock_mhz, "tolerance": typing.tolerance,
        "port_bits": board.hp_port_bits, "g": g,
        "sizes": sorted((name, value) for name, value in sizes.items() if name != "BAND_ROWS"),
        "panel_fifo": design.panel_fifo, "min_span": MIN_SPAN,
        "pixels_by_lane": bool(embed) and pixels_by_lane(embed, g),
        "storage": storage_bindings(design, choice.budget), "narrow_types": kinds,
        "calls": render_calls(kernel["calls"], layout, g, sizes, kinds), "units": FUNCTIONS,
        "num_calls": len(kernel["calls"]),
        "ddr": {"weights": layout.words, "image": g.words(int(np.prod(plan.image_shape))),
                "features": tokens * g.words(dim)},
        "features_tokens": tokens, "features_dim": dim,
        "data_files": data_files, "hp_ports": hp_ports,
    }


def _tables(typing: Typing) -> dict:
    if typing.types is None:
        return {}
    data, prob = typing.types["data"], typing.types["prob"]
    tables = {f"{name}_table": [str(int(code)) for code in raw]
              for name, raw in lookup_tables(data, prob).items()}
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


def _render_all(project: Path, context: dict) -> None:
    environment = template_environment()
    rendered = {**RENDERED, **(FIXED_ONLY if context["precision"] == "fixed" else {})}
    for template, target in rendered.items():
        path = project / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(environment.get_template(template).render(**context))


def _write_manifest(project: Path, graph: Graph, plan: KernelPlan, kernel: dict, board: Target,
                    typing: Typing, tasks: list[str], choice: Choice, layout: DdrLayout) -> dict:
    features = graph.graph.outputs[0]
    g = choice.design.geometry
    manifest = {
        "m3c_version": 2, "target": board.name, "precision": typing.precision, "tasks": tasks,
        "mac8_layers": sorted(typing.mac8),
        **({"mixed": typing.mixed.to_json()} if typing.mixed else {}),
        "types": typing.types_json(), "tolerance": typing.tolerance,
        "calibration_max_abs": typing.activation_max, "calibration_headroom": typing.headroom,
        "config": json.loads(graph.metadata.get("m3c.config", "{}")),
        "image_shape": plan.image_shape, "features_shape": list(features.shape),
        "features_tensor": graph.metadata["m3c.features_tensor"],
        "weight_elements": plan.weights.size, "moe_layers": plan.layers,
        "tiles": list(choice.design.tiles), "row_tile": g.row_tile, "query_tile": g.query_tile,
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


def _write_host(project: Path, manifest: dict) -> None:
    """The register map, and host/: runtime copy, project files, run_on_board.py, README."""
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
    context = {"model_name": manifest["config"].get("name", "model"), "tasks": manifest["tasks"],
               "target": manifest["target"], "image_shape": manifest["image_shape"],
               "image_mean": mean.ravel().tolist(), "image_std": std.ravel().tolist()}
    environment = template_environment()
    for name in ("run_on_board.py", "README.md"):
        text = environment.get_template(f"host/{name}.j2").render(**context)
        (host / name).write_text(text)
