"""How values become DDR words and back: float32 words, or raw ap_fixed integers.

A word format is read from the project (`project.json["types"][role]`); projects compiled
without a `types` entry are float. Every host<->DDR conversion goes through `encode`/`decode`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WordFormat:
    """The element type of one DDR buffer: float32, or a fixed type stored as intN words."""

    dtype: str
    spec: dict | None = None  # the fixed type's JSON (width, integer, frac, modes); None = float

    @classmethod
    def from_types(cls, types: dict | None, role: str, dtype: str | None = None) -> WordFormat:
        """`dtype` overrides the word size (weights.json names the weight blob's)."""
        entry = (types or {}).get(role)
        if not entry or entry.get("cpp", "float") == "float":
            return cls(dtype or "float32")
        # Like sizeof(ap_fixed<W>) in C-simulation: the next power-of-two number of bytes.
        width = int(entry["width"])
        return cls(dtype or next(f"int{w}" for w in (8, 16, 32, 64) if width <= w), dict(entry))

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


def encode(values: np.ndarray, word: WordFormat) -> np.ndarray:
    """Host float values -> the words the kernel reads (quantised as the hardware type says)."""
    values = np.asarray(values, dtype=np.float32).ravel()
    if word.spec is None:
        return values
    from .fixed import FixedType  # the same rounding the numpy emulator uses

    return FixedType.from_json(word.spec).from_float(values).astype(word.dtype)


def decode(words: np.ndarray, word: WordFormat) -> np.ndarray:
    """Words the kernel wrote -> float32 values (raw / 2**frac for fixed)."""
    if word.spec is None:
        return np.asarray(words, dtype=np.float32)
    return (np.asarray(words, dtype=np.float64) * 2.0 ** -int(word.spec["frac"])).astype(
        np.float32)
