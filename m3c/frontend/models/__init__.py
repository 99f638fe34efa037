"""The M3ViT reference model in plain PyTorch (needs the `torch` extra).

The configs and the synthetic scenes need numpy alone: the torch parts load on first use, so
calibration and evaluation on scenes do not import torch.
"""

from m3c.frontend.models.config import DATASETS, ModelConfig, preset, preset_names

__all__ = [
    "DATASETS",
    "M3ViT",
    "ModelConfig",
    "build_model",
    "init_weights",
    "preset",
    "preset_names",
]
_TORCH_PARTS = ("M3ViT", "build_model", "init_weights")


def __getattr__(name: str):
    if name in _TORCH_PARTS:
        from m3c.frontend.models import vit

        return getattr(vit, name)
    raise AttributeError(f"module 'm3c.frontend.models' has no attribute {name!r}")
