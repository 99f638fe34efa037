"""Saving many stages of one model without writing its weights many times.

Stages share most initializers (a pass renames or regroups weights but rarely changes their
bytes), so every stage file stores its large tensors as ONNX external data in one shared file,
each distinct byte string written once. Each stage stays a valid, loadable ONNX model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data

SHARED_FILE = "weights.data"
MIN_BYTES = 1024  # smaller tensors stay inline


class StageStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.offsets: dict[bytes, int] = {}
        self.size = 0

    def save(self, model: onnx.ModelProto, path: Path) -> None:
        with open(self.folder / SHARED_FILE, "ab") as shared:
            for tensor in _tensors(model):
                data = tensor.raw_data
                if len(data) < MIN_BYTES:
                    continue
                key = hashlib.sha1(data).digest()
                if key not in self.offsets:
                    self.offsets[key] = self.size
                    shared.write(data)
                    self.size += len(data)
                set_external_data(tensor, SHARED_FILE, self.offsets[key], len(data))
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
        onnx.save(model, str(path))


def _tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
