"""The runtime's error class: `m3c.M3CError` inside m3c, a stand-in in the board copy.

On the board the runtime is a plain copy (`host/m3c_runtime/`) and m3c is not installed, so the
class falls back to a small local one with the same `message`/`remedy` attributes.
"""

from __future__ import annotations

if __name__.startswith("m3c."):
    from m3c.errors import AcceleratorError
else:

    class AcceleratorError(Exception):  # type: ignore[no-redef]
        """The host runtime cannot run the compiled project."""

        def __init__(self, message: str, remedy: str | None = None) -> None:
            self.message = message
            self.remedy = remedy
            super().__init__(message if remedy is None else f"{message}\n  remedy: {remedy}")


__all__ = ["AcceleratorError"]
