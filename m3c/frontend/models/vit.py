"""The M3ViT model in plain PyTorch: a ViT encoder with MoE blocks and one PUP decoder per task.

Module and parameter names follow the public M3ViT code so its checkpoints load directly
(see `m3c.frontend.models.checkpoint`). The MoE layer computes every expert densely and
combines with a sparse [tokens, experts] weight matrix: the result equals the token-by-token
computation, and the ONNX export keeps all experts and the routing in the graph with static shapes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from m3c.frontend.models.config import ModelConfig


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], source_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Resize a [1, 1+h*w, D] position embedding (cls first) to another patch grid.

    Without `source_grid` the stored grid must be square (as in pretrained checkpoints).
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    old = patch_pos.shape[1]
    if source_grid is None:
        side = math.isqrt(old)
        if side * side != old:
            raise ValueError(f"position embedding of {old} patches is not a square grid")
        source_grid = (side, side)
    if tuple(source_grid) == tuple(grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    patch_pos = patch_pos.reshape(1, *source_grid, dim).permute(0, 3, 1, 2)
    # Bilinear, as the public M3ViT code resizes its position embeddings.
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bilinear", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


def patch_grid(image: torch.Tensor, patch_size: int) -> tuple[int, int]:
    return (image.shape[-2] // patch_size, image.shape[-1] // patch_size)


class PatchEmbed(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=p, stride=p)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class NoisyGate(nn.Module):
    """V-MoE router: softmax over all experts, top-k, no renormalisation, noise in training."""

    def __init__(self, in_dim: int, num_experts: int) -> None:
        super().__init__()
        self.w_gate = nn.Parameter(torch.zeros(in_dim, num_experts))


class StackedLinear(nn.Module):
    """E independent Linear(in, out) layers stored as one [E, out, in] tensor."""

    def __init__(self, num_experts: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(num_experts, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, in] shared by all experts, or [E, N, in] per expert -> [E, N, out]
        return torch.matmul(x, self.weight.transpose(1, 2)) + self.bias.unsqueeze(1)


class Experts(nn.Module):
    def __init__(self, num_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.htoh4 = StackedLinear(num_experts, dim, hidden)
        self.h4toh = StackedLinear(num_experts, hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h4toh(F.gelu(self.htoh4(x)))


def _cv_squared(values: torch.Tensor) -> torch.Tensor:
    if values.numel() <= 1:
        return values.new_zeros(())
    return values.float().var() / (values.float().mean() ** 2 + 1e-10)


class MoEMlp(nn.Module):
    """A MoE layer: route each token to its top-k experts and sum their weighted outputs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim, experts = config.embed_dim, config.num_experts
        self.experts = Experts(experts, dim, config.expert_hidden)
        if config.gate == "multi":
            self.gate = nn.ModuleList(NoisyGate(dim, experts) for _ in config.tasks)
        elif config.gate == "single":
            self.gate = NoisyGate(dim, experts)
        else:
            self.gate = NoisyGate(dim + config.task_embed_dim, experts)
        self.balance_loss = torch.zeros(())
        self.last_routing: torch.Tensor | None = None

    def router_logits(self, x: torch.Tensor, task, task_embedding) -> torch.Tensor:
        if self.config.gate == "multi":
            w_gate = torch.stack([g.w_gate for g in self.gate])[task]
            return x @ w_gate
        if self.config.gate == "single":
            return x @ self.gate.w_gate
        conditioned = torch.cat([x, task_embedding.expand(x.shape[0], -1)], dim=-1)
        return conditioned @ self.gate.w_gate

    def forward(self, x: torch.Tensor, task, task_embedding=None) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits = self.router_logits(tokens, task, task_embedding)
        noisy = self.training and self.config.noise_std > 0
        if noisy:
            logits = logits + torch.randn_like(logits) * self.config.noise_std
        probs = logits.softmax(dim=-1)
        top_probs, top_index = probs.topk(self.config.top_k, dim=-1)
        combine = torch.zeros_like(probs).scatter(1, top_index, top_probs)
        self.last_routing = top_index.detach()
        if self.training:
            self.balance_loss = self._balance_loss(logits, combine, noisy)
        expert_out = self.experts(tokens)  # [E, N, D]
        out = (combine.t().unsqueeze(-1) * expert_out).sum(dim=0)
        return out.reshape(shape)

    def _balance_loss(self, logits: torch.Tensor, combine: torch.Tensor, noisy: bool):
        importance = combine.sum(dim=0)
        if noisy:
            load = self._smooth_load(logits)
        else:
            load = (combine > 0).float().sum(dim=0)
        return _cv_squared(importance) + _cv_squared(load)

    def _smooth_load(self, noisy_logits: torch.Tensor) -> torch.Tensor:
        """Expected tokens per expert: P(logit + fresh noise clears the k-th best of the rest)."""
        k, experts = self.config.top_k, self.config.num_experts
        if k >= experts:
            return noisy_logits.new_full((experts,), float(noisy_logits.shape[0]))
        top_values = noisy_logits.topk(k + 1, dim=-1).values
        in_top = noisy_logits >= top_values[:, k - 1 : k]
        threshold = torch.where(in_top, top_values[:, k : k + 1], top_values[:, k - 1 : k])
        normal = torch.distributions.Normal(0.0, self.config.noise_std)
        return normal.cdf(noisy_logits - threshold).sum(dim=0)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, moe: bool) -> None:
        super().__init__()
        dim, eps = config.embed_dim, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.is_moe = moe
        self.mlp = MoEMlp(config) if moe else Mlp(dim, config.mlp_hidden)

    def forward(self, x: torch.Tensor, task, task_embedding) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        if self.is_moe:
            return x + self.mlp(self.norm2(x), task, task_embedding)
        return x + self.mlp(self.norm2(x))


class TaskEmbedding(nn.Module):
    """Task-conditioned routing: one-hot task -> 2-layer MLP + LayerNorm, concatenated to tokens."""

    def __init__(self, num_tasks: int, dim: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.fc1 = nn.Linear(num_tasks, dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, task) -> torch.Tensor:
        one_hot = torch.eye(self.num_tasks)[task]
        return self.norm(self.fc2(self.act(self.fc1(one_hot))))


class VisionTransformerMoE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, dim))
        self.blocks = nn.ModuleList(
            Block(config, moe=i in config.moe_blocks) for i in range(config.depth)
        )
        self.gate_task_represent = (
            TaskEmbedding(len(config.tasks), config.task_embed_dim)
            if config.gate == "task"
            else None
        )

    def forward(self, image: torch.Tensor, task) -> torch.Tensor:
        x = self.patch_embed(image)
        grid = patch_grid(image, self.config.patch_size)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        pos_embed = interpolate_pos_embed(self.pos_embed, grid, self.config.grid)
        x = torch.cat([cls, x], dim=1) + pos_embed
        task_embedding = None
        if self.gate_task_represent is not None:
            task_embedding = self.gate_task_represent(task)
        for block in self.blocks:
            x = block(x, task, task_embedding)
        return x

    def moe_layers(self) -> list[MoEMlp]:
        return [b.mlp for b in self.blocks if b.is_moe]


class PUPHead(nn.Module):
    """Progressive upsampling decoder: four (conv3x3, BN, ReLU), the first three followed by
    bilinear x2, then conv1x1 and a last bilinear x2 (upstream's order: the 1x1 before the last
    upsample gives the same map with a quarter of its MACs)."""

    def __init__(self, config: ModelConfig, out_channels: int) -> None:
        super().__init__()
        dim, width = config.embed_dim, config.decoder_channels
        self.grid = config.grid
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.conv_0 = nn.Conv2d(dim, width, 3, padding=1)
        self.conv_1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv_2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv_3 = nn.Conv2d(width, width, 3, padding=1)
        self.conv_4 = nn.Conv2d(width, out_channels, 1)
        for i in range(4):
            setattr(self, f"syncbn_fc_{i}", nn.BatchNorm2d(width))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.norm(tokens[:, 1:])
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[-1], grid[0], grid[1])
        for i in range(4):
            conv, norm = getattr(self, f"conv_{i}"), getattr(self, f"syncbn_fc_{i}")
            x = F.relu(norm(conv(x)))
            if i < 3:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.interpolate(self.conv_4(x), scale_factor=2.0, mode="bilinear",
                             align_corners=False)


class M3ViT(nn.Module):
    """Multi-task MoE ViT: shared encoder, per-task routing, one decoder per task."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = VisionTransformerMoE(config)
        self.decoders = nn.ModuleDict(
            {name: PUPHead(config, channels) for name, channels in config.tasks.items()}
        )

    def forward(self, image: torch.Tensor, task=0) -> tuple[torch.Tensor, ...]:
        """Outputs of every task head, in config order; routing follows `task`."""
        tokens = self.backbone(image, task)
        grid = patch_grid(image, self.config.patch_size)
        return tuple(head(tokens, grid) for head in self.decoders.values())

    def balance_loss(self) -> torch.Tensor:
        losses = [layer.balance_loss for layer in self.backbone.moe_layers()]
        return self.config.balance_loss_weight * torch.stack(losses).sum()


def init_weights(model: M3ViT, seed: int = 0) -> M3ViT:
    """Random weights with decisive routing: ViT-style init, router weights of unit scale."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("w_gate"):
                # Zero-initialised routers (as in training) tie every expert; random models
                # need logits of order one so that routing differs from token to token.
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[0]), generator=generator)
            elif name.endswith(("pos_embed", "cls_token")):
                param.normal_(0.0, 0.02, generator=generator)
            elif param.dim() >= 2:
                fan_in = param.shape[-1] if "experts" in name else param[0].numel()
                param.uniform_(-1.0, 1.0, generator=generator).mul_(1.0 / math.sqrt(fan_in))
            elif "norm" in name or "syncbn" in name:
                continue
            else:
                param.uniform_(-0.05, 0.05, generator=generator)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model


def build_model(config: ModelConfig | str, seed: int = 0, **overrides) -> M3ViT:
    """A randomly initialised model, in eval mode, from a config or a preset name."""
    from m3c.frontend.models.config import preset

    if isinstance(config, str):
        config = preset(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    torch.manual_seed(seed)
    return init_weights(M3ViT(config), seed).eval()
