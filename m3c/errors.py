"""Errors a user can cause. The CLI prints them in one or two lines and exits with code 2."""

from __future__ import annotations


class M3CError(Exception):
    """A problem with the user's input: names what is wrong and what to do about it."""

    def __init__(self, message: str, remedy: str | None = None) -> None:
        self.message = message
        self.remedy = remedy
        super().__init__(message if remedy is None else f"{message}\n  remedy: {remedy}")


class ModelError(M3CError):
    """A PyTorch model, preset or checkpoint cannot be built or loaded."""


class ExportError(M3CError):
    """The PyTorch model cannot be written to ONNX."""


class GraphImportError(M3CError):
    """An ONNX file cannot be read or is outside what m3c supports."""


class LoweringError(M3CError):
    """A graph pass cannot transform the graph."""


class CodegenError(M3CError):
    """The project cannot be generated for the chosen target."""


class AcceleratorError(M3CError):
    """The host runtime cannot run the compiled project."""
