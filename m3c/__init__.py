"""m3c: compile Mixture-of-Experts Vision Transformers (M3ViT) into FPGA accelerator projects."""

from __future__ import annotations

from m3c.api import compile, export, lower  # noqa: A004
from m3c.errors import M3CError

__version__ = "0.1.0"
__all__ = ["M3CError", "__version__", "compile", "export", "lower"]
