"""The public Python API: export, lower, compile. The CLI is a thin layer over these."""

from __future__ import annotations

import os
from pathlib import Path

from m3c.export import export as _export


def export(model, path: str | os.PathLike) -> Path:
    """Write an `m3c.models.M3ViT` to `path` as static ONNX (opset 17); return the path."""
    return _export(model, path)
