"""Reading a model: a path, an ONNX model or a graph becomes a checked, executable `Graph`."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from m3c.errors import GraphImportError
from m3c.frontend.interface import name_image_input
from m3c.frontend.validate import check_model
from m3c.ir.graph import Graph


def load_model(source) -> Graph:
    """A `Graph` from a path, an `onnx.ModelProto`, a gs.Graph or a `Graph`."""
    if isinstance(source, Graph):
        return source.copy()
    if isinstance(source, gs.Graph):
        return Graph(source.copy())
    where = "the model"
    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        source = _read(Path(source))
    if not isinstance(source, onnx.ModelProto):
        raise GraphImportError(f"cannot lower a {type(source).__name__}",
                               remedy="pass a path, an onnx.ModelProto or a gs.Graph")
    source = name_image_input(source)
    _check_static_inputs(source)
    check_model(source, where)  # structure, metadata, inputs and weights, up front
    metadata = {prop.key: prop.value for prop in source.metadata_props}
    return Graph(gs.import_onnx(source), metadata)


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise GraphImportError(f"{path}: no such file", remedy="check the path")
    if _is_torch_checkpoint(path):
        raise GraphImportError(f"{path}: a PyTorch checkpoint, not an ONNX model",
                               remedy=f"export it first: m3c export {path} --preset NAME "
                                      "-o model.onnx")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) \
            as error:
        raise GraphImportError(f"{path}: not a readable ONNX model ({error})",
                               remedy="re-export it; the file may be truncated") from error
    if not model.graph.node:
        raise GraphImportError(f"{path}: the ONNX graph is empty or truncated",
                               remedy="re-export the model")
    return model


def _is_torch_checkpoint(path: Path) -> bool:
    """torch.save writes a zip archive (or, before torch 1.6, a pickle); an ONNX file is a
    protobuf, which starts with neither."""
    with path.open("rb") as file:
        head = file.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def _check_static_inputs(model: onnx.ModelProto) -> None:
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        dynamic = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
        if dynamic:
            raise GraphImportError(
                f"input {value.name!r} has dynamic dimensions {dynamic}",
                remedy="export with static shapes (m3c export does), or fix them with "
                       "onnxruntime.tools.make_dynamic_shape_fixed")
