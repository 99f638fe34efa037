"""The same trained weights written as the two other MoE forms m3c must recognise.

- `contrib`: the MoE layer as onnxruntime's `com.microsoft::MoE` contrib op (router logits in,
  experts stacked [E, out, in]); onnxruntime's CPU kernel uses the tanh form of GELU.
- `sparse`: a token-loop MoE with one `nn.Linear` pair per expert, as people write it by hand;
  tracing it gives NonZero / Gather / ScatterND per expert.
- `index_add`: the same token loop combined with `index_add` (exported as ScatterElements).
- `einsum`: a dense MoE written with a one-hot combine matrix and einsums.
- `gemm`: any form above with an `nn.Linear` router with bias (a Gemm) instead of `w_gate`.
They export the whole model with `torch.onnx.export(dynamo=False)`, like `m3c.export`, or with
the dynamo exporter (`export_dynamo`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from m3c.frontend.models.vit import M3ViT, MoEMlp


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

    def route(self, x, task, task_embedding):
        """The tokens as rows, and each token's top-k gate values and expert indices."""
        tokens = x.reshape(-1, x.shape[-1])
        probs = self.layer.router_logits(tokens, task, task_embedding).softmax(-1)
        return (tokens, *probs.topk(self.layer.config.top_k, dim=-1))

    def forward(self, x, task, task_embedding=None):
        tokens, top_probs, top_index = self.route(x, task, task_embedding)
        out = torch.zeros_like(tokens)
        for e, (fc1, fc2) in enumerate(zip(self.fc1, self.fc2, strict=True)):
            where = (top_index == e).nonzero()
            rows, slots = where[:, 0], where[:, 1]
            expert_out = fc2(F.gelu(fc1(tokens[rows])))
            out = out.index_put((rows,), expert_out * top_probs[rows, slots].unsqueeze(-1),
                                accumulate=True)
        return out.reshape(x.shape)


class IndexAddMoE(SparseMoE):
    """Token-loop MoE accumulating with `index_add` instead of `index_put`."""

    def forward(self, x, task, task_embedding=None):
        tokens, top_probs, top_index = self.route(x, task, task_embedding)
        out = torch.zeros_like(tokens)
        for e, (fc1, fc2) in enumerate(zip(self.fc1, self.fc2, strict=True)):
            rows, slots = torch.where(top_index == e)
            expert_out = fc2(F.gelu(fc1(tokens[rows])))
            out = out.index_add(0, rows, expert_out * top_probs[rows, slots].unsqueeze(-1))
        return out.reshape(x.shape)


class EinsumMoE(nn.Module):
    """Dense MoE: a one-hot [N, E] combine matrix, every expert on every token by einsum."""

    def __init__(self, layer: MoEMlp) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x, task, task_embedding=None):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probs = self.layer.router_logits(tokens, task, task_embedding).softmax(-1)
        top_probs, top_index = probs.topk(self.layer.config.top_k, dim=-1)
        combine = self.combine(probs, top_index, top_probs)
        fc1, fc2 = self.layer.experts.htoh4, self.layer.experts.h4toh
        hidden = F.gelu(torch.einsum("nd,ehd->enh", tokens, fc1.weight) + fc1.bias[:, None])
        expert_out = torch.einsum("enh,edh->end", hidden, fc2.weight) + fc2.bias[:, None]
        return torch.einsum("ne,end->nd", combine, expert_out).reshape(shape)

    def combine(self, probs, top_index, top_probs):
        experts = self.layer.config.num_experts
        return (F.one_hot(top_index, experts).to(probs.dtype) * top_probs.unsqueeze(-1)).sum(1)


class ScatterEinsumMoE(EinsumMoE):
    """The einsum MoE with its combine matrix scattered, as m3c's own export builds it."""

    def combine(self, probs, top_index, top_probs):
        return torch.zeros_like(probs).scatter(1, top_index, top_probs)


class GemmRouter(nn.Module):
    """A router written as `nn.Linear(D, E)` with bias: logits = x W^T + b (a Gemm)."""

    def __init__(self, layer: MoEMlp, seed: int) -> None:
        super().__init__()
        weight = layer.gate.w_gate
        self.linear = nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(weight.t())
            self.linear.bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))

    def forward(self, tokens, task, task_embedding=None):  # noqa: ARG002 - one shared router
        return self.linear(tokens)


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear


FORMS = {"contrib": ContribMoE, "sparse": SparseMoE, "index_add": IndexAddMoE,
         "einsum": EinsumMoE, "scatter_einsum": ScatterEinsumMoE}


def rewrite_moe_layers(model: M3ViT, form: str, gemm_router: bool = False) -> M3ViT:
    """Swap every MoE layer of `model` (in place) for `form`; with `gemm_router` (single-gate
    models only), route with an `nn.Linear` with bias."""
    for index, block in enumerate(model.backbone.blocks):
        if block.is_moe:
            if gemm_router:
                router = GemmRouter(block.mlp, seed=index)
                block.mlp.add_module("gemm_router", router)
                # In the instance dict, so it is found before the class's router_logits.
                object.__setattr__(block.mlp, "router_logits", router)
            block.mlp = FORMS[form](block.mlp)
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


def export_dynamo(model: M3ViT, path: Path) -> Path:
    """Export with `torch.onnx.export(dynamo=True)` (torch.export + onnxscript)."""
    from m3c.frontend.exporter import _export_wrapper

    config = model.config
    image = torch.randn(1, 3, *config.image_size, generator=torch.Generator().manual_seed(0))
    args = (image, torch.tensor(0)) if len(config.tasks) > 1 else (image,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _export_wrapper(model), args, str(path), dynamo=True, opset_version=18,
            input_names=["image", "task"][: len(args)], output_names=list(config.tasks),
            external_data=False, verbose=False,
        )
    return path


def lowered_structure(graph) -> list[tuple[str, tuple]]:
    """m3c ops in order with their attributes, except the expert activation's name."""
    return [(node.op, tuple(sorted((k, str(v)) for k, v in node.attrs.items()
                                   if not (node.op == "ExpertMLP" and k == "activation"))))
            for node in graph.graph.nodes if node.domain == "m3c"]


def without_optional_contrib_inputs(path: Path, out: Path, drop: tuple[int, ...]) -> Path:
    """The contrib-form file with the MoE nodes' optional inputs `drop` (3: fc1 bias, 5: fc2
    bias) left out, and without any value_info (as files from other tools come)."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "MoE":
            inputs = ["" if i in drop else name for i, name in enumerate(node.input)]
            while inputs and not inputs[-1]:
                inputs.pop()
            del node.input[:]
            node.input.extend(inputs)
    del model.graph.value_info[:]
    onnx.save(model, str(out))
    return out
