"""Pictures in and maps out, through Pillow (PNG of any bit depth, JPEG, BMP, TIFF: what
cameras and image tools write); PYNQ's board images ship Pillow too."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import AcceleratorError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 1 << 28  # a corrupt header must not make us allocate gigabytes


def read_picture(path: str | Path) -> np.ndarray:
    """uint8 [H,W,C] pixels, C = 3 for colour (palette and alpha images become RGB) or 1 for
    greyscale; 16-bit images keep their 8 most significant bits."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as image:
            if image.width * image.height == 0:
                raise AcceleratorError(f"{path} is {image.width}x{image.height} pixels: empty",
                                       remedy="pass a picture with pixels")
            return _pixels(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as error:  # Pillow's decoders raise these for broken files
        raise AcceleratorError(f"cannot read {path} as a picture ({error})",
                               remedy="pass a PNG or JPEG picture, or a .npy array") from None


def _pixels(image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: keep the top byte
        wide = np.asarray(image, dtype=np.int64)
        return (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)[..., None]
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    """Write uint8 [H,W] (greyscale) or [H,W,3] (RGB) as a PNG."""
    from PIL import Image

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise AcceleratorError(f"cannot write pixels of shape {pixels.shape} as a PNG")
    with open(path, "wb") as file:  # a path without .png (a staging name) is still a PNG
        Image.fromarray(pixels).save(file, format="PNG")
