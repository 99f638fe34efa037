"""m3c: compile Mixture-of-Experts Vision Transformers (M3ViT) into FPGA accelerator projects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from m3c.errors import M3CError

__version__ = "0.1.0"
__all__ = ["M3CError", "__version__", "export", "lower"]

if TYPE_CHECKING:
    from m3c.api import export, lower


def __getattr__(name: str) -> Any:
    # Keep `import m3c` light: torch and the pass pipeline load only when used.
    if name in ("export", "lower", "compile"):
        from m3c import api

        return getattr(api, name)
    raise AttributeError(f"module 'm3c' has no attribute {name!r}")
