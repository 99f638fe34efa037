"""PyTorch M3ViT -> one static ONNX file (opset 17) with the MoE kept complete and dense."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import onnx

from m3c.errors import ExportError

OPSET = 17
# Ops that would mean routing was frozen by tracing or made data-dependent in shape.
FORBIDDEN_OPS = {"NonZero", "Loop", "If", "Compress", "Unique"}


def _export_wrapper(model):
    """A module with the exported signature: (image[, task]) -> one output per task."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image, task=None):
            return self.model(image, 0 if task is None else task)

    return Exported().eval()


def _example_inputs(config) -> tuple:
    import torch

    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, config.in_chans, *config.image_size, generator=generator)
    if len(config.tasks) > 1:
        return (image, torch.tensor(0, dtype=torch.int64))
    return (image,)


def _trace_to_onnx(model, inputs: tuple, path: Path) -> None:
    import torch

    input_names = ["image", "task"][: len(inputs)]
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but gives the plain, static graph we want.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _export_wrapper(model),
            inputs,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=list(model.config.tasks),
            do_constant_folding=True,
        )


def _keep_task_input(model_proto: onnx.ModelProto, config) -> None:
    """Every multi-task model takes `task`, even when no layer reads it (a `single` router
    shared by all tasks): tools and the runtime select the task the same way for every model,
    and the exporter drops inputs nothing uses."""
    names = {value.name for value in model_proto.graph.input}
    if len(config.tasks) > 1 and "task" not in names:
        model_proto.graph.input.append(
            onnx.helper.make_tensor_value_info("task", onnx.TensorProto.INT64, []))


def _check_static(model_proto: onnx.ModelProto) -> None:
    ops = {node.op_type for node in model_proto.graph.node}
    if ops & FORBIDDEN_OPS:
        raise ExportError(
            f"export produced data-dependent ops {sorted(ops & FORBIDDEN_OPS)}",
            remedy="the MoE layer must compute every expert densely; use m3c.frontend.models",
        )
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise ExportError(f"export produced a dynamic shape on {value.name!r}")


def _add_metadata(model_proto: onnx.ModelProto, config) -> None:
    entries = {
        "m3c.tasks": json.dumps(list(config.tasks)),
        "m3c.config": config.to_json(),
        "m3c.producer": "m3c.export",
    }
    del model_proto.metadata_props[:]
    for key, value in sorted(entries.items()):
        prop = model_proto.metadata_props.add()
        prop.key, prop.value = key, value
    model_proto.producer_name = "m3c"
    model_proto.doc_string = f"M3ViT {config.name} ({config.gate}-gate routing)"


def _writable_target(path: Path) -> Path:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ExportError(f"output path {path} is a directory", remedy="give a file name")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ExportError(
            f"cannot write {path}: directory {parent} does not exist or is not writable",
            remedy="choose an output path in a writable directory",
        )
    return path


def export(model, path: str | os.PathLike) -> Path:
    """Write `model` (an `m3c.frontend.models.M3ViT`) as ONNX to `path` and return the path.

    Inputs: `image` float32 [1,3,H,W] and, for several tasks, `task` (int64 scalar).
    Outputs: one per task in config order; all heads run, routing follows `task`.
    """
    target = _writable_target(Path(path))
    config = model.config
    model.eval()
    with tempfile.TemporaryDirectory(prefix="m3c-export-") as scratch:
        traced = Path(scratch) / "model.onnx"
        try:
            _trace_to_onnx(model, _example_inputs(config), traced)
        except Exception as error:  # torch raises many types; report them as one export error
            raise ExportError(f"torch.onnx.export failed for {config.name}: {error}") from error
        model_proto = onnx.load(str(traced))
    _keep_task_input(model_proto, config)
    _check_static(model_proto)
    _add_metadata(model_proto, config)
    partial = target.with_name(target.name + ".partial")
    try:
        onnx.save(model_proto, str(partial))
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ExportError(f"cannot write {target}: {error.strerror}") from error
    return target


def read_metadata(model_proto: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a dict."""
    return {prop.key: prop.value for prop in model_proto.metadata_props}
