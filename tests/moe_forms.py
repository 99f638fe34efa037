"""The same trained weights written as the two other MoE forms m3c must recognise.

- `contrib`: the MoE layer as onnxruntime's `com.microsoft::MoE` contrib op (router logits in,
  experts stacked [E, out, in]); onnxruntime's CPU kernel uses the tanh form of GELU.
- `sparse`: a token-loop MoE with one `nn.Linear` pair per expert, as people write it by hand;
  tracing it gives NonZero / Gather / ScatterND per expert.
- `index_add`: the same token loop combined with `index_add` (exported as ScatterElements).
- `einsum`: a dense MoE written with a one-hot combine matrix and einsums.
- `gemm`: any form above with an `nn.Linear` router with bias (a Gemm) instead of `w_gate`.
- `UserViT`: a small ViT written without m3c.models, its MoE one of `USER_FORMS` (dense,
  renormalised top-k, ModuleList loops), BatchNorm optional, one image input named `x`.
They export the whole model with `torch.onnx.export(dynamo=False)`, like `m3c.export`, or with
the dynamo exporter (`export_dynamo`).
"""

from __future__ import annotations

import math
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
    def forward(ctx, x, logits, w1, b1, w2, b2, k: int, normalize: int):  # noqa: ARG004
        probs = logits.softmax(-1)
        top_probs, top_index = probs.topk(k, dim=-1)
        if normalize:
            top_probs = top_probs / top_probs.sum(-1, keepdim=True)
        combine = torch.zeros_like(probs).scatter(1, top_index, top_probs)
        rows = x.reshape(-1, x.shape[-1])  # onnxruntime's MoE takes [N, D] or [B, S, D]
        hidden = _gelu_tanh(torch.matmul(rows, w1.transpose(1, 2)) + b1.unsqueeze(1))
        expert_out = torch.matmul(hidden, w2.transpose(1, 2)) + b2.unsqueeze(1)
        return (combine.t().unsqueeze(-1) * expert_out).sum(0).reshape(x.shape)

    @staticmethod
    def symbolic(g, x, logits, w1, b1, w2, b2, k: int, normalize: int):
        return g.op(
            "com.microsoft::MoE", x, logits, w1, b1, w2, b2,
            k_i=k, activation_type_s="gelu", normalize_routing_weights_i=normalize,
        )


class ContribMoE(nn.Module):
    """`normalize`: normalize_routing_weights=1 (the top-k renormalised); `tokens_3d`: the MoE
    node fed the [1, N, D] token tensor itself, the logits' rows sized from the image's
    shape (as a model reading its batch size off the input writes it)."""

    def __init__(self, layer: MoEMlp, normalize: bool = False, tokens_3d: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.normalize, self.tokens_3d = int(normalize), tokens_3d

    def forward(self, x, task, task_embedding=None):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits = self.layer.router_logits(tokens, task, task_embedding)
        experts = self.layer.experts
        out = _ContribMoE.apply(
            x if self.tokens_3d else tokens, logits, experts.htoh4.weight, experts.htoh4.bias,
            experts.h4toh.weight, experts.h4toh.bias, self.layer.config.top_k, self.normalize,
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


# --- models written without m3c.models -------------------------------------------------

# How each `UserMoE` form computes its layer (every expert an `Expert`, or stacked weights).
USER_FORMS = {
    "topk_loop": "softmax -> top-k -> token loop over a ModuleList, index_add",
    "dense_softmax_loop": "every expert on every token, weighted by the full softmax (k = E)",
    "dense_topk_loop": "every expert on every token, weighted by a top-k combine matrix",
    "dense_einsum": "stacked expert weights by einsum, weighted by the full softmax",
    "mixtral": "top-k of the logits, softmax over the top-k logits (renormalised)",
    "deepseek": "softmax -> top-k -> divided by the top-k sum (renormalised)",
}


class Expert(nn.Module):
    """One expert of a ModuleList MoE: Linear -> GELU -> Linear."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class UserMoE(nn.Module):
    """A MoE layer as people write it (`USER_FORMS` says how each `form` computes)."""

    def __init__(self, form, dim, hidden, experts, top_k, tasks=None):
        super().__init__()
        self.form, self.top_k, self.experts_n = form, top_k, experts
        self.router = nn.Linear(dim, experts, bias=False)
        self.task_embed = nn.Embedding(tasks, 8) if tasks else None
        if self.task_embed is not None:
            self.router = nn.Linear(dim + 8, experts, bias=False)
        if form == "dense_einsum":
            self.w1 = nn.Parameter(torch.randn(experts, dim, hidden) / math.sqrt(dim))
            self.b1 = nn.Parameter(torch.randn(experts, hidden) * 0.1)
            self.w2 = nn.Parameter(torch.randn(experts, hidden, dim) / math.sqrt(hidden))
            self.b2 = nn.Parameter(torch.randn(experts, dim) * 0.1)
        else:
            self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))

    def logits(self, tokens, task):
        if self.task_embed is None:
            return self.router(tokens)
        emb = self.task_embed(task).expand(tokens.shape[0], -1)
        return self.router(torch.cat([tokens, emb], -1))

    def forward(self, x, task=None):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits = self.logits(tokens, task)
        out = getattr(self, "_" + self.form)(tokens, logits)
        return out.reshape(shape)

    def _gate(self, logits):
        probs = logits.softmax(-1)
        top, index = probs.topk(self.top_k, -1)
        return torch.zeros_like(probs).scatter(1, index, top)

    def _dense_softmax_loop(self, tokens, logits):
        gate = logits.softmax(-1)
        return sum(gate[:, e:e + 1] * expert(tokens) for e, expert in enumerate(self.experts))

    def _dense_topk_loop(self, tokens, logits):
        gate = self._gate(logits)
        return sum(gate[:, e:e + 1] * expert(tokens) for e, expert in enumerate(self.experts))

    def _dense_einsum(self, tokens, logits):
        gate = logits.softmax(-1)
        hidden = F.gelu(torch.einsum("nd,edh->enh", tokens, self.w1) + self.b1[:, None])
        out = torch.einsum("enh,ehd->end", hidden, self.w2) + self.b2[:, None]
        return torch.einsum("ne,end->nd", gate, out)

    def _mixtral(self, tokens, logits):
        top, index = logits.topk(self.top_k, -1)
        weights = top.softmax(-1)
        return self._token_loop(tokens, weights, index)

    def _deepseek(self, tokens, logits):
        top, index = logits.softmax(-1).topk(self.top_k, -1)
        weights = top / top.sum(-1, keepdim=True)
        return self._token_loop(tokens, weights, index)

    def _sigmoid_loop(self, tokens, logits):
        """Sigmoid gates (no softmax): a routing m3c does not run, to be refused."""
        top, index = logits.sigmoid().topk(self.top_k, -1)
        return self._token_loop(tokens, top, index)

    def _topk_loop(self, tokens, logits):
        top, index = logits.softmax(-1).topk(self.top_k, -1)
        return self._token_loop(tokens, top, index)

    def _token_loop(self, tokens, weights, index):
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slots = torch.where(index == e)
            out = out.index_add(0, rows, expert(tokens[rows]) * weights[rows, slots, None])
        return out


class TokenNorm(nn.Module):
    """BatchNorm1d over token features ([B, N, D] -> normalise D)."""
    def __init__(self, dim):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


class UserBlock(nn.Module):
    """A pre-norm block with `nn.MultiheadAttention`; `norm` "batch": BatchNorm1d before it."""

    def __init__(self, dim, heads, mlp, norm):
        super().__init__()
        self.norm1 = TokenNorm(dim) if norm == "batch" else nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp

    def forward(self, x, task=None):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x)
        return x + (self.mlp(h, task) if isinstance(self.mlp, UserMoE) else self.mlp(h))


class UserViT(nn.Module):
    """A two-block ViT written without m3c.models: block 1's MLP is a `UserMoE` of `form`,
    one router shared by the tasks unless `task_router` (a task embedding concatenated to
    the tokens); per-token Linear heads resized bilinearly to the image (Resize)."""

    def __init__(self, form: str, dim: int = 32, heads: int = 2, experts: int = 4,
                 top_k: int = 2, patch: int = 8, image: int = 32,
                 outputs: tuple[str, ...] = ("semseg", "depth"), norm: str = "layer",
                 embed_batchnorm: bool = False, task_router: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.patch, self.image = patch, image
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.embed_bn = nn.BatchNorm2d(dim) if embed_batchnorm else None
        grid = image // patch
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.1)
        moe = UserMoE(form, dim, 2 * dim, experts, top_k, len(outputs) if task_router else None)
        self.blocks = nn.ModuleList([UserBlock(dim, heads, Expert(dim, 2 * dim), norm),
                                     UserBlock(dim, heads, moe, "layer")])
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, c) for c in (5, 1)[:len(outputs)])
        for module in self.modules():  # non-trivial statistics and affine maps
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                with torch.no_grad():
                    module.running_mean.normal_(0, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.normal_(1, 0.2)
                    module.bias.normal_(0, 0.2)
        self.eval()

    def forward(self, x, task=None):
        feats = self.embed(x)
        if self.embed_bn is not None:
            feats = self.embed_bn(feats)
        tokens = feats.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.pos
        for block in self.blocks:
            tokens = block(tokens, task)
        tokens = self.norm(tokens)[:, 1:]
        grid = self.image // self.patch
        outs = []
        for head in self.heads:
            y = head(tokens).transpose(1, 2).reshape(1, -1, grid, grid)
            outs.append(F.interpolate(y, size=(self.image, self.image), mode="bilinear",
                                      align_corners=False))
        return tuple(outs)


def export_user(model: UserViT, path: Path, dynamo: bool, input_name: str = "x") -> Path:
    """Export at opset 18 with either exporter, the image input named `input_name`; a model
    with a task-conditioned router also takes `task`."""
    image = torch.randn(1, 3, model.image, model.image,
                        generator=torch.Generator().manual_seed(0))
    task = model.blocks[1].mlp.task_embed is not None
    args = (image, torch.tensor(0)) if task else (image,)
    options = {"external_data": False, "verbose": False} if dynamo else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=dynamo, opset_version=18,
                          input_names=[input_name, "task"][: len(args)],
                          output_names=["semseg", "depth"], **options)
    return path
