"""Load and save M3ViT checkpoints in the public M3ViT format.

A checkpoint is a `.pth` file holding a state dict, either bare or under `state_dict` / `model`
(the rest of such a dict, e.g. optimizer state, epoch and `best_result`, is training
bookkeeping), with keys usually prefixed `module.` by DistributedDataParallel. FastMoE's
expert-parallel training saves a directory of `{rank}.pth` files instead: rank 0 holds
everything, ranks > 0 only their local experts, so expert tensors are concatenated on dim 0 in
rank order.

Files are read with torch's weights-only unpickler (no code runs), allowing beside tensors only
the numpy scalar and array types the training code's evaluation writes into `best_result`.
Single-task models store their head as `decoder.*`; NYUD configs trained with task-affinity
modules carry `tam_model{0,1,2}.*` tensors that feed only training losses: both are handled.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from m3c.errors import ModelError
from m3c.frontend.models.config import ModelConfig
from m3c.frontend.models.vit import M3ViT, interpolate_pos_embed

PREFIX = "module."
NESTED_KEYS = ("state_dict", "model")
EXPERT_KEY = re.compile(r"\.mlp\.experts\.(htoh4|h4toh)\.(weight|bias)$")
# Present in training checkpoints, not part of the inference model: the noise weights of
# M3ViT's NoisyGate, the auxiliary gate of `return_decoupled_activation`, and BatchNorm's
# step counter (only used when momentum is None; old checkpoints lack it).
TRAINING_ONLY = re.compile(r"(\.w_noise|\.w_gate_aux|\.num_batches_tracked)$")
# Task-affinity modules of the NYUD multi-task configs (`tam: True`): training losses only.
TRAINING_MODULES = re.compile(r"^tam_model\d*\.")
SINGLE_DECODER = "decoder."
LISTED = 10


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_checkpoint(config: ModelConfig, path: str | Path,
                    report: Callable[[str], None] | None = _stderr) -> M3ViT:
    """An M3ViT for `config` with the weights of the checkpoint file or rank directory `path`.

    `report` receives one informational line when training-only tensors are skipped.
    """
    path = Path(path)
    if path.is_dir():
        state = _merge_ranks(path)
    elif path.exists():
        state = _state_dict(_read(path), path)
    else:
        raise ModelError(f"checkpoint {path} does not exist",
                         remedy="pass a .pth file or a directory of 0.pth, 1.pth, ...")
    state = _skip_training_modules(state, path, report)
    model = M3ViT(config)
    state = _single_task_decoder(state, config)
    state = _fit_to_model(model, state, path)
    model.load_state_dict(state, strict=False)  # _fit_to_model checked every key and shape
    return model.eval()


def save_checkpoint(model: M3ViT, path: str | Path) -> Path:
    """Write `{"model": state dict with module. prefixes}` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {PREFIX + key: value.detach().clone() for key, value in model.state_dict().items()}
    payload = {"model": state, "m3c_config": model.config.to_json()}
    # A per-process temp name in the same directory: the rename is atomic, and the file gets
    # the usual permissions (mkstemp would make it private).
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def _numpy_globals() -> list:
    """What pickling numpy scalars and arrays refers to, under numpy 2 and numpy 1 names."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    allowed: list = [np.ndarray, np.dtype, multiarray.scalar, multiarray._reconstruct]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar"),
                    (multiarray._reconstruct, f"{module}._reconstruct")]
    # Some numpy versions pickle a dtype through its class (numpy.dtypes.Float64DType, ...).
    allowed += sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFD"}, key=str)
    return allowed


def _read(path: Path) -> object:
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise ModelError(f"cannot read checkpoint {path}: not a PyTorch file",
                             remedy="pass the .pth file written by torch.save") from error
        # weights_only refuses pickled code (e.g. an argparse Namespace saved beside weights).
        reason = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ModelError(f"checkpoint {path} holds objects other than tensors ({reason})",
                         remedy="re-save it with torch.save({'model': model.state_dict()})"
                         ) from error
    except Exception as error:  # torch reports a corrupt file as KeyError, EOFError, ...
        raise ModelError(f"cannot read checkpoint {path}: not a PyTorch file "
                         f"({type(error).__name__}: {error})",
                         remedy="pass the .pth file written by torch.save") from error


def _state_dict(payload: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded payload, unwrapped and without `module.` prefixes."""
    if not isinstance(payload, dict):
        raise ModelError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    for key in NESTED_KEYS:
        if isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    # Anything that is not a tensor (epoch counters, optimizer state, ...) cannot be a weight.
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"checkpoint {path} holds no tensors",
                         remedy=f"expected a state dict; top-level keys: {_listing(payload)}")
    return {key.removeprefix(PREFIX): value for key, value in tensors.items()}


def _merge_ranks(directory: Path) -> dict[str, torch.Tensor]:
    files = {int(p.stem): p for p in directory.glob("*.pth") if p.stem.isdigit()}
    if not files:
        raise ModelError(f"checkpoint directory {directory} has no rank files",
                         remedy="expected 0.pth, 1.pth, ... (one per expert-parallel rank)")
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        raise ModelError(f"checkpoint directory {directory} lacks rank files "
                         + ", ".join(f"{r}.pth" for r in missing))
    ranks = [_state_dict(_read(files[r]), files[r]) for r in sorted(files)]
    state = dict(ranks[0])
    for key in [k for k in state if EXPERT_KEY.search(k)]:
        parts = [rank[key] for rank in ranks if key in rank]
        if len(parts) != len(ranks):
            raise ModelError(f"expert tensor {key} is missing from some rank files in "
                             f"{directory}", remedy="every rank must hold its local experts")
        state[key] = torch.cat(parts, dim=0)
    return state


def _skip_training_modules(state: dict, path: Path, report) -> dict[str, torch.Tensor]:
    skipped = sorted(k for k in state if TRAINING_MODULES.search(k))
    if skipped and report is not None:
        modules = sorted({k.split(".", 1)[0] for k in skipped})
        report(f"{path}: skipped {len(skipped)} training-only tensors of {', '.join(modules)} "
               "(task-affinity modules that feed only training losses)")
    return {k: v for k, v in state.items() if not TRAINING_MODULES.search(k)}


def _single_task_decoder(state: dict, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Single-task checkpoints name their one head `decoder.*`: m3c's `decoders.<task>.*`."""
    if len(config.tasks) != 1 or not any(k.startswith(SINGLE_DECODER) for k in state):
        return state
    (task,) = config.tasks
    return {(f"decoders.{task}." + k.removeprefix(SINGLE_DECODER)
             if k.startswith(SINGLE_DECODER) else k): v for k, v in state.items()}


def _fit_to_model(model: M3ViT, state: dict, path: Path) -> dict[str, torch.Tensor]:
    """Check names and shapes against the model; resize pos_embed to the config's grid."""
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not TRAINING_ONLY.search(k)}
    if "backbone.pos_embed" in state:
        state["backbone.pos_embed"] = _resize_pos_embed(state["backbone.pos_embed"], model)
    missing = [k for k in expected if k not in state and not TRAINING_ONLY.search(k)]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ModelError(
            f"checkpoint {path} does not fit {model.config.name} ({model.config.gate}-gate): "
            + "; ".join(_problems(missing, unexpected, wrong)),
            remedy=_remedy(model.config, state),
        )
    return state


def _resize_pos_embed(pos_embed: torch.Tensor, model: M3ViT) -> torch.Tensor:
    """Interpolated to the config's grid; unchanged (so reported as a wrong shape) if the
    stored grid cannot be told from the token count."""
    config = model.config
    if pos_embed.dim() != 3 or pos_embed.shape[-1] != config.embed_dim:
        return pos_embed
    source = _source_grid(pos_embed.shape[1] - 1, config.grid)
    if source is None:
        return pos_embed
    with torch.no_grad():
        return interpolate_pos_embed(pos_embed, config.grid, source)


def _source_grid(patches: int, grid: tuple[int, int]) -> tuple[int, int] | None:
    """The patch grid a position embedding was trained on: square, or the target's aspect."""
    for h in range(1, patches + 1):
        w, rest = divmod(patches, h)
        if rest == 0 and h * grid[1] == w * grid[0]:
            return (h, w)
    side = round(patches**0.5)
    return (side, side) if side * side == patches else None


def _problems(missing: list[str], unexpected: list[str], wrong: list[str]) -> list[str]:
    labels = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
    return [f"{len(keys)} {label}: {_listing(keys)}" for label, keys in labels if keys]


def _listing(keys) -> str:
    keys = list(keys)
    more = f", ... and {len(keys) - LISTED} more" if len(keys) > LISTED else ""
    return ", ".join(str(k) for k in keys[:LISTED]) + more


def _remedy(config: ModelConfig, state: dict) -> str:
    multi = any(re.search(r"\.mlp\.gate\.\d+\.w_gate$", k) for k in state)
    shared = [v for k, v in state.items() if k.endswith(".mlp.gate.w_gate")]
    if multi and config.gate != "multi":
        return "the checkpoint has one router per task: use --gate multi"
    if shared:
        # A router over the tokens alone is [D, E]; a task-conditioned one reads more rows.
        gate = "single" if shared[0].shape[0] == config.embed_dim else "task"
        if config.gate != gate:
            kind = "one router shared by all tasks" if gate == "single" else \
                "one task-conditioned router"
            return f"the checkpoint has {kind}: use --gate {gate}"
    if len(config.tasks) > 1 and any(k.startswith(SINGLE_DECODER) for k in state):
        return "the checkpoint is a single-task model: choose a config with its one task"
    return "check --preset / --gate (and experts, top-k, image size) match the checkpoint"
