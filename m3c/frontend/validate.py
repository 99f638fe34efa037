"""Validation up front: a model, a compiled project's files and argument values are checked
before any slow or allocating step, so a bad input ends as one `M3CError` naming what is wrong
instead of an exception deep inside onnxruntime, a pass or numpy.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import onnx

from m3c.errors import ArgumentError, GraphImportError, NumericError, ProjectError

# The canonical graph form: an image and, with several tasks, a scalar task id.
IMAGE_INPUT, TASK_INPUT = "image", "task"
DEFAULT_DDR_BYTES = 2 << 30  # the ZCU104's PS DDR
# Activations of every layer live beside the image in DDR and on chip (tokens x dim per
# layer, several at once): an image beyond 1/16 of DDR cannot fit with them.
IMAGE_SHARE_OF_DDR = 16
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}
RECOMPILE = "recompile the project with `m3c compile MODEL -o DIR --force`"


def check_model(model: onnx.ModelProto, where: str, memory_bytes: int = DEFAULT_DDR_BYTES) -> None:
    """Structure, metadata, inputs, weights and sizes of an ONNX model m3c is asked to read.

    Raises GraphImportError (or NumericError for NaN/Inf weights) naming the tensor, node or
    metadata key and what to do.
    """
    bad_text = _invalid_text(model, "model")
    if bad_text:
        raise GraphImportError(f"{where}: {bad_text} is not valid UTF-8 text",
                               remedy="re-export the model; ONNX names and metadata are UTF-8")
    _check_opsets(model, where)
    _check_metadata(model, where)
    _check_producers(model, where)
    initializer_bytes = _check_initializers(model, where)
    image_bytes = _check_inputs(model, where)
    if image_bytes * IMAGE_SHARE_OF_DDR > memory_bytes or initializer_bytes > memory_bytes:
        raise GraphImportError(
            f"{where}: image of {image_bytes / 2**20:.0f} MiB and weights of "
            f"{initializer_bytes / 2**20:.0f} MiB do not fit the target's "
            f"{memory_bytes / 2**30:.0f} GiB of DDR with their activations",
            remedy="export the model at a smaller input size")
    serialized = model.SerializeToString()  # once: both checks would serialize the model
    try:
        onnx.checker.check_model(serialized)
        onnx.shape_inference.infer_shapes(serialized, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise GraphImportError(f"{where}: the ONNX checker rejects the model: "
                               f"{_first_line(str(error))}",
                               remedy="re-export the model (m3c export writes valid ONNX)",
                               detail=str(error)) from None


def _invalid_text(message, path: str) -> str | None:
    """The path of the first string field that is not UTF-8 (protobuf's upb parser hands such
    a field over as bytes, and onnx's C++ checker then fails on it), or None."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        values = value if _repeated(field) else [value]
        for index, item in enumerate(values):
            where = f"{path}.{field.name}" + (f"[{index}]" if _repeated(field) else "")
            if field.type == FieldDescriptor.TYPE_STRING and isinstance(item, bytes):
                return where
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                found = _invalid_text(item, where)
                if found:
                    return found
    return None


def _repeated(field) -> bool:
    # `is_repeated` is the newer protobuf spelling; `label` the older one.
    repeated = getattr(field, "is_repeated", None)
    return repeated if repeated is not None else field.label == field.LABEL_REPEATED


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _check_opsets(model: onnx.ModelProto, where: str) -> None:
    default = [entry for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if not default:
        raise GraphImportError(f"{where}: no opset_import for the standard ONNX domain",
                               remedy="re-export with an opset (m3c export uses opset 17)")
    newest = onnx.defs.onnx_opset_version()
    for entry in default:
        if not 7 <= entry.version <= newest:
            raise GraphImportError(f"{where}: ONNX opset {entry.version} is outside the "
                                   f"supported 7..{newest}", remedy="re-export with opset 17")


def _check_metadata(model: onnx.ModelProto, where: str) -> None:
    metadata = {}
    for prop in model.metadata_props:
        if prop.key in metadata:
            raise GraphImportError(f"{where}: metadata key {prop.key!r} appears twice",
                                   remedy="re-export the model")
        metadata[prop.key] = prop.value
    if "m3c.config" in metadata:
        config = _json_metadata(metadata, "m3c.config", where)
        if not isinstance(config, dict):
            raise GraphImportError(f"{where}: metadata m3c.config is not a JSON object",
                                   remedy="re-export the model with m3c export")
    if "m3c.tasks" not in metadata:
        return
    tasks = _json_metadata(metadata, "m3c.tasks", where)
    outputs = [output.name for output in model.graph.output]
    if (not isinstance(tasks, list) or not tasks
            or not all(isinstance(task, str) and task for task in tasks)
            or len(set(tasks)) != len(tasks)):
        raise GraphImportError(f"{where}: metadata m3c.tasks must be a non-empty JSON list of "
                               "distinct task names", remedy="re-export the model")
    missing = [task for task in tasks if task not in outputs]
    if missing:
        raise GraphImportError(f"{where}: metadata m3c.tasks names {missing[:3]}, which are not "
                               f"outputs of the graph ({outputs[:5]})",
                               remedy="name one graph output per task, in m3c.tasks order")


def _json_metadata(metadata: dict[str, str], key: str, where: str):
    try:
        return json.loads(metadata[key])
    except ValueError as error:
        raise GraphImportError(f"{where}: metadata {key} is not valid JSON ({error})",
                               remedy="re-export the model with m3c export") from None


def _check_producers(model: onnx.ModelProto, where: str) -> None:
    producers: dict[str, str] = {}
    sources = [(value.name, "graph input") for value in model.graph.input]
    sources += [(init.name, "initializer") for init in model.graph.initializer
                if init.name not in {value.name for value in model.graph.input}]
    for index, node in enumerate(model.graph.node):
        sources += [(name, f"node {node.name or index!r}") for name in node.output if name]
    for name, source in sources:
        if name in producers:
            raise GraphImportError(f"{where}: tensor {name!r} is produced twice ({producers[name]}"
                                   f" and {source})", remedy="give every tensor one producer")
        producers[name] = source


def _check_initializers(model: onnx.ModelProto, where: str) -> int:
    """Every initializer decodes to its declared dtype and shape, with finite values; returns
    their total bytes."""
    total = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            continue  # read by onnx.load from the file beside the model, checked by the checker
        try:
            values = onnx.numpy_helper.to_array(init)
        except Exception as error:  # noqa: BLE001 - onnx raises several types for bad data
            raise GraphImportError(f"{where}: initializer {init.name!r} does not decode as its "
                                   f"declared type {init.data_type} and shape {list(init.dims)} "
                                   f"({_first_line(str(error))})",
                                   remedy="re-export the model") from None
        if values.size != math.prod(init.dims):
            raise GraphImportError(f"{where}: initializer {init.name!r} holds {values.size} "
                                   f"values for shape {list(init.dims)}",
                                   remedy="re-export the model")
        if init.data_type in FLOAT_TYPES and not np.isfinite(values).all():
            raise NumericError(f"{where}: weight {init.name!r} contains NaN or infinite values",
                               remedy="check the checkpoint; retrain or re-export the model")
        total += values.nbytes
    return total


def _check_inputs(model: onnx.ModelProto, where: str) -> int:
    """Inputs are typed with static shapes. A model with an `image` input is an M3ViT: its
    image is [1,C,H,W] float32 and its only other input an optional scalar int64 `task`.
    Returns the image's bytes (0 for other graphs, which `m3c.lower` also takes)."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = {value.name: value for value in model.graph.input if value.name not in initializers}
    for value in inputs.values():
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.elem_type:
            raise GraphImportError(f"{where}: input {value.name!r} has no tensor type",
                                   remedy="declare the input's element type and shape")
    if IMAGE_INPUT not in inputs:
        return 0
    extra = sorted(set(inputs) - {IMAGE_INPUT, TASK_INPUT})
    if extra:
        raise GraphImportError(f"{where}: graph inputs {extra[:3]} are neither 'image' nor "
                               "'task' (a weight exported as an input?)",
                               remedy="export weights as initializers (constants)")
    dims = _input_dims(inputs[IMAGE_INPUT], onnx.TensorProto.FLOAT, "float32", where)
    if len(dims) != 4 or dims[0] != 1 or min(dims) < 1:
        raise GraphImportError(f"{where}: input 'image' has shape {dims}, not [1,C,H,W]",
                               remedy="export with a batch of one image")
    tasks = _metadata_tasks(model)
    if len(tasks) > 1 and TASK_INPUT not in inputs:
        raise GraphImportError(f"{where}: {len(tasks)} tasks but no 'task' input: nothing "
                               "selects a task (a model without MoE layers?)",
                               remedy="m3c compiles models with task-routed MoE layers; "
                                      "export one with a 'task' input")
    if TASK_INPUT in inputs:
        task_dims = _input_dims(inputs[TASK_INPUT], onnx.TensorProto.INT64, "int64", where)
        if task_dims:
            raise GraphImportError(f"{where}: input 'task' has shape {task_dims}; it must be a "
                                   "scalar (shape [])", remedy="export the task id as a scalar")
    return 4 * math.prod(dims)


def _metadata_tasks(model: onnx.ModelProto) -> list:
    """m3c.tasks (already checked by _check_metadata), or [] without it."""
    value = next((prop.value for prop in model.metadata_props if prop.key == "m3c.tasks"),
                 None)
    return json.loads(value) if value is not None else []


def _input_dims(value: onnx.ValueInfoProto, elem_type: int, spelled: str,
                where: str) -> list[int]:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type != elem_type:
        raise GraphImportError(f"{where}: input {value.name!r} must be a {spelled} tensor",
                               remedy=f"declare {value.name!r} as {spelled}")
    if not tensor.HasField("shape"):
        raise GraphImportError(f"{where}: input {value.name!r} has no shape",
                               remedy="export with static shapes")
    return [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim]


# --- compiled projects -------------------------------------------------------------------

MANIFEST_FIELDS = {"tasks": list, "precision": str, "types": dict, "tolerance": (int, float),
                   "config": dict, "image_shape": list, "features_shape": list,
                   "weight_elements": int, "tiles": list, "row_tile": int, "query_tile": int,
                   "ddr": dict, "target": str}
KERNEL_FIELDS = {"calls": list, "capacities": dict, "weight_elements": int,
                 "image_shape": list, "features_shape": list}


def load_json(path: Path, expected: type = dict):
    """A JSON document of the expected type, or ProjectError saying what is wrong with it."""
    if not path.is_file():
        raise ProjectError(f"{path} is missing: not a compiled m3c project", remedy=RECOMPILE)
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise ProjectError(f"{path} is not valid JSON (truncated?): {error}",
                           remedy=RECOMPILE) from None
    if not isinstance(document, expected):
        raise ProjectError(f"{path} holds a JSON {type(document).__name__}, not an "
                           f"{expected.__name__}", remedy=RECOMPILE)
    return document


def _check_fields(document: dict, fields: dict, path: Path) -> None:
    missing = sorted(name for name in fields if name not in document)
    if missing:
        raise ProjectError(f"{path} lacks {', '.join(missing[:5])}", remedy=RECOMPILE)
    for name, kind in fields.items():
        value = document[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProjectError(f"{path}: {name!r} has the wrong type "
                               f"({type(value).__name__})", remedy=RECOMPILE)


def _positive_ints(values, name: str, path: Path) -> None:
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                             for v in values):
        raise ProjectError(f"{path}: {name} must be a list of positive integers",
                           remedy=RECOMPILE)


def load_project(project: str | Path) -> tuple[dict, dict]:
    """project.json and kernel.json of a compiled project, checked for the fields and types
    report, simulate, verify and run read."""
    project = Path(project)
    if not project.is_dir():
        raise ProjectError(f"{project}: no such project directory",
                           remedy="pass the -o directory of `m3c compile`")
    manifest_path, kernel_path = project / "project.json", project / "kernel.json"
    manifest, kernel = load_json(manifest_path), load_json(kernel_path)
    _check_fields(manifest, MANIFEST_FIELDS, manifest_path)
    _check_fields(kernel, KERNEL_FIELDS, kernel_path)
    tasks = manifest["tasks"]
    if not tasks or not all(isinstance(t, str) and t for t in tasks) or (
            len(set(tasks)) != len(tasks)):
        raise ProjectError(f"{manifest_path}: tasks must be distinct non-empty names",
                           remedy=RECOMPILE)
    if manifest["precision"] not in ("fixed", "float"):
        raise ProjectError(f"{manifest_path}: unknown precision {manifest['precision']!r}",
                           remedy=RECOMPILE)
    if not math.isfinite(manifest["tolerance"]) or manifest["tolerance"] < 0:
        raise ProjectError(f"{manifest_path}: tolerance must be finite and >= 0",
                           remedy=RECOMPILE)
    for name in ("image_shape", "features_shape", "tiles"):
        _positive_ints(manifest[name], name, manifest_path)
    if manifest["image_shape"] != kernel["image_shape"] or (
            manifest["weight_elements"] != kernel["weight_elements"]):
        raise ProjectError(f"{manifest_path} and {kernel_path} disagree on the image shape or "
                           "the weight count", remedy=RECOMPILE)
    _check_calls(kernel, kernel_path)
    return manifest, kernel


def _check_calls(kernel: dict, path: Path) -> None:
    """The call list's shape, independent of the kernel's op set (which codegen owns): every
    call an object with a string op and layer, every number finite; capacities integers."""
    if not kernel["calls"]:
        raise ProjectError(f"{path}: the kernel has no calls", remedy=RECOMPILE)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in kernel["capacities"].values()):
        raise ProjectError(f"{path}: capacities must be non-negative integers",
                           remedy=RECOMPILE)
    for index, call in enumerate(kernel["calls"]):
        if not isinstance(call, dict) or not isinstance(call.get("op"), str) or (
                not isinstance(call.get("layer"), str)):
            raise ProjectError(f"{path}: call {index} is not an object with an op and a layer",
                               remedy=RECOMPILE)
        if not all(math.isfinite(value) for value in call.values()
                   if isinstance(value, float)):
            raise ProjectError(f"{path}: call {index} ({call['op']}) holds NaN or Inf",
                               remedy=RECOMPILE)


# --- argument ranges ---------------------------------------------------------------------

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not > 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not >= 0")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_empty(text: str) -> str:
    """argparse type: a non-blank string (task names, paths)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def check_count(value: int, name: str) -> None:
    """ArgumentError unless `value` is an integer >= 1 (API callers skip argparse)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ArgumentError(f"{name} must be an integer >= 1, not {value!r}")
