"""Saving many stages of one model without writing its weights many times.

Stages share most initializers (a pass renames or regroups weights but rarely changes their
bytes), so every stage file stores its large tensors as ONNX external data in one shared file,
each distinct byte string written once. Each stage stays a valid, loadable ONNX model.

A weight array already written is recognised by identity, so a stage costs nothing for the
weights it did not change: no copy into protobuf, no hash.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

SHARED_FILE = "weights.data"
MIN_BYTES = 1024  # smaller tensors stay inline


class StageStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.offsets: dict[bytes, int] = {}  # content digest -> offset in the shared file
        self.written: dict[int, tuple] = {}  # id(source) -> (weak source, offset, length)
        self.size = 0

    def save(self, graph: gs.Graph, export: Callable[[gs.Graph], onnx.ModelProto],
             path: Path) -> None:
        """Write `export(graph)` to `path` with the large constants in the shared file."""
        with open(self.folder / SHARED_FILE, "ab") as shared, self._external(graph, shared):
            model = export(graph)
        onnx.save(model, str(path))

    @contextmanager
    def _external(self, graph: gs.Graph, shared) -> Iterator[None]:
        """Large constants stand in as external-data references while `graph` is exported."""
        swapped = []
        try:
            for constant in _large_constants(graph):
                reference = self._reference(constant, shared)
                swapped.append((constant, constant._values))
                constant._values = LazyValues(reference)
            yield
        finally:
            for constant, values in swapped:
                constant._values = values

    def _reference(self, constant: gs.Constant, shared) -> onnx.TensorProto:
        source = constant._values  # a numpy array, or an imported tensor not yet loaded
        if type(source) is LazyValues and source.tensor.HasField("raw_data"):
            data_type, dims = source.tensor.data_type, list(source.tensor.dims)
            content = lambda: source.tensor.raw_data  # noqa: E731
        else:
            values = np.ascontiguousarray(constant.values)
            data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
            dims, content = list(values.shape), values.tobytes
        tensor = onnx.TensorProto(name=constant.name, data_type=data_type, dims=dims)
        offset, length = self._offset(constant._values, content, shared)
        for key, value in (("location", SHARED_FILE), ("offset", offset), ("length", length)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        return tensor

    def _offset(self, source, content: Callable[[], bytes], shared) -> tuple[int, int]:
        """Where `source`'s bytes are in the shared file, writing them if new."""
        known = self.written.get(id(source))
        if known is not None and known[0]() is source:
            return known[1], known[2]
        data = content()
        key = hashlib.sha1(data).digest()
        if key not in self.offsets:
            self.offsets[key] = self.size
            shared.write(data)
            self.size += len(data)
        self.written[id(source)] = (weakref.ref(source), self.offsets[key], len(data))
        return self.offsets[key], len(data)


def _large_constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    seen = set()
    attribute_constants = (value for node in graph.nodes for value in node.attrs.values()
                           if isinstance(value, gs.Constant))
    for tensor in [*graph.tensors().values(), *attribute_constants]:
        if isinstance(tensor, gs.Constant) and id(tensor) not in seen and (
                tensor._values.nbytes >= MIN_BYTES):
            seen.add(id(tensor))
            yield tensor
