"""The model interface m3c expects: its inputs (`image`, and `task` when there are several
tasks), one output per task, and feeds that exercise it."""

from __future__ import annotations

import json

import numpy as np
import onnx

from m3c.errors import GraphImportError
from m3c.frontend.validate import IMAGE_INPUT


def task_names(model: onnx.ModelProto) -> list[str]:
    """Task names from the export metadata, or the output names when absent."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if "m3c.tasks" in meta:
        return list(json.loads(meta["m3c.tasks"]))
    return [output.name for output in model.graph.output]


def name_image_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its image input named `image`, as every stage, feed and project file
    names it: a model whose one float input (besides `task`) is called otherwise (`x`,
    `pixel_values`) of rank 4 ([1,C,H,W]) gets a renamed copy; any other model is returned as
    it is (a graph of token rows, say, is no image model)."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input
              if value.name not in initializers and value.name != "task"]
    if len(inputs) != 1 or inputs[0].name == IMAGE_INPUT \
            or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT \
            or len(inputs[0].type.tensor_type.shape.dim) != 4 \
            or IMAGE_INPUT in _tensor_names(model.graph):
        return model
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    _rename(renamed.graph, inputs[0].name, IMAGE_INPUT)
    return renamed


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    return names | {name for node in graph.node for name in node.output}


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor `old` wherever `graph` (and the subgraphs it holds) reads it."""
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                _rename(subgraph, old, new)


def sample_feeds(model: onnx.ModelProto, count: int = 2, seed: int = 0) -> list[dict]:
    """`count` images for every task id (one feed dict each), reproducible from `seed`."""
    inputs = {value.name: value for value in model.graph.input}
    if "image" not in inputs:
        raise GraphImportError("the model has no 'image' input to feed test images to",
                               remedy="name the image input 'image' ([1,3,H,W] float32)")
    image_shape = [d.dim_value for d in inputs["image"].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    images = [(rng.standard_normal(image_shape) * (1 + i)).astype(np.float32)
              for i in range(count)]
    if "task" not in inputs:  # one router shared by all tasks: one run computes every output
        return [{"image": image} for image in images]
    tasks = range(len(task_names(model)))
    return [{"image": image, "task": np.array(t, dtype=np.int64)}
            for t in tasks for image in images]


def task_feeds(model: onnx.ModelProto, seed: int = 0) -> list[dict]:
    """One feed per task, in task order (a project's test vector per task): with a task input
    each names its task; without one (a shared router) the tasks share one image."""
    feeds = sample_feeds(model, count=1, seed=seed)
    return feeds if len(feeds) > 1 else feeds * len(task_names(model))


def task_of(feeds: dict, tasks: list[str]) -> str:
    return tasks[int(feeds["task"])] if "task" in feeds else tasks[0]


def tasks_of(feeds: dict, tasks: list[str]) -> list[str]:
    """The tasks whose outputs a run on `feeds` computes: the one its task input names, or
    every task when the model has no task input."""
    return [task_of(feeds, tasks)] if "task" in feeds else list(tasks)


PREPROCESS_KEY = "m3c.preprocess"  # metadata an exporter may write: {"mean": [...], "std": [...]}


def preprocessing(metadata: dict[str, str], mean: list[float] | None = None,
                  std: list[float] | None = None) -> dict[str, list[float]]:
    """The image normalisation a project applies to pictures ((x/255 - mean) / std per
    channel), as project.json's config keys: `mean`/`std` when given (--mean/--std), else the
    model's own `m3c.preprocess` metadata, else nothing (the config's own statistics, or m3c's
    training default)."""
    stored = {}
    if PREPROCESS_KEY in metadata:
        try:
            stored = json.loads(metadata[PREPROCESS_KEY])
        except ValueError:
            stored = None
        if not isinstance(stored, dict):
            raise GraphImportError(f"metadata {PREPROCESS_KEY!r} is not a JSON object",
                                   remedy='write {"mean": [...], "std": [...]} or drop it')
    chosen = {"image_mean": mean if mean is not None else stored.get("mean"),
              "image_std": std if std is not None else stored.get("std")}
    for key, values in chosen.items():
        if values is not None:
            _check_statistic(key, values)
    return {key: [float(v) for v in values] for key, values in chosen.items()
            if values is not None}


def _check_statistic(key: str, values) -> None:
    name = key.removeprefix("image_")
    numbers = np.asarray(values, dtype=np.float64) if isinstance(values, list) else None
    if (numbers is None or numbers.ndim != 1 or len(numbers) not in (1, 3)
            or not np.isfinite(numbers).all() or (name == "std" and (numbers <= 0).any())):
        raise GraphImportError(f"image {name} {values!r}: expected 1 or 3 finite numbers"
                               + (", all positive" if name == "std" else ""),
                               remedy=f"e.g. --{name} 0.485,0.456,0.406" if name == "mean"
                               else f"e.g. --{name} 0.229,0.224,0.225")
