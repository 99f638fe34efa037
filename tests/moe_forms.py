"""The same trained weights written as the two other MoE forms m3c must recognise.

- `contrib`: the MoE layer as onnxruntime's `com.microsoft::MoE` contrib op (router logits in,
  experts stacked [E, out, in]); onnxruntime's CPU kernel uses the tanh form of GELU.
- `sparse`: a token-loop MoE with one `nn.Linear` pair per expert, as people write it by hand;
  tracing it gives NonZero / Gather / ScatterND per expert.
Both export the whole model with `torch.onnx.export(dynamo=False)`, like `m3c.export`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from m3c.models.vit import M3ViT, MoEMlp


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class _ContribMoE(torch.autograd.Function):
    """Runs like onnxruntime's MoE kernel and exports as `com.microsoft::MoE`."""

    @staticmethod
    def forward(ctx, x, logits, w1, b1, w2, b2, k: int):  # noqa: ARG004 - ctx unused
        probs = logits.softmax(-1)
        top_probs, top_index = probs.topk(k, dim=-1)
        combine = torch.zeros_like(probs).scatter(1, top_index, top_probs)
        hidden = _gelu_tanh(torch.matmul(x, w1.transpose(1, 2)) + b1.unsqueeze(1))
        expert_out = torch.matmul(hidden, w2.transpose(1, 2)) + b2.unsqueeze(1)
        return (combine.t().unsqueeze(-1) * expert_out).sum(0)

    @staticmethod
    def symbolic(g, x, logits, w1, b1, w2, b2, k: int):
        return g.op(
            "com.microsoft::MoE", x, logits, w1, b1, w2, b2,
            k_i=k, activation_type_s="gelu", normalize_routing_weights_i=0,
        )


class ContribMoE(nn.Module):
    def __init__(self, layer: MoEMlp) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x, task, task_embedding=None):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits = self.layer.router_logits(tokens, task, task_embedding)
        experts = self.layer.experts
        out = _ContribMoE.apply(
            tokens, logits, experts.htoh4.weight, experts.htoh4.bias,
            experts.h4toh.weight, experts.h4toh.bias, self.layer.config.top_k,
        )
        return out.reshape(shape)


class SparseMoE(nn.Module):
    """Token-loop MoE: per expert, pick its tokens, run it, add the weighted result back."""

    def __init__(self, layer: MoEMlp) -> None:
        super().__init__()
        self.layer = layer
        experts = layer.experts
        self.fc1 = nn.ModuleList()
        self.fc2 = nn.ModuleList()
        for e in range(layer.config.num_experts):
            self.fc1.append(_linear(experts.htoh4.weight[e], experts.htoh4.bias[e]))
            self.fc2.append(_linear(experts.h4toh.weight[e], experts.h4toh.bias[e]))

    def forward(self, x, task, task_embedding=None):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probs = self.layer.router_logits(tokens, task, task_embedding).softmax(-1)
        top_probs, top_index = probs.topk(self.layer.config.top_k, dim=-1)
        out = torch.zeros_like(tokens)
        for e, (fc1, fc2) in enumerate(zip(self.fc1, self.fc2, strict=True)):
            where = (top_index == e).nonzero()
            rows, slots = where[:, 0], where[:, 1]
            expert_out = fc2(F.gelu(fc1(tokens[rows])))
            out = out.index_put((rows,), expert_out * top_probs[rows, slots].unsqueeze(-1),
                                accumulate=True)
        return out.reshape(shape)


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear


def rewrite_moe_layers(model: M3ViT, form: str) -> M3ViT:
    """Swap every MoE layer of `model` (in place) for the `contrib` or `sparse` form."""
    wrapper = {"contrib": ContribMoE, "sparse": SparseMoE}[form]
    for block in model.backbone.blocks:
        if block.is_moe:
            block.mlp = wrapper(block.mlp)
    return model.eval()


def export_form(model: M3ViT, path: Path) -> Path:
    """Export like `m3c.export` but keep the custom-domain node of the contrib form."""
    config = model.config
    image = torch.randn(1, 3, *config.image_size, generator=torch.Generator().manual_seed(0))
    args = (image, torch.tensor(0)) if len(config.tasks) > 1 else (image,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(path), dynamo=False, opset_version=17,
            input_names=["image", "task"][: len(args)], output_names=list(config.tasks),
            custom_opsets={"com.microsoft": 1},
        )
    return path
