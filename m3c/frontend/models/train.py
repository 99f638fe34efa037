"""Train an M3ViT on synthetic scenes, so that examples and tests have weights that mean something.

Each step samples one task and trains with that task's routing, as multi-task MoE training
does: the task's gate decides which experts run, and only that task's decoder gets a loss.
`load_or_train` caches the result on disk, so a demo trains once per machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m3c.frontend.models.config import ModelConfig, preset
from m3c.frontend.models.data import make_dataset
from m3c.frontend.models.vit import M3ViT, build_model, patch_grid

DEFAULT_STEPS = 3000
BATCH = 8
LEARNING_RATE = 2e-3
TRAIN_IMAGES = 2048
EVAL_IMAGES = 64
EVAL_SEED_OFFSET = 10_000  # held-out scenes come from a seed range training never uses
# Bumped whenever the data or the loop changes, so stale cached checkpoints are not reused.
TRAINING_VERSION = 2

CLASS_TASKS = ("semseg", "human_parts")  # per-pixel class maps: cross-entropy
BINARY_TASKS = ("sal", "edge")  # one-channel masks: binary cross-entropy on logits
# Edges cover ~5% of pixels; as in M3ViT's balanced cross-entropy (positives 0.95, negatives
# 0.05), weigh them up or the head learns to predict no edge anywhere.
EDGE_POS_WEIGHT = 0.95 / 0.05


def train_synthetic(
    config_or_preset: ModelConfig | str = "micro-nyud",
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    gate: str | None = None,
    quiet: bool = False,
) -> tuple[M3ViT, dict]:
    """Train on synthetic scenes; returns the model (eval mode) and held-out metrics."""
    config = _config(config_or_preset, gate)
    torch.manual_seed(seed)
    model = build_model(config, seed=seed).train()
    data = _tensors(make_dataset(config, TRAIN_IMAGES, seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=max(steps, 1), pct_start=0.1
    )
    rng = np.random.default_rng(seed)
    history: list[tuple[str, float]] = []
    start = time.perf_counter()
    for step in range(steps):
        task = int(rng.integers(len(config.tasks)))
        batch = rng.choice(TRAIN_IMAGES, BATCH, replace=False)
        loss = _task_loss(model, data, task, torch.from_numpy(batch))
        total = loss + model.balance_loss()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        schedule.step()
        history.append((config.task_names[task], loss.item()))
        _progress(quiet, step, steps, history, start)
    model.eval()
    metrics = evaluate(model, seed + EVAL_SEED_OFFSET)
    metrics.update(steps=steps, seconds=time.perf_counter() - start,
                   losses=_loss_summary(history))
    if not quiet:
        print(format_metrics(metrics), flush=True)
    return model, metrics


def _config(config_or_preset: ModelConfig | str, gate: str | None) -> ModelConfig:
    if isinstance(config_or_preset, str):
        return preset(config_or_preset, **({"gate": gate} if gate else {}))
    return config_or_preset.replace(gate=gate) if gate else config_or_preset


def _tensors(data: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array) for name, array in data.items()}


def _forward_task(model: M3ViT, image: torch.Tensor, task: int) -> torch.Tensor:
    # Only the sampled task's decoder runs: the other heads would get no gradient anyway.
    tokens = model.backbone(image, task)
    head = model.decoders[model.config.task_names[task]]
    return head(tokens, patch_grid(image, model.config.patch_size))


def _task_loss(model: M3ViT, data: dict, task: int, index: torch.Tensor) -> torch.Tensor:
    name = model.config.task_names[task]
    output = _forward_task(model, data["image"][index], task)
    target = data[name][index]
    if name in CLASS_TASKS:
        return F.cross_entropy(output, target)
    if name in BINARY_TASKS:
        weight = torch.tensor(EDGE_POS_WEIGHT if name == "edge" else 1.0)
        return F.binary_cross_entropy_with_logits(output, target, pos_weight=weight)
    return F.l1_loss(output, target)


def _progress(quiet: bool, step: int, steps: int, history: list, start: float) -> None:
    every = max(steps // 10, 1)
    if quiet or (step + 1) % every:
        return
    recent = {}
    for task, loss in history[-every:]:
        recent.setdefault(task, []).append(loss)
    losses = "  ".join(f"{t} {np.mean(v):.3f}" for t, v in recent.items())
    print(f"step {step + 1}/{steps}  {losses}  ({time.perf_counter() - start:.0f} s)",
          flush=True)


def _loss_summary(history: list[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """Mean training loss per task over its first and its last tenth of steps."""
    per_task: dict[str, list[float]] = {}
    for task, loss in history:
        per_task.setdefault(task, []).append(loss)
    summary = {}
    for task, losses in per_task.items():
        window = max(len(losses) // 10, 1)
        summary[task] = {"first": float(np.mean(losses[:window])),
                         "last": float(np.mean(losses[-window:])), "steps": len(losses)}
    return summary


@torch.no_grad()
def evaluate(model: M3ViT, seed: int, count: int = EVAL_IMAGES) -> dict:
    """Held-out metrics per task beside trivial baselines, plus routing statistics."""
    config = model.config
    data = _tensors(make_dataset(config, count, seed))
    model.eval()
    metrics: dict = {}
    routing = {}
    for task, name in enumerate(config.task_names):
        output = _forward_task(model, data["image"], task)
        routing[name] = [layer.last_routing for layer in model.backbone.moe_layers()]
        if name in CLASS_TASKS:
            metrics[name] = segmentation_metrics(output.argmax(1), data[name],
                                                 config.tasks[name])
        elif name in BINARY_TASKS:
            pred, target = (output[:, 0] > 0).long(), data[name][:, 0].long()
            metrics[name] = segmentation_metrics(pred, target, 2)
            metrics[name].update(f1=f1_score(pred, target),
                                 baseline_f1=f1_score(torch.ones_like(target), target))
        elif name == "normals":
            metrics[name] = normals_metrics(output, data[name])
        else:
            metrics[name] = depth_metrics(output, data[name])
    metrics["routing"] = routing_metrics(model, data["image"], routing)
    return metrics


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor, classes: int) -> dict:
    """mIoU and pixel accuracy, and both for always predicting the most frequent class."""
    majority = torch.full_like(target, int(torch.bincount(target.flatten()).argmax()))
    return {"miou": mean_iou(pred, target, classes),
            "pixel_acc": float((pred == target).float().mean()),
            "baseline_miou": mean_iou(majority, target, classes),
            "baseline_pixel_acc": float((majority == target).float().mean())}


def mean_iou(pred: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    """IoU averaged over the classes present in the target or the prediction."""
    index = target.flatten() * classes + pred.flatten()
    confusion = torch.bincount(index, minlength=classes * classes).reshape(classes, classes)
    hits = confusion.diag().double()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    present = union > 0
    return float((hits[present] / union[present]).mean())


def f1_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """F1 of the positive class (for sparse masks such as edges, where accuracy says little)."""
    hits = float((pred * target).sum())
    return 2 * hits / max(float(pred.sum() + target.sum()), 1.0)


def depth_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """RMSE, and the RMSE of predicting the mean depth everywhere."""
    return {"rmse": float(((pred - target) ** 2).mean().sqrt()),
            "baseline_rmse": float(((target - target.mean()) ** 2).mean().sqrt())}


def normals_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Mean angle in degrees to the true normal, and that of predicting the mean normal."""
    def mean_angle(a: torch.Tensor) -> float:
        cosine = F.cosine_similarity(a, target, dim=1).clamp(-1, 1)
        return float(torch.rad2deg(torch.acos(cosine)).mean())

    mean = target.mean(dim=(0, 2, 3), keepdim=True).expand_as(target)
    return {"mean_angle": mean_angle(pred), "baseline_mean_angle": mean_angle(mean)}


def routing_metrics(model: M3ViT, image: torch.Tensor, routing: dict) -> dict:
    """How far routing is from 'every token everywhere, equally'.

    top_k_mass: mean softmax mass a token gives its chosen experts; a router that ignores its
    input gives k/E. load: fraction of routed slots per expert in each layer (the hardware's
    queue lengths). load_entropy: its entropy / log E (1.0 = perfectly even load).
    task_overlap: share of token-expert choices two tasks have in common (multi-task routing).
    """
    config = model.config
    masses = _top_k_masses(model, image)
    result = {"uniform_top_k_mass": config.top_k / config.num_experts,
              "top_k_mass": float(np.mean(masses)), "layers": {}}
    for name, layers in routing.items():
        loads = [_load(choice, config.num_experts) for choice in layers]
        result["layers"][name] = {
            "load": [[round(v, 4) for v in load] for load in loads],
            "load_entropy": [_entropy(load) for load in loads],
        }
    names = list(routing)
    if len(names) > 1:
        result["task_overlap"] = _overlap(routing[names[0]], routing[names[1]],
                                          config.num_experts)
    return result


def _top_k_masses(model: M3ViT, image: torch.Tensor) -> list[float]:
    masses = []

    def hook(layer, args, _output):
        tokens, task, embedding = args[0], args[1], args[2] if len(args) > 2 else None
        logits = layer.router_logits(tokens.reshape(-1, tokens.shape[-1]), task, embedding)
        probs = logits.softmax(-1).topk(layer.config.top_k, dim=-1).values
        masses.append(float(probs.sum(-1).mean()))

    handles = [layer.register_forward_hook(hook) for layer in model.backbone.moe_layers()]
    try:
        for task in range(len(model.config.tasks)):
            model.backbone(image, task)
    finally:
        for handle in handles:
            handle.remove()
    return masses


def _load(choice: torch.Tensor, experts: int) -> list[float]:
    counts = torch.bincount(choice.flatten(), minlength=experts).double()
    return (counts / counts.sum()).tolist()


def _entropy(load: list[float]) -> float:
    p = np.asarray(load)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(len(load))) if len(load) > 1 else 0.0


def _overlap(first: list[torch.Tensor], second: list[torch.Tensor], experts: int) -> float:
    shared = total = 0
    for a, b in zip(first, second, strict=True):
        one_hot_a = F.one_hot(a, experts).sum(1)
        one_hot_b = F.one_hot(b, experts).sum(1)
        shared += int((one_hot_a & one_hot_b).sum())
        total += a.numel()
    return shared / total


def format_metrics(metrics: dict) -> str:
    """A few human-readable lines: each metric beside its baseline."""
    lines = [f"trained {metrics.get('steps', '?')} steps in {metrics.get('seconds', 0):.1f} s"]
    for name, value in metrics.items():
        if isinstance(value, dict) and "miou" in value:
            lines.append(f"  {name}: mIoU {value['miou']:.3f}"
                         f" (majority class {value['baseline_miou']:.3f}),"
                         f" pixel acc {value['pixel_acc']:.3f}"
                         f" (majority class {value['baseline_pixel_acc']:.3f})"
                         + (f", F1 {value['f1']:.3f} (all positive {value['baseline_f1']:.3f})"
                            if "f1" in value else ""))
        elif isinstance(value, dict) and "rmse" in value:
            lines.append(f"  {name}: RMSE {value['rmse']:.3f}"
                         f" (predicting the mean {value['baseline_rmse']:.3f})")
        elif isinstance(value, dict) and "mean_angle" in value:
            lines.append(f"  {name}: mean angle {value['mean_angle']:.1f} deg"
                         f" (predicting the mean normal {value['baseline_mean_angle']:.1f})")
    routing = metrics.get("routing")
    if routing:
        lines.append(f"  routing: top-k mass {routing['top_k_mass']:.3f}"
                     f" (input-blind router {routing['uniform_top_k_mass']:.3f})")
    return "\n".join(lines)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $M3C_CACHE_DIR, else ~/.cache/m3c."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("M3C_CACHE_DIR") or Path.home() / ".cache" / "m3c")


def cache_path(config: ModelConfig, steps: int, seed: int,
               cache_dir: str | Path | None = None) -> Path:
    """Where the checkpoint for this config and these training settings lives."""
    settings = {"config": json.loads(config.to_json()), "steps": steps, "seed": seed,
                "batch": BATCH, "lr": LEARNING_RATE, "images": TRAIN_IMAGES,
                "version": TRAINING_VERSION, "torch": torch.__version__.split("+")[0]}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / "trained" / f"{config.name}-{config.gate}-{digest}.pth"


def load_or_train(
    preset: ModelConfig | str = "micro-nyud",
    gate: str = "multi",
    cache_dir: str | Path | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    quiet: bool = False,
) -> M3ViT:
    """The synthetic-trained model for this preset and gate: from the cache, else trained now.

    `cache_dir` replaces the cache root (default $M3C_CACHE_DIR or ~/.cache/m3c); checkpoints
    go under `<root>/trained/`, written atomically so a killed run leaves no broken file.
    """
    from m3c.frontend.models.checkpoint import load_checkpoint, save_checkpoint

    config = _config(preset, gate)
    path = cache_path(config, steps, seed, cache_dir)
    if path.exists():
        if not quiet:
            print(f"using cached trained model {path}", flush=True)
        return load_checkpoint(config, path)
    if not quiet:
        print(f"training {config.name} ({config.gate}-gate) on synthetic scenes;"
              f" cached at {path}", flush=True)
    model, _ = train_synthetic(config, steps=steps, seed=seed, quiet=quiet)
    save_checkpoint(model, path)
    return model
