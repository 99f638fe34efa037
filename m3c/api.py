"""The public Python API: export, lower. The CLI is a thin layer over these."""

from __future__ import annotations

import os
from pathlib import Path

from m3c.frontend.exporter import export as _export
from m3c.frontend.load import load_model
from m3c.hw.dse import DEFAULT_BUDGET
from m3c.ir.graph import Graph


def export(model, path: str | os.PathLike) -> Path:
    """Write an `m3c.frontend.models.M3ViT` to `path` as static ONNX (opset 17); return the path."""
    return _export(model, path)


def lower(model, until: str | None = None, save_dir: str | os.PathLike | None = None) -> Graph:
    """Run the lowering pipeline on a path, `onnx.ModelProto`, gs.Graph or `Graph`.

    Returns the expert-major accelerator graph (task heads in `.heads`), or the graph after
    pass `until`. With `save_dir`, every stage is saved there as `NN_<pass>.onnx`.
    """
    from m3c.passes import default_pipeline

    return default_pipeline().run(load_model(model), until=until, save_dir=save_dir)


def compile(model, target: str = "zcu104", out: str | os.PathLike = "build",  # noqa: A001
            precision: str = "fixed", force: bool = False, calib=None,
            precision_config: str | os.PathLike | None = None, tiles=None,
            budget: float = DEFAULT_BUDGET, max_agreement_loss: str | float = "1%",
            allow_inaccurate: bool = False) -> Path:
    """Compile an ONNX model into an accelerator project directory; return its path.

    Fixed precision (the default) calibrates its integer bits on `calib` (images or a .npy);
    `precision_config` overrides types per class and weight types per layer. `tiles` =
    (TK, TM) forces the MAC array's size; otherwise the fastest that fits
    `budget` x the resource caps (m3c.hw.resources.CAPS) is chosen. The project's report/
    holds the resource, latency and energy estimates. `precision` "int8" multiplies 8-bit
    operands two per DSP; "mixed" chooses 8 or 16 bits per layer within `max_agreement_loss`.
    A fixed-point project whose outputs leave the limits of m3c.project.fidelity against the
    float model is refused unless `allow_inaccurate`.
    """
    from m3c.project.compile import compile_model

    return compile_model(model, target=target, out=out, precision=precision, force=force,
                         calib=calib, precision_config=precision_config, tiles=tiles,
                         budget=budget, max_agreement_loss=max_agreement_loss,
                         allow_inaccurate=allow_inaccurate)
