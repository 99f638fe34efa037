"""Model configurations and the presets that mirror the paper's settings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from m3c.errors import ModelError

# Output channels per task, as in the M3ViT code's dataset definitions.
DATASETS: dict[str, dict] = {
    "pascal": {
        "image_size": (512, 512),
        "tasks": {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3, "edge": 1},
    },
    "nyud": {"image_size": (480, 640), "tasks": {"semseg": 40, "depth": 1}},
    "cityscapes": {"image_size": (128, 256), "tasks": {"semseg": 7, "depth": 1}},
}

# micro keeps each dataset's aspect ratio at a resolution a CPU runs in milliseconds.
MICRO_IMAGE_SIZE = {"pascal": (64, 64), "nyud": (48, 64), "cityscapes": (32, 64)}

SIZES: dict[str, dict] = {
    "micro": {"embed_dim": 32, "depth": 4, "num_heads": 2, "num_experts": 4, "top_k": 2,
              "decoder_channels": 16},
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3, "num_experts": 16, "top_k": 4,
             "decoder_channels": 256},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 12, "num_experts": 16, "top_k": 4,
              "decoder_channels": 256},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12, "num_experts": 16, "top_k": 4,
             "decoder_channels": 256},
}

# multi: one router per task; task: one router over token + task embedding; single: one
# router shared by every task, without task input (the paper's M3ViT-Single, Table 3).
GATES = ("multi", "task", "single")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the architecture of an M3ViT model."""

    name: str
    image_size: tuple[int, int]
    tasks: dict[str, int]
    embed_dim: int
    depth: int
    num_heads: int
    num_experts: int
    top_k: int
    decoder_channels: int
    patch_size: int = 16
    in_chans: int = 3
    mlp_ratio: float = 4.0
    moe_mlp_ratio: float = 1.0
    moe_blocks: tuple[int, ...] = field(default=())
    gate: str = "multi"
    task_embed_dim: int = 0
    noise_std: float = -1.0
    layer_norm_eps: float = 1e-6
    balance_loss_weight: float = 0.01

    def __post_init__(self) -> None:
        if not self.moe_blocks:
            object.__setattr__(self, "moe_blocks", tuple(range(1, self.depth, 2)))
        if self.task_embed_dim <= 0:
            object.__setattr__(self, "task_embed_dim", len(self.tasks))
        if self.noise_std < 0:
            object.__setattr__(self, "noise_std", 1.0 / self.num_experts)
        self.validate()

    def validate(self) -> None:
        h, w = self.image_size
        problems = []
        if h % self.patch_size or w % self.patch_size:
            problems.append(f"image size {h}x{w} is not a multiple of patch {self.patch_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} not divisible by {self.num_heads} heads")
        if not 1 <= self.top_k <= self.num_experts:
            problems.append(f"top_k {self.top_k} must be in 1..num_experts ({self.num_experts})")
        if self.gate not in GATES:
            problems.append(f"gate {self.gate!r} must be one of {GATES}")
        if any(not 0 <= b < self.depth for b in self.moe_blocks):
            problems.append(f"moe_blocks {self.moe_blocks} outside 0..{self.depth - 1}")
        if not self.tasks:
            problems.append("a model needs at least one task")
        if problems:
            raise ModelError(f"invalid model config {self.name!r}: " + "; ".join(problems))

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        gh, gw = self.grid
        return gh * gw + 1

    @property
    def expert_hidden(self) -> int:
        return int(self.embed_dim * self.moe_mlp_ratio)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        data["image_size"] = tuple(data["image_size"])
        data["moe_blocks"] = tuple(data["moe_blocks"])
        return cls(**data)

    def replace(self, **changes) -> ModelConfig:
        data = asdict(self)
        data.update(changes)
        if "num_experts" in changes and "noise_std" not in changes:
            data["noise_std"] = -1.0
        return ModelConfig(**data)


def preset_names() -> list[str]:
    return [f"{size}-{dataset}" for size in SIZES for dataset in DATASETS]


def preset(name: str, **overrides) -> ModelConfig:
    """The config named `<size>-<dataset>`, e.g. `small-nyud`; keyword overrides win."""
    size, _, dataset = name.partition("-")
    if size not in SIZES or dataset not in DATASETS:
        raise ModelError(
            f"unknown preset {name!r}",
            remedy="choose one of: " + ", ".join(preset_names()),
        )
    data = DATASETS[dataset]
    image_size = MICRO_IMAGE_SIZE[dataset] if size == "micro" else data["image_size"]
    settings = {"name": name, "image_size": tuple(image_size), "tasks": dict(data["tasks"])}
    settings.update(SIZES[size])
    if dataset == "cityscapes" and size != "micro":
        # The Edge-MoE hardware configuration: top-2 routing, expert hidden = 2*D.
        settings.update(top_k=2, moe_mlp_ratio=2.0)
    settings.update(overrides)
    return ModelConfig(**settings)
