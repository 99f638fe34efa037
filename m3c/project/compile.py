"""`m3c compile`: ONNX -> a complete accelerator project (HLS, Vivado, weights, data, host).

The project is built in a temporary sibling directory and renamed into place, so a failure
never leaves a half-written project; the same inputs give byte-identical files.
"""

from __future__ import annotations

import copy
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from m3c import progress
from m3c.errors import CodegenError
from m3c.frontend.interface import preprocessing, task_feeds, task_names
from m3c.frontend.load import load_model
from m3c.hw.codegen import KernelPlan, plan_kernel
from m3c.hw.design import Precision
from m3c.hw.dse import DEFAULT_BUDGET, Choice, check_budget, choose_design, parse_tiles
from m3c.hw.layout import DdrLayout, layout_weights
from m3c.hw.mixed import (
    parse_loss,
    precision_config,
)
from m3c.hw.precision import (
    layer_result_types,
    load_config,
)
from m3c.hw.target import Target, load_target
from m3c.hw.units.attention import check_head_widths
from m3c.ir.graph import Graph
from m3c.ir.sessions import ort_session
from m3c.lowering.heads import describe_heads, head_line
from m3c.project.atomic import check_destination, staged_directory
from m3c.project.calibrate import (
    Typing,
    calibration_images,
    calibration_scenes,
    check_fidelity,
    expected_features,
    head_runner,
    type_kernel,
)
from m3c.project.files import (
    copy_ap_types,
    render_all,
    template_context,
    write_data,
    write_heads,
    write_host,
    write_manifest,
    write_weights,
)
from m3c.project.report import build_report, write_report

PRECISIONS = ("fixed", "float", "int8", "mixed")
PRECISION_CONFIG = "precision_config.json"  # the layers' bits as chosen (--precision-config)


def compile_model(model, target: str = "zcu104", out: str | os.PathLike = "build",
                  precision: str = "fixed", force: bool = False,
                  calib: str | os.PathLike | np.ndarray | None = None,
                  precision_config: str | os.PathLike | None = None, tiles=None,
                  budget: float = DEFAULT_BUDGET, max_agreement_loss: str | float = "1%",
                  mean: list[float] | None = None, std: list[float] | None = None,
                  allow_inaccurate: bool = False) -> Path:
    """Compile an ONNX model (path, ModelProto, gs.Graph or Graph) into a project at `out`.

    Fixed precision calibrates on `calib` (images [N,3,H,W] or a .npy of them; by default the
    project's own test vectors) and applies the overrides of `precision_config` (JSON/YAML).
    `int8` is fixed point whose dense layers and experts multiply 8-bit operands, two per DSP
    (m3c.hw.precision says which layers and why); `mixed` chooses 8 or 16 bits per layer for the
    least estimated latency within `max_agreement_loss` (m3c.hw.mixed), and the project keeps the
    choice as a precision config (precision_config.json) that `precision_config` reuses.
    `tiles` (TK, TM) force the MAC array's size; by default m3c.hw.dse picks the
    fastest that fits `budget` x the target's resources. `mean` and `std` (1 or 3 values)
    normalise pictures as the model was trained (m3c.frontend.interface.preprocessing).
    A fixed-point project whose emulated outputs leave the limits of m3c.project.fidelity
    against onnxruntime on its test images is refused (NumericError naming the first layer
    that leaves them) unless `allow_inaccurate`.
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
    settings = {"precision": precision, "calib": calibration_images(calib),
                "config": load_config(precision_config), "board": board, "budget": budget,
                "tiles": tiles, "max_loss": parse_loss(max_agreement_loss),
                "preprocess": preprocessing(original.metadata, mean, std),
                "allow_inaccurate": allow_inaccurate}
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


def _build(original: Graph, board: Target, settings: dict, project: Path, tiles,
           budget: float) -> None:
    from m3c.passes import default_pipeline
    from m3c.project.lowering_check import check_lowering

    with ThreadPoolExecutor(2) as background:
        # Drawn while the passes run (one core each).
        scenes = background.submit(calibration_scenes, original.metadata, settings)
        graph = default_pipeline().run(original.copy(), save_dir=project / "intermediate")
        probe = original.to_onnx()
        tasks, feeds = task_names(probe), task_feeds(probe, seed=2024)
        images = [feed["image"].astype(np.float32) for feed in feeds]
        # onnxruntime's outputs on the test images come in beside the emulations, which need
        # only the images.
        references = background.submit(_test_vectors, probe,
                                       graph.metadata["m3c.features_tensor"], tasks, feeds)
        del probe
        plan = plan_kernel(graph.graph)
        kernel = plan.to_json()
        settings = {**settings, "heads": head_runner(graph, tasks, plan.features_shape)}
        # The emulator runs images in parallel threads beside onnxruntime; BLAS threads on
        # top would oversubscribe.
        with threadpool_limits(limits=1, user_api="blas"):
            progress.note(f"compile: calibrating and emulating {_typing_label(settings)}")
            try:
                typing = type_kernel(plan, kernel, settings, images, len(tasks),
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
            expected = background.submit(expected_features, copy.deepcopy(kernel), typing,
                                         vectors)
            progress.note("compile: choosing the MAC array, laying out the weights")
            try:  # the design and the weights, while the fixed-point emulation runs
                choice, layout = _place(kernel, plan, board, typing, budget, tiles)
                write_weights(project / "weights", plan, typing, layout)
            except Exception:
                lowering.result()  # a wrong lowering is what the user must hear of first
                raise
            lowering.result()
            emulated = expected.result()
            if typing.types is not None and not settings["allow_inaccurate"]:
                check_fidelity(kernel, typing, vectors, tasks, emulated, settings["heads"],
                               plan.weights.packed())
            data_files = write_data(project / "data", vectors, tasks, emulated[0])
    if typing.mixed is not None:  # the choice, reusable: --precision-config
        document = precision_config(typing.mixed, settings["config"])
        (project / PRECISION_CONFIG).write_text(json.dumps(document, indent=1, sort_keys=True)
                                                + "\n")
    progress.note("compile: writing the project")
    heads = describe_heads(write_heads(project / "host" / "heads", graph), tasks)
    for task, head in heads.items():
        progress.note(f"compile: {head_line(task, head)}")
    context = template_context(graph, plan, kernel, board, typing, tasks, data_files, choice,
                               layout, settings["preprocess"])
    render_all(project, context)
    manifest = write_manifest(project, graph, plan, kernel, board, typing, tasks, choice,
                               layout, settings["preprocess"], heads)
    write_report(project, build_report(manifest, kernel, choice))
    write_host(project, manifest, context["model_name"])


def _typing_label(settings: dict) -> str:
    return "in float" if settings["precision"] == "float" else f"the {settings['precision']} types"


def _place(kernel: dict, plan: KernelPlan, board: Target, typing: Typing, budget: float,
           tiles) -> tuple[Choice, DdrLayout]:
    """The design point, and the weights laid out for it (each call's DDR segments recorded in
    its kernel.json entry)."""
    choice = choose_design(kernel["calls"], plan.capacities, board,
                           Precision.from_types(typing.types_json()), budget, tiles)
    check_head_widths(kernel["calls"], choice.design.geometry)
    layout = layout_weights(kernel["calls"], choice.design.geometry, typing.ddr_values())
    for call, segments in zip(kernel["calls"], layout.segments, strict=True):
        call["ddr"] = segments
    return choice, layout


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


