"""Checkpoint loading against the public M3ViT key names, checked by an independent forward.

The state dicts here are written out from the names and shapes in REFERENCE.md, not taken from
`model.state_dict()`, and the forward pass is re-implemented from those tensors alone, so a
naming or layout mistake in the model or the loader shows up as a failure.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from m3c.errors import ModelError
from m3c.frontend.models import preset
from m3c.frontend.models.checkpoint import load_checkpoint, save_checkpoint
from m3c.frontend.models.vit import interpolate_pos_embed

EPS = 1e-6


def reference_state_dict(config, seed: int = 0, grid=None) -> dict[str, torch.Tensor]:
    """Random weights under the public M3ViT names (without the `module.` prefix)."""
    g = torch.Generator().manual_seed(seed)
    d, e, p = config.embed_dim, config.num_experts, config.patch_size
    h, hm, t, te = config.expert_hidden, config.mlp_hidden, len(config.tasks), len(config.tasks)
    gh, gw = grid or config.grid

    def rand(*shape, scale=0.1, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    sd = {"backbone.cls_token": rand(1, 1, d), "backbone.pos_embed": rand(1, gh * gw + 1, d),
          "backbone.patch_embed.proj.weight": rand(d, 3, p, p, scale=0.05),
          "backbone.patch_embed.proj.bias": rand(d)}
    for i in range(config.depth):
        b = f"backbone.blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd[b + norm + ".weight"], sd[b + norm + ".bias"] = rand(d, offset=1.0), rand(d)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = rand(3 * d, d), rand(3 * d)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = rand(d, d), rand(d)
        if i % 2 == 0:  # dense blocks
            sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = rand(hm, d), rand(hm)
            sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = rand(d, hm), rand(d)
            continue
        sd[b + "mlp.experts.htoh4.weight"] = rand(e, h, d, scale=0.3)
        sd[b + "mlp.experts.htoh4.bias"] = rand(e, h)
        sd[b + "mlp.experts.h4toh.weight"] = rand(e, d, h, scale=0.3)
        sd[b + "mlp.experts.h4toh.bias"] = rand(e, d)
        if config.gate == "multi":
            for task in range(t):
                sd[b + f"mlp.gate.{task}.w_gate"] = rand(d, e, scale=1.0)
        elif config.gate == "single":
            sd[b + "mlp.gate.w_gate"] = rand(d, e, scale=1.0)
        else:
            sd[b + "mlp.gate.w_gate"] = rand(d + te, e, scale=1.0)
    if config.gate == "task":
        r = "backbone.gate_task_represent."
        sd[r + "fc1.weight"], sd[r + "fc1.bias"] = rand(te, t, scale=1.0), rand(te)
        sd[r + "fc2.weight"], sd[r + "fc2.bias"] = rand(te, te, scale=1.0), rand(te)
        sd[r + "norm.weight"], sd[r + "norm.bias"] = rand(te, offset=1.0), rand(te)
    for task, channels in config.tasks.items():
        sd.update(_decoder(f"decoders.{task}.", d, config.decoder_channels, channels, rand))
    return sd


def _decoder(prefix, d, width, channels, rand):
    sd = {prefix + "norm.weight": rand(d, offset=1.0), prefix + "norm.bias": rand(d)}
    for i, (cin, cout, k) in enumerate([(d, width, 3)] + [(width, width, 3)] * 3
                                       + [(width, channels, 1)]):
        sd[f"{prefix}conv_{i}.weight"] = rand(cout, cin, k, k, scale=0.2)
        sd[f"{prefix}conv_{i}.bias"] = rand(cout)
    for i in range(4):
        bn = f"{prefix}syncbn_fc_{i}."
        sd[bn + "weight"], sd[bn + "bias"] = rand(width, offset=1.0), rand(width)
        sd[bn + "running_mean"] = rand(width)
        sd[bn + "running_var"] = rand(width).abs() + 0.5
        sd[bn + "num_batches_tracked"] = torch.tensor(100)
    return sd


def _linear(x, sd, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _layer_norm(x, sd, name):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * sd[name + ".weight"] + sd[name + ".bias"]


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _attention(x, sd, name, heads):
    b, n, d = x.shape
    hd = d // heads
    q, k, v = _linear(x, sd, name + ".qkv").reshape(b, n, 3, heads, hd).unbind(2)
    out = torch.empty_like(x)
    for head in range(heads):
        qh, kh, vh = q[:, :, head], k[:, :, head], v[:, :, head]
        weights = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(hd), dim=-1)
        out[:, :, head * hd:(head + 1) * hd] = weights @ vh
    return _linear(out, sd, name + ".proj")


def _moe(x, sd, name, config, task, task_feature):
    """Token by token: softmax over all experts, top-k, probabilities used as they are."""
    out = torch.zeros_like(x)
    for index in torch.cartesian_prod(torch.arange(x.shape[0]), torch.arange(x.shape[1])):
        token = x[index[0], index[1]]
        if config.gate == "multi":
            logits = token @ sd[f"{name}.gate.{task}.w_gate"]
        elif config.gate == "single":
            logits = token @ sd[f"{name}.gate.w_gate"]
        else:
            logits = torch.cat([token, task_feature]) @ sd[f"{name}.gate.w_gate"]
        probs = torch.softmax(logits, -1)
        for expert in torch.argsort(probs, descending=True)[: config.top_k]:
            w1 = sd[f"{name}.experts.htoh4.weight"][expert]
            b1 = sd[f"{name}.experts.htoh4.bias"][expert]
            w2 = sd[f"{name}.experts.h4toh.weight"][expert]
            b2 = sd[f"{name}.experts.h4toh.bias"][expert]
            out[index[0], index[1]] += probs[expert] * (_gelu(token @ w1.T + b1) @ w2.T + b2)
    return out


def reference_encoder(sd, config, image, task):
    x = F.conv2d(image, sd["backbone.patch_embed.proj.weight"],
                 sd["backbone.patch_embed.proj.bias"], stride=config.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["backbone.cls_token"].expand(x.shape[0], -1, -1), x], 1)
    x = x + sd["backbone.pos_embed"]
    task_feature = None
    if config.gate == "task":
        one_hot = torch.eye(len(config.tasks))[task]
        r = "backbone.gate_task_represent."
        task_feature = _layer_norm(
            _linear(_gelu(_linear(one_hot, sd, r + "fc1")), sd, r + "fc2"), sd, r + "norm")
    for i in range(config.depth):
        b = f"backbone.blocks.{i}."
        x = x + _attention(_layer_norm(x, sd, b + "norm1"), sd, b + "attn", config.num_heads)
        h = _layer_norm(x, sd, b + "norm2")
        if i % 2:
            x = x + _moe(h, sd, b + "mlp", config, task, task_feature)
        else:
            x = x + _linear(_gelu(_linear(h, sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
    return x


def reference_decoder(sd, prefix, tokens, grid):
    x = _layer_norm(tokens[:, 1:], sd, prefix + "norm")
    x = x.transpose(1, 2).reshape(x.shape[0], -1, *grid)
    for i in range(4):
        x = F.conv2d(x, sd[f"{prefix}conv_{i}.weight"], sd[f"{prefix}conv_{i}.bias"], padding=1)
        bn = f"{prefix}syncbn_fc_{i}."
        scale = sd[bn + "weight"] / torch.sqrt(sd[bn + "running_var"] + 1e-5)
        x = (x - sd[bn + "running_mean"][:, None, None]) * scale[:, None, None]
        x = torch.relu(x + sd[bn + "bias"][:, None, None])
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return F.conv2d(x, sd[f"{prefix}conv_4.weight"], sd[f"{prefix}conv_4.bias"])


def _image(config, seed=5):
    return torch.randn(2, 3, *config.image_size, generator=torch.Generator().manual_seed(seed))


def _assert_matches_reference(model, sd, config, decoder_prefix=None):
    image = _image(config)
    for task in range(len(config.tasks)):
        with torch.no_grad():
            tokens = model.backbone(image, task)
            outputs = model(image, task)
            expected = reference_encoder(sd, config, image, task)
        torch.testing.assert_close(tokens, expected, atol=1e-4, rtol=1e-4)
        for name, output in zip(config.tasks, outputs, strict=True):
            prefix = decoder_prefix or f"decoders.{name}."
            reference = reference_decoder(sd, prefix, expected, config.grid)
            torch.testing.assert_close(output, reference, atol=1e-4, rtol=1e-4)


def _prefixed(sd):
    return {"module." + k: v for k, v in sd.items()}


@pytest.mark.parametrize("gate", ["multi", "task"])
def test_file_checkpoint_forward_matches_reference(tmp_path, gate):
    config = preset("micro-nyud", gate=gate)
    sd = reference_state_dict(config, seed=1)
    path = tmp_path / "model.pth"
    torch.save({"state_dict": _prefixed(sd), "optimizer": {"lr": 0.1}, "epoch": 7}, path)
    model = load_checkpoint(config, path)
    assert not model.training
    _assert_matches_reference(model, sd, config)


def test_rank_directory_concatenates_experts_in_rank_order(tmp_path):
    config = preset("micro-nyud")
    sd = reference_state_dict(config, seed=2)
    half = config.num_experts // 2
    rank0 = {k: (v[:half] if ".experts." in k else v) for k, v in sd.items()}
    rank1 = {k: v[half:] for k, v in sd.items() if ".experts." in k}
    (tmp_path / "ckpt").mkdir()
    torch.save({"model": _prefixed(rank0)}, tmp_path / "ckpt" / "0.pth")
    torch.save({"model": _prefixed(rank1)}, tmp_path / "ckpt" / "1.pth")
    model = load_checkpoint(config, tmp_path / "ckpt")
    _assert_matches_reference(model, sd, config)
    (tmp_path / "ckpt" / "1.pth").rename(tmp_path / "ckpt" / "2.pth")
    with pytest.raises(ModelError, match="1.pth"):
        load_checkpoint(config, tmp_path / "ckpt")


def test_unprefixed_raw_state_dict_and_training_extras(tmp_path):
    config = preset("micro-cityscapes")
    sd = reference_state_dict(config, seed=3)
    extras = {"backbone.blocks.1.mlp.gate.0.w_noise": torch.zeros(config.embed_dim, 4)}
    torch.save({**sd, **extras}, tmp_path / "raw.pth")
    model = load_checkpoint(config, tmp_path / "raw.pth")
    _assert_matches_reference(model, sd, config)


def test_pos_embed_of_another_grid_is_interpolated(tmp_path):
    config = preset("micro-pascal")  # 64x64 image: a 4x4 patch grid
    sd = reference_state_dict(config, seed=4, grid=(6, 6))
    torch.save(sd, tmp_path / "big.pth")
    model = load_checkpoint(config, tmp_path / "big.pth")
    resized = interpolate_pos_embed(sd["backbone.pos_embed"], (4, 4), (6, 6))
    assert resized.shape == (1, 17, config.embed_dim)
    torch.testing.assert_close(model.backbone.pos_embed.detach(), resized)


@pytest.mark.parametrize("change, key, words", [
    ("drop", "backbone.blocks.3.mlp.experts.htoh4.bias", "missing"),
    ("add", "backbone.blocks.2.mlp.fc3.weight", "unexpected"),
    ("shape", "decoders.semseg.conv_4.weight", "wrong shape"),
    ("shape", "backbone.blocks.1.mlp.gate.1.w_gate", "wrong shape"),
])
def test_mismatched_keys_are_named(tmp_path, change, key, words):
    config = preset("micro-nyud")
    sd = reference_state_dict(config)
    if change == "drop":
        del sd[key]
    else:
        sd[key] = torch.zeros(3, 3) if change == "add" else sd[key][:-1]
    torch.save(_prefixed(sd), tmp_path / "bad.pth")
    with pytest.raises(ModelError) as error:
        load_checkpoint(config, tmp_path / "bad.pth")
    assert key in str(error.value) and words in str(error.value)
    assert "remedy" in str(error.value)


def test_gate_mismatch_suggests_the_right_gate(tmp_path):
    sd = reference_state_dict(preset("micro-nyud", gate="multi"))
    torch.save(sd, tmp_path / "multi.pth")
    with pytest.raises(ModelError, match="--gate multi"):
        load_checkpoint(preset("micro-nyud", gate="task"), tmp_path / "multi.pth")


def test_long_lists_are_cut_with_counts(tmp_path):
    sd = reference_state_dict(preset("micro-nyud"))
    torch.save(sd, tmp_path / "nyud.pth")
    with pytest.raises(ModelError) as error:
        load_checkpoint(preset("micro-pascal"), tmp_path / "nyud.pth")
    message = str(error.value)
    assert "missing" in message and "unexpected" in message and "more" in message


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_unreadable_files_raise_model_error(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="garbage.pth"):
        load_checkpoint(preset("micro-nyud"), path)
    with pytest.raises(ModelError, match="nowhere.pth"):
        load_checkpoint(preset("micro-nyud"), tmp_path / "nowhere.pth")


def test_non_tensor_payloads_raise_model_error(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="list.pth"):
        load_checkpoint(preset("micro-nyud"), tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ModelError, match="no tensors"):
        load_checkpoint(preset("micro-nyud"), tmp_path / "empty.pth")


@pytest.mark.parametrize("gate", ["multi", "task"])
def test_save_then_load_round_trips(tmp_path, gate):
    config = preset("micro-pascal", gate=gate)
    sd = reference_state_dict(config, seed=6)
    torch.save(sd, tmp_path / "in.pth")
    model = load_checkpoint(config, tmp_path / "in.pth")
    path = save_checkpoint(model, tmp_path / "sub" / "out.pth")
    raw = torch.load(path, weights_only=True)["model"]
    assert set(raw) == {"module." + k for k in sd}
    again = load_checkpoint(config, path)
    _assert_matches_reference(again, sd, config)
    assert [p.name for p in path.parent.iterdir()] == ["out.pth"]  # no temp file left


def _tam_modules(seed: int) -> dict[str, torch.Tensor]:
    """Task-affinity modules as NYUD configs with `tam: True` save them (training-only)."""
    g = torch.Generator().manual_seed(seed)
    return {f"tam_model{m}.{layer}.{kind}": torch.randn(8, 8, generator=g)
            for m in range(3) for layer in ("conv1", "conv2") for kind in ("weight", "bias")}


def _upstream_payload(state: dict) -> dict:
    """A checkpoint as the public training code saves it: the evaluation's `best_result`
    holds numpy float64 values, which `torch.load(weights_only=True)` alone refuses."""
    import numpy as np

    return {"model": _prefixed(state), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
            "epoch": 40, "best_result": {"semseg": {"mIoU": np.float64(0.412)},
                                         "depth": {"rmse": np.float64(0.61),
                                                   "log_rmse": np.float64(0.22)},
                                         "multi_task_performance": np.float64(1.59)}}


@pytest.mark.parametrize("gate", ["single", "multi", "task"])
def test_public_format_rank_directory_loads_as_saved(tmp_path, capsys, gate):
    config = preset("micro-nyud", gate=gate)
    sd = reference_state_dict(config, seed=7)
    half = config.num_experts // 2
    rank0 = {**{k: (v[:half] if ".experts." in k else v) for k, v in sd.items()},
             **_tam_modules(7)}
    rank1 = {k: v[half:] for k, v in sd.items() if ".experts." in k}
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    torch.save(_upstream_payload(rank0), folder / "0.pth")
    torch.save(_upstream_payload(rank1), folder / "1.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(folder / "0.pth", weights_only=True)  # what the loader has to get past
    model = load_checkpoint(config, folder)
    _assert_matches_reference(model, sd, config)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "12 training-only" in lines[0] and "tam_model0" in lines[0]


def test_single_task_checkpoint_stores_decoder_not_decoders(tmp_path):
    config = preset("micro-nyud", gate="single", tasks={"semseg": 40})
    sd = reference_state_dict(config, seed=8)
    single = {k.replace("decoders.semseg.", "decoder."): v for k, v in sd.items()}
    torch.save(_upstream_payload(single), tmp_path / "semseg.pth")
    model = load_checkpoint(config, tmp_path / "semseg.pth")
    _assert_matches_reference(model, single, config, decoder_prefix="decoder.")


def test_pickled_code_is_still_refused(tmp_path):
    import argparse

    torch.save({"model": reference_state_dict(preset("micro-nyud")),
                "args": argparse.Namespace(lr=0.1)}, tmp_path / "code.pth")
    with pytest.raises(ModelError, match="holds objects other than tensors"):
        load_checkpoint(preset("micro-nyud"), tmp_path / "code.pth")


@pytest.mark.parametrize("saved, loaded", [("single", "task"), ("task", "single"),
                                           ("single", "multi")])
def test_router_kind_mismatch_names_the_gate(tmp_path, saved, loaded):
    torch.save(reference_state_dict(preset("micro-nyud", gate=saved)), tmp_path / "g.pth")
    with pytest.raises(ModelError, match=f"--gate {saved}"):
        load_checkpoint(preset("micro-nyud", gate=loaded), tmp_path / "g.pth")


def test_pos_embed_resize_is_bilinear_as_upstream():
    """Against bilinear interpolation (align_corners=False) written out in numpy."""
    import numpy as np

    source = torch.randn(1, 1 + 3 * 5, 2, generator=torch.Generator().manual_seed(9))
    resized = interpolate_pos_embed(source, (4, 7), (3, 5))[0, 1:].numpy().reshape(4, 7, 2)
    grid = source[0, 1:].numpy().reshape(3, 5, 2)

    def taps(out_size, in_size):
        centre = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0)
        low = np.minimum(np.floor(centre).astype(int), in_size - 1)
        return low, np.minimum(low + 1, in_size - 1), centre - low

    (r0, r1, fr), (c0, c1, fc) = taps(4, 3), taps(7, 5)
    top = grid[r0][:, c0] * (1 - fc)[None, :, None] + grid[r0][:, c1] * fc[None, :, None]
    bottom = grid[r1][:, c0] * (1 - fc)[None, :, None] + grid[r1][:, c1] * fc[None, :, None]
    expected = top * (1 - fr)[:, None, None] + bottom * fr[:, None, None]
    np.testing.assert_allclose(resized, expected, atol=1e-6)


def test_numpy_1_pickles_of_best_result_load(tmp_path):
    """Checkpoints written under numpy 1 name `numpy.core.multiarray` (numpy 2: `numpy._core`);
    the legacy (non-zip) format keeps the pickle as plain bytes, so the name can be set here."""
    import io

    config = preset("micro-nyud")
    sd = reference_state_dict(config, seed=10)
    buffer = io.BytesIO()
    torch.save(_upstream_payload(sd), buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    assert b"numpy._core.multiarray" in data or b"numpy.core.multiarray" in data
    (tmp_path / "old.pth").write_bytes(
        data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    model = load_checkpoint(config, tmp_path / "old.pth")
    _assert_matches_reference(model, sd, config)
