"""The M3ViT reference model in plain PyTorch (needs the `torch` extra)."""

from m3c.models.config import DATASETS, ModelConfig, preset, preset_names
from m3c.models.vit import M3ViT, build_model, init_weights

__all__ = [
    "DATASETS",
    "M3ViT",
    "ModelConfig",
    "build_model",
    "init_weights",
    "preset",
    "preset_names",
]
