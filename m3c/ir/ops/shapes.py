"""Small helpers for op shape rules."""

from __future__ import annotations


def shape(tensor) -> list:
    """A tensor's shape as a list (empty when unknown)."""
    return list(tensor.shape) if tensor.shape is not None else []
