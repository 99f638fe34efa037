"""Shared fixtures: exported models are built once per session and reused."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def export_model(tmp_path_factory):
    """Export a random preset model once per (preset, gate, seed); returns (model, path)."""
    cache: dict = {}

    def get(preset: str, gate: str = "multi", seed: int = 0, **overrides):
        key = (preset, gate, seed, repr(sorted(overrides.items())))
        if key not in cache:
            from m3c.frontend.exporter import export
            from m3c.frontend.models import build_model

            model = build_model(preset, seed=seed, gate=gate, **overrides)
            name = f"{preset}-{gate}-{seed}-{abs(hash(key[3])) % 10**6}.onnx"
            cache[key] = (model, export(model, tmp_path_factory.mktemp("onnx") / name))
        return cache[key]

    return get


@pytest.fixture(scope="module")
def compiled(export_model, tmp_path_factory):
    """Compile an exported preset once per module; returns (onnx path, project directory)."""
    cache: dict = {}

    def get(preset: str, gate: str = "multi", precision: str = "float", **overrides):
        key = (preset, gate, precision, repr(sorted(overrides.items())))
        if key not in cache:
            from m3c.check.hygiene import hygiene_findings
            from m3c.project.compile import compile_model

            _, path = export_model(preset, gate, **overrides)
            out = tmp_path_factory.mktemp(precision) / "build"
            cache[key] = (path, compile_model(path, out=out, precision=precision))
            # every compiled project passes the HLS hygiene checks
            assert hygiene_findings(cache[key][1]) == []
        return cache[key]

    return get


def pytest_configure(config):
    del config
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # graph-optimiser notes are not test output
