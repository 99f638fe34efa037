"""Errors a user can cause. The CLI prints them in one or two lines and exits with code 2.

A message stays short: when the explanation is long (a resource table, a compiler's output, a
list of keys), the error carries it as `detail`, and the CLI writes that to a file it names.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


class M3CError(Exception):
    """A problem with the user's input: names what is wrong and what to do about it."""

    def __init__(self, message: str, remedy: str | None = None,
                 detail: str | None = None) -> None:
        self.message = message
        self.remedy = remedy
        self.detail = detail  # long supporting text, written to a file by the CLI
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


class ArgumentError(M3CError):
    """A command-line or API argument is outside its valid range."""


class ProjectError(M3CError):
    """A compiled project's files are missing, truncated or inconsistent."""


class NumericError(M3CError):
    """NaN or infinite values where finite numbers are needed (weights, images, outputs)."""


class OutputError(M3CError):
    """An output cannot be written (disk full, read-only, locked by another m3c run)."""


class EvaluationError(M3CError):
    """Images, labels, projects or workers an evaluation cannot use."""


class OnnxRuntimeError(M3CError):
    """onnxruntime refused to load or run a model m3c handed it."""


def log_dir() -> Path:
    """Where long error texts and tracebacks go: $M3C_LOG_DIR, else ~/.cache/m3c/logs, else
    the system temp directory (a read-only home must not hide the error itself)."""
    candidates = [os.environ.get("M3C_LOG_DIR"),
                  os.environ.get("M3C_CACHE_DIR") and str(Path(os.environ["M3C_CACHE_DIR"])
                                                          / "logs"),
                  str(Path.home() / ".cache" / "m3c" / "logs"),
                  str(Path(tempfile.gettempdir()) / f"m3c-logs-{os.getuid()}")]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    return Path(tempfile.gettempdir())


def write_log(stem: str, text: str) -> Path | None:
    """Write `text` to a new file in `log_dir()`; None when nothing is writable (the disk
    may be the problem being reported)."""
    try:
        handle, name = tempfile.mkstemp(prefix=f"{stem}-", suffix=".txt", dir=log_dir())
        with os.fdopen(handle, "w", encoding="utf-8", errors="replace") as file:
            file.write(text)
        return Path(name)
    except OSError:
        return None


_OS_REMEDIES = {
    errno.ENOSPC: ("no space left on the device", "free some space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
    errno.EROFS: ("read-only file system", "write to a writable location (-o)"),
    errno.EACCES: ("permission denied", "check the file's permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "check the file's permissions"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.ENOTDIR: ("a path component is not a directory", "check the path"),
    errno.EISDIR: ("is a directory", "give a file path"),
    errno.EEXIST: ("already exists", "remove it or choose another path"),
    errno.ENOTEMPTY: ("directory not empty", "remove it or choose another path"),
}


def from_os_error(error: OSError) -> OutputError:
    """An OSError (full disk, read-only file system, missing file...) as a one-line error."""
    what, remedy = _OS_REMEDIES.get(error.errno, (error.strerror or type(error).__name__,
                                                  "check the paths and the disk"))
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    return OutputError(f"{where}: {what}" if where else what, remedy=remedy)
