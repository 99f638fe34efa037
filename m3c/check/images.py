"""The images an evaluation runs on: a folder of pictures, an .npy batch, or synthetic scenes
with their labels."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3c.check.batches import Batch
from m3c.errors import EvaluationError
from m3c.runtime.pictures import SUFFIXES, read_picture


@dataclass
class ImageSet:
    """Model inputs [N,3,H,W] float32, their names, and labels per task when known."""

    images: np.ndarray
    names: list[str]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""


def load_images(spec: str | Path | None, manifest: dict, labels: str | Path | None = None,
                synthetic: int | None = None, seed: int = 2024) -> ImageSet:
    """Images from a folder of PNG/JPEG pictures, an .npy batch, or `synthetic` generated
    scenes with their labels (m3c.frontend.models.data; needs the torch extra for the model
    package)."""
    shape = tuple(manifest["image_shape"])
    if synthetic is not None:
        return synthetic_images(manifest, synthetic, seed)
    if spec is None:
        raise EvaluationError("no images given", remedy="pass --images DIR_OR_NPY or "
                                                        "--synthetic N")
    path = Path(spec)
    if path.is_dir():
        images, names = _pictures(sorted(path.iterdir()), shape, manifest["config"])
    elif path.suffix.lower() in SUFFIXES and path.is_file():
        images, names = _pictures([path], shape, manifest["config"])
    elif path.suffix.lower() == ".npy" and path.is_file():
        images, names = _npy_batch(path, shape, manifest["config"])
    else:
        raise EvaluationError(f"{path}: neither a picture, a folder of pictures nor an .npy "
                              "file", remedy="pass .png/.jpg files, a folder of them, or an "
                                             "[N,3,H,W] .npy")
    if not len(images):
        raise EvaluationError(f"{path} holds no images", remedy="an evaluation needs at least "
                                                                "one image")
    found = _labels(Path(labels), manifest["tasks"], len(images)) if labels else {}
    return ImageSet(images, names, found, str(path))


def synthetic_images(manifest: dict, count: int, seed: int) -> ImageSet:
    """`count` generated images at the project's input shape: m3c's procedural scenes, with
    their labels, for a model m3c exported (its config is in project.json); standard-normal
    images, without labels, for a model brought from elsewhere (no generator knows its data)."""
    if count < 1:
        raise EvaluationError(f"{count} synthetic images: at least one is needed")
    config = manifest.get("config") or {}
    if "image_size" not in config:
        shape = (count, *manifest["image_shape"][1:])
        batch = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        return ImageSet(batch, [f"random{i:05d}" for i in range(count)], {},
                        f"standard-normal images (seed {seed}; the model was not exported by "
                        "m3c, so there is no scene generator for it)")
    try:
        from m3c.frontend.models.config import ModelConfig
        from m3c.frontend.models.data import make_dataset
    except ModuleNotFoundError as error:
        raise EvaluationError("synthetic scenes need PyTorch (the models package imports it)",
                              remedy="pip install 'm3c[torch]', or pass images") from error
    data = make_dataset(ModelConfig.from_json(json.dumps(config)), count, seed)
    labels = {task: data[task] for task in manifest["tasks"] if task in data}
    return ImageSet(data["image"].astype(np.float32), [f"scene{i:05d}" for i in range(count)],
                    labels, f"synthetic scenes (seed {seed})")


def _pictures(paths: list[Path], shape: tuple[int, ...], config: dict):
    from m3c.runtime.preprocess import preprocess

    files = [p for p in paths if p.suffix.lower() in SUFFIXES]
    images = [preprocess(read_picture(p), shape, config)[0] for p in files]
    return np.stack(images) if images else np.zeros((0, *shape[1:]), np.float32), \
        [p.stem for p in files]


def _npy_batch(path: Path, shape: tuple[int, ...], config: dict):
    try:
        batch = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"cannot read {path}: {error}",
                              remedy="save the batch with numpy.save") from None
    if batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[-1] in (1, 3, 4):
        from m3c.runtime.preprocess import preprocess

        batch = np.stack([preprocess(picture, shape, config)[0] for picture in batch])
    if batch.ndim == 3 and tuple(batch.shape) == tuple(shape[1:]):  # one image [3,H,W]
        batch = batch[None]
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(shape[1:]):
        raise EvaluationError(f"{path}: images of shape {list(batch.shape)}, the model takes "
                              f"[N, {', '.join(map(str, shape[1:]))}]",
                              remedy="give model inputs [N,3,H,W], or uint8 pictures [N,H,W,3]")
    batch = batch.astype(np.float32)
    if not np.isfinite(batch).all():
        raise EvaluationError(f"{path}: images contain NaN or infinite values")
    return batch, [f"{path.stem}[{i}]" for i in range(len(batch))]


def _labels(folder: Path, tasks: list[str], count: int) -> dict[str, np.ndarray]:
    """`<folder>/<task>.npy` per task, one label map per image, in image order."""
    found = {}
    for task in tasks:
        path = folder / f"{task}.npy"
        if not path.is_file():
            continue
        labels = np.load(path, allow_pickle=False)
        if len(labels) != count:
            raise EvaluationError(f"{path} has {len(labels)} labels for {count} images",
                                  remedy="one label map per image, in image order")
        found[task] = labels
    if not found:
        raise EvaluationError(f"{folder} holds no <task>.npy labels for tasks {tasks}")
    return found


def images_of_batch(images: ImageSet, batch: Batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rows = list(batch.indices)
    return images.images[rows], {task: labels[rows] for task, labels in images.labels.items()}
