"""The PyTorch reference model: presets, and the MoE layer against a token-by-token oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from m3c.errors import ModelError
from m3c.frontend.models import build_model, preset, preset_names


def test_presets_follow_the_paper():
    small = preset("small-nyud")
    assert small.image_size == (480, 640) and small.embed_dim == 384 and small.num_heads == 12
    assert small.tasks == {"semseg": 40, "depth": 1}
    assert small.moe_blocks == (1, 3, 5, 7, 9, 11) and small.num_experts == 16
    pascal = preset("tiny-pascal")
    assert pascal.image_size == (512, 512) and len(pascal.tasks) == 5
    city = preset("tiny-cityscapes")
    assert city.num_tokens == 129 and city.top_k == 2 and city.expert_hidden == 384
    assert len(preset_names()) == 12


@pytest.mark.parametrize(
    "name, overrides",
    [("large-nyud", {}), ("micro-mars", {}), ("micro-nyud", {"top_k": 9}),
     ("micro-nyud", {"gate": "shared"}), ("micro-nyud", {"image_size": (50, 64)})],
)
def test_bad_configs_are_refused(name, overrides):
    with pytest.raises(ModelError):
        preset(name, **overrides)


def _token_loop_moe(layer, tokens, task, task_embedding):
    """Independent oracle: route and run experts one token at a time."""
    config = layer.config
    out = torch.zeros_like(tokens)
    for n, token in enumerate(tokens):
        if config.gate == "multi":
            logits = token @ layer.gate[task].w_gate
        else:
            logits = torch.cat([token, task_embedding]) @ layer.gate.w_gate
        probs = logits.softmax(-1)
        for e in probs.argsort(descending=True)[: config.top_k]:
            w1, b1 = layer.experts.htoh4.weight[e], layer.experts.htoh4.bias[e]
            w2, b2 = layer.experts.h4toh.weight[e], layer.experts.h4toh.bias[e]
            out[n] += probs[e] * (F.gelu(token @ w1.T + b1) @ w2.T + b2)
    return out


@pytest.mark.parametrize("gate", ["multi", "task"])
def test_moe_layer_equals_token_by_token_computation(gate):
    model = build_model("micro-pascal", gate=gate, seed=3)
    layer = model.backbone.moe_layers()[0]
    tokens = torch.randn(37, model.config.embed_dim, generator=torch.Generator().manual_seed(1))
    for task in range(len(model.config.tasks)):
        embedding = None
        if gate == "task":
            embedding = model.backbone.gate_task_represent(task)
        with torch.no_grad():
            dense = layer(tokens, task, embedding)
            oracle = _token_loop_moe(layer, tokens, task, embedding)
        torch.testing.assert_close(dense, oracle, atol=1e-5, rtol=1e-5)
        assert len({tuple(r) for r in layer.last_routing.tolist()}) > 1


def test_training_mode_adds_balance_loss_and_noise():
    model = build_model("micro-nyud").train()
    image = torch.randn(2, 3, *model.config.image_size)
    first = model(image, 1)[0]
    second = model(image, 1)[0]
    assert not torch.equal(first, second)  # router noise only in training
    loss = model.balance_loss()
    assert loss.item() > 0 and loss.requires_grad
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(image, 1)[0], model(image, 1)[0], atol=0, rtol=0)


def test_position_embedding_is_interpolated_to_another_grid():
    model = build_model("micro-cityscapes")
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64), 0)
    assert outputs[0].shape == (1, 7, 64, 64)
