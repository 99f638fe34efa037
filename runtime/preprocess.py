"""From a picture to the kernel's input tensor: RGB in [0,1], bilinear resize, normalise.

The models m3c trains (m3c.frontend.models.data) see RGB scaled to [0,1], then (x - 0.5) / 0.25, one
mean and std for all channels; a project's config may override them with `image_mean` /
`image_std` (per channel) for models trained with other statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import AcceleratorError
from .pictures import SUFFIXES, read_picture

IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


def normalisation(config: dict) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(config.get("image_mean", IMAGE_MEAN), np.float32).reshape(-1, 1, 1)
    std = np.asarray(config.get("image_std", IMAGE_STD), np.float32).reshape(-1, 1, 1)
    return mean, std


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[C,H,W] -> [C,height,width], half-pixel centres (align_corners=False, no antialias)."""
    def axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
        position = np.clip(position, 0, size_in - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, (position - low).astype(np.float32)

    y0, y1, fy = axis(image.shape[1], height)
    x0, x1, fx = axis(image.shape[2], width)
    top = image[:, y0] * (1 - fy)[:, None] + image[:, y1] * fy[:, None]
    return (top[:, :, x0] * (1 - fx) + top[:, :, x1] * fx).astype(np.float32)


def preprocess(picture: np.ndarray, image_shape: tuple[int, ...], config: dict) -> np.ndarray:
    """uint8 [H,W,C] picture (grey, grey+alpha, RGB or RGBA) -> float32 `image_shape` input."""
    picture = np.asarray(picture)
    if picture.ndim == 2:
        picture = picture[:, :, None]
    if (picture.ndim != 3 or picture.dtype != np.uint8 or picture.shape[2] not in (1, 2, 3, 4)
            or picture.size == 0):
        raise AcceleratorError(f"picture of shape {picture.shape} and dtype {picture.dtype} "
                               "is not an 8-bit grey/RGB(A) image",
                               remedy="pass uint8 [H,W,3] pixels")
    channels = image_shape[1]
    colour = picture[:, :, :3] if picture.shape[2] >= 3 else np.repeat(picture[:, :, :1], 3, 2)
    if channels != 3:
        raise AcceleratorError(f"the model takes {channels}-channel images; pictures are RGB",
                               remedy="feed a preprocessed float32 tensor to Accelerator.run")
    image = colour.transpose(2, 0, 1).astype(np.float32) / 255.0
    image = resize_bilinear(image, image_shape[2], image_shape[3])
    mean, std = normalisation(config)
    return ((image - mean) / std)[None].astype(np.float32)


def load_picture(path: str | Path) -> np.ndarray:
    """A picture's pixels (PNG, JPEG, ...), or a .npy array (pixels, or an already
    preprocessed tensor)."""
    path = Path(path)
    if not path.is_file():
        raise AcceleratorError(f"image {path} does not exist", remedy="check the --image path")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:  # object arrays, truncated headers
            raise AcceleratorError(f"{path} is not a readable numeric .npy array ({error})",
                                   remedy="save the image with numpy.save") from None
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf" or (
                array.size == 0):
            raise AcceleratorError(f"{path} holds no numeric image",
                                   remedy="save uint8 [H,W,3] pixels or a float32 tensor")
        return array
    if path.suffix.lower() in SUFFIXES:
        return read_picture(path)
    raise AcceleratorError(f"cannot read {path}: pictures ({', '.join(SUFFIXES)}) and .npy "
                           "arrays are read", remedy="convert the image to PNG or JPEG")


def check_image(image: np.ndarray, image_shape: tuple[int, ...], where: str) -> np.ndarray:
    """The kernel input must be finite float32 of the compiled shape (batch 1 may be omitted)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.float32:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise AcceleratorError(f"{where}: image dtype is {kind}, the kernel takes float32",
                               remedy="preprocess pictures with Accelerator.prepare(pixels)")
    if image.shape not in (tuple(image_shape), tuple(image_shape[1:])):
        raise AcceleratorError(f"{where}: image shape {image.shape} is not the compiled "
                               f"{list(image_shape)}",
                               remedy="resize with Accelerator.prepare(pixels), or recompile "
                               "the model for this size")
    if not np.isfinite(image).all():
        raise AcceleratorError(f"{where}: image contains NaN or infinite values")
    return image.reshape(image_shape)
