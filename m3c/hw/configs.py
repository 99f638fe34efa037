"""A model config's kernel calls without compiling: estimates for models too big to lower
quickly (benchmarks, the DSE's what-ifs)."""

from __future__ import annotations

from collections.abc import Sequence

from m3c.hw.calls import Call
from m3c.hw.codegen import gelu_forms


def calls_for_config(config: dict) -> tuple[list[dict], dict]:
    """The kernel's call list and capacities for a model config (project.json["config"]), in
    the order m3c.hw.codegen emits them, without compiling: estimates for models too big to lower
    quickly. Weight offsets are omitted; the estimates do not read them."""
    d, heads, patch = config["embed_dim"], config["num_heads"], config["patch_size"]
    height, width = config["image_size"]
    patches = (height // patch) * (width // patch)
    n, patch_len = patches + 1, config["in_chans"] * patch * patch
    mlp, hidden = int(d * config["mlp_ratio"]), int(d * config["moe_mlp_ratio"])
    experts, top_k = config["num_experts"], config["top_k"]
    tasks = len(config["tasks"])
    multi = config.get("gate", "multi") == "multi"
    router_rows = {"weight_rows": tasks if multi else 1, "bias_rows": 1 if multi else tasks}
    calls = [{"op": "embed", "layer": "embed/Embed", "channels": config["in_chans"],
              "height": height, "width": width, "patch": patch, "dim": d, "patches": patches,
              "tokens": n}]
    for block in range(config["depth"]):
        name = f"/model/backbone/blocks.{block}"
        norm = {"op": "layernorm", "tokens": n, "dim": d, "epsilon": 1e-6}
        calls += [{**norm, "layer": f"{name}/norm1"},
                  {"op": "qkv", "layer": f"{name}/attn/qkv", "tokens": n, "in_dim": d,
                   "out_dim": 3 * d, "dim": d, "heads": heads, "head_dim": d // heads,
                   "activation": "none"},
                  {"op": "attention", "layer": f"{name}/attn", "tokens": n, "dim": d,
                   "heads": heads, "head_dim": d // heads, "scale": (d // heads) ** -0.5},
                  _linear_call(f"{name}/attn/proj", n, d, d, "attention", "residual"),
                  {**norm, "layer": f"{name}/norm2"}]
        if block in config["moe_blocks"]:
            layer = f"moe{list(config['moe_blocks']).index(block)}"
            calls += [{"op": "route", "layer": f"{layer}/Route", "tokens": n, "dim": d,
                       "experts": experts, "top_k": top_k, **router_rows},
                      {"op": "experts", "layer": layer, "tokens": n, "dim": d,
                       "hidden": hidden, "experts": experts, "activation": "gelu"}]
        else:
            calls += [_linear_call(f"{name}/mlp/fc1", n, d, mlp, "normalised", "hidden",
                                   "gelu"),
                      _linear_call(f"{name}/mlp/fc2", n, mlp, d, "hidden", "residual")]
    calls.append({"op": "features", "layer": "features", "tokens": n, "dim": d,
                  "source": "residual"})
    calls = [Call.of(call).to_json() for call in calls]  # typed: every field present
    moe = bool(config["moe_blocks"])
    capacities = {"max_tokens": n, "max_dim": d, "max_in": max(patch_len, d, mlp),
                  "max_out": max(3 * d, mlp, d), "max_head_dim": d // heads,
                  "max_heads": heads, "max_experts": experts if moe else 1,
                  "max_expert_hidden": hidden if moe else 1, "max_top_k": top_k if moe else 1,
                  "max_hidden": mlp, "max_patches": patches, "max_patch_len": patch_len,
                  "patch_grid_w": width // patch, "patch_grid_h": height // patch,
                  "image_elements": config["in_chans"] * height * width,
                  "gelu_forms": max(1, len(gelu_forms(calls)))}
    return calls, capacities


MAC8_OPS = ("qkv", "attention", "linear", "experts")  # 8-bit; embed and route stay 16


def as_int8(calls: Sequence[dict], capacities: dict) -> tuple[list[dict], dict]:
    """`calls_for_config`'s calls with every 8-bit candidate marked 8-bit (for estimates: the
    shifts are placeholders) and the array packed: what `--precision int8` compiles."""
    marked = [{**call, "mac8": {"x_shift": 0, "w_shift": 0}} if call["op"] in MAC8_OPS
              else call for call in calls]
    return marked, {**capacities, "packed": 1}


def _linear_call(layer: str, tokens: int, in_dim: int, out_dim: int, source: str, target: str,
                 activation: str = "none") -> dict:
    return {"op": "linear", "layer": layer, "tokens": tokens, "in_dim": in_dim,
            "out_dim": out_dim, "activation": activation, "source": source, "target": target}
