"""Procedural multi-task scenes: a stand-in for PASCAL-Context / NYUD / Cityscapes in tests.

Each scene is a textured background (a floor-like depth ramp) with a few flat, slightly tilted
shapes in front of it. A class fixes a shape's outline and colour, so labels are learnable from
the pixels alone. Every target of the M3ViT task sets is derived from the same scene:
semseg (class per pixel, 0 = background), depth, human_parts (bands of class-1 "persons"),
sal (foreground mask), normals (from the depth gradient) and edge (label boundaries).
"""

from __future__ import annotations

import numpy as np

from m3c.frontend.models.config import ModelConfig

# At most this many object classes are drawn; a task with more channels simply never sees the
# rest (as with rare classes in real data), and a few classes keep the micro model learnable.
MAX_DRAWN_CLASSES = 6
KINDS = ("rectangle", "ellipse", "triangle")
PALETTE = np.array(
    [[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.35, 0.95],
     [0.95, 0.85, 0.15], [0.85, 0.3, 0.9], [0.15, 0.85, 0.9]],
    dtype=np.float32,
)
PERSON_CLASS = 1  # human_parts labels bands of this class's shapes, as parts of a person
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


def drawn_classes(config: ModelConfig, task: str = "semseg") -> int:
    """How many object classes (besides background 0) scenes for this task set contain."""
    channels = config.tasks.get(task, MAX_DRAWN_CLASSES + 1)
    return max(1, min(MAX_DRAWN_CLASSES, channels - 1))


def make_dataset(config: ModelConfig, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` scenes at the config's image size: `image` [N,3,H,W] plus one target per task.

    Targets: class maps [N,H,W] int64 for semseg/human_parts; float [N,C,H,W] for depth (C=1),
    sal (1, in {0,1}), normals (3, unit vectors) and edge (1, in {0,1}). Same seed, same data.
    """
    rng = np.random.default_rng(seed)
    scenes = [_scene(rng, config.image_size, drawn_classes(config)) for _ in range(count)]
    data = {"image": np.stack([s["image"] for s in scenes])}
    for task in config.tasks:
        if task not in TARGETS:
            raise ValueError(f"no synthetic target for task {task!r}")
        data[task] = np.stack([TARGETS[task](s) for s in scenes])
    return data


def _scene(rng: np.random.Generator, size: tuple[int, int], classes: int) -> dict:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    # Background: far at the top, near at the bottom, like a floor seen from above eye level.
    depth = (9.0 - 4.0 * yy + rng.uniform(-1, 1) * (xx - 0.5)).astype(np.float32)
    image = _background(rng, h, w, yy, xx)
    label = np.zeros((h, w), np.int64)
    parts = np.zeros((h, w), np.int64)
    shapes = [_shape(rng, classes, yy, xx) for _ in range(rng.integers(1, 5))]
    # Painter's algorithm: the nearest shape is drawn last and occludes the others.
    for shape in sorted(shapes, key=lambda s: -s["depth"]):
        mask, cls = shape["mask"], shape["cls"]
        tilt = shape["tilt"]
        plane = shape["depth"] + tilt[0] * (yy - shape["cy"]) + tilt[1] * (xx - shape["cx"])
        depth[mask] = plane[mask]
        colour = PALETTE[cls - 1] + rng.normal(0, 0.06, 3).astype(np.float32)
        image[:, mask] = colour[:, None]
        label[mask] = cls
        parts[mask] = _person_parts(shape, yy)[mask] if cls == PERSON_CLASS else 0
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    image = (np.clip(image, 0, 1) - IMAGE_MEAN) / IMAGE_STD
    return {"image": image.astype(np.float32), "label": label, "parts": parts, "depth": depth}


def _background(rng, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Muted colour with a gradient and blotchy low-frequency texture."""
    tint = rng.uniform(0.3, 0.6, 3).astype(np.float32)
    coarse = rng.normal(0, 0.08, (3, 4, 4)).astype(np.float32)
    # Nearest-neighbour upsampling of a 4x4 grid, then a ramp: cheap texture, no scipy needed.
    blotches = coarse[:, (yy * 4).astype(int), (xx * 4).astype(int)]
    ramp = rng.uniform(-0.15, 0.15) * (yy - 0.5)
    return (tint[:, None, None] + blotches + ramp).astype(np.float32)


def _shape(rng, classes: int, yy: np.ndarray, xx: np.ndarray) -> dict:
    cls = int(rng.integers(1, classes + 1))
    cy, cx = rng.uniform(0.15, 0.85, 2)
    ry, rx = rng.uniform(0.15, 0.35, 2)
    kind = KINDS[(cls - 1) % len(KINDS)]
    mask = MASKS[kind](rng, yy - cy, xx - cx, ry, rx)
    if not mask.any():  # keep every drawn shape visible, however small the image
        mask[min(int(cy * yy.shape[0]), yy.shape[0] - 1), min(int(cx * xx.shape[1]),
                                                              xx.shape[1] - 1)] = True
    return {"cls": cls, "mask": mask, "cy": cy, "cx": cx, "ry": ry,
            "depth": float(rng.uniform(1.5, 4.5)), "tilt": rng.uniform(-1.0, 1.0, 2)}


def _rectangle(rng, dy, dx, ry, rx):
    return (np.abs(dy) <= ry) & (np.abs(dx) <= rx)


def _ellipse(rng, dy, dx, ry, rx):
    angle = rng.uniform(0, np.pi)
    u = dy * np.cos(angle) + dx * np.sin(angle)
    v = -dy * np.sin(angle) + dx * np.cos(angle)
    return (u / ry) ** 2 + (v / rx) ** 2 <= 1.0


def _triangle(rng, dy, dx, ry, rx):
    # Apex up, base down, so a triangle reads as a triangle whatever its size.
    apex, left, right = (-ry, 0.0), (ry, -rx), (ry, rx)
    inside = np.ones_like(dy, dtype=bool)
    for (ay, ax), (by, bx), (oy, ox) in ((apex, left, right), (left, right, apex),
                                         (right, apex, left)):
        side = (bx - ax) * (dy - ay) - (by - ay) * (dx - ax)
        opposite = (bx - ax) * (oy - ay) - (by - ay) * (ox - ax)
        inside &= side * np.sign(opposite) >= 0
    return inside


MASKS = {"rectangle": _rectangle, "ellipse": _ellipse, "triangle": _triangle}


def _person_parts(shape: dict, yy: np.ndarray) -> np.ndarray:
    """Six horizontal bands (head to feet) over the shape's height: labels 1..6."""
    top = shape["cy"] - shape["ry"]
    band = np.floor((yy - top) / (2 * shape["ry"]) * 6)
    return (np.clip(band, 0, 5) + 1).astype(np.int64)


def _normals(depth: np.ndarray) -> np.ndarray:
    # Gradients per image width/height (not per pixel) so normals do not depend on resolution.
    gy, gx = np.gradient(depth)
    gy, gx = gy * depth.shape[0] / 4.0, gx * depth.shape[1] / 4.0
    n = np.stack([-gx, -gy, np.ones_like(depth)])
    return (n / np.linalg.norm(n, axis=0, keepdims=True)).astype(np.float32)


def _edges(label: np.ndarray) -> np.ndarray:
    edge = np.zeros(label.shape, bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    return edge[None].astype(np.float32)


TARGETS = {
    "semseg": lambda s: s["label"],
    "human_parts": lambda s: s["parts"],
    "depth": lambda s: s["depth"][None],
    "sal": lambda s: (s["label"] > 0)[None].astype(np.float32),
    "normals": lambda s: _normals(s["depth"]),
    "edge": lambda s: _edges(s["label"]),
}
