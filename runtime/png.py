"""Minimal PNG reading and writing with zlib and numpy (no imaging library on the board).

Reads 8-bit, non-interlaced greyscale, RGB, palette, grey+alpha and RGBA images (what
cameras and image tools write by default); writes 8-bit greyscale or RGB.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import AcceleratorError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
MAX_PIXELS = 1 << 28  # a corrupt header must not make us allocate gigabytes


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    """Write uint8 [H,W] (greyscale) or [H,W,3] (RGB) as a PNG."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise AcceleratorError(f"cannot write {pixels.shape} as PNG: need [H,W] or [H,W,3]")
    height, width = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else 2
    # Filter type 0 on every row: each scanline is prefixed with a zero byte.
    rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, -1)], 1)
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    Path(path).write_bytes(SIGNATURE + _chunk(b"IHDR", header)
                           + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
                           + _chunk(b"IEND", b""))


def _chunks(data: bytes, path: Path):
    position = len(SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        yield kind, data[position + 8:position + 8 + length]
        position += 12 + length
    if position != len(data):
        raise AcceleratorError(f"{path} is a truncated PNG", remedy="re-save the image")


def read_png(path: str | Path) -> np.ndarray:
    """uint8 [H,W,C] pixels of a PNG file (C = 1, 2, 3 or 4; palette images become RGB)."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(SIGNATURE):
        raise AcceleratorError(f"{path} is not a PNG file", remedy="pass a .png or .npy image")
    chunks: dict[bytes, bytes] = {}
    for kind, body in _chunks(data, path):
        chunks[kind] = chunks.get(kind, b"") + body  # IDAT may be split over many chunks
    if len(chunks.get(b"IHDR", b"")) != 13:
        raise AcceleratorError(f"{path} has no valid IHDR chunk", remedy="re-save the image")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    if not 0 < width * height <= MAX_PIXELS:
        raise AcceleratorError(f"{path} is {width}x{height} pixels: empty or larger than "
                               f"{MAX_PIXELS} pixels", remedy="resize the picture")
    if depth != 8 or interlace != 0 or colour not in CHANNELS:
        raise AcceleratorError(f"{path}: only 8-bit non-interlaced PNGs are supported "
                               f"(this one: {depth}-bit, colour type {colour}, "
                               f"interlace {interlace})", remedy="re-save it as 8-bit RGB")
    channels = CHANNELS[colour]
    try:
        raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8)
        raw = raw.reshape(height, 1 + width * channels)
    except (zlib.error, ValueError, KeyError) as error:
        raise AcceleratorError(f"{path}: corrupt image data ({error})") from error
    pixels = _unfilter(raw, channels).reshape(height, width, channels)
    if colour == 3:
        palette = chunks.get(b"PLTE", b"")
        entries = len(palette) // 3
        if entries == 0 or len(palette) % 3 or int(pixels.max()) >= entries:
            raise AcceleratorError(f"{path}: palette of {entries} colours does not cover "
                                   f"index {int(pixels.max())}", remedy="re-save it as RGB")
        pixels = np.frombuffer(palette, np.uint8).reshape(-1, 3)[pixels[..., 0]]
    return pixels


def _paeth(left: int, up: int, corner: int) -> int:
    estimate = left + up - corner
    pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
    if pa <= pb and pa <= pc:
        return left
    return up if pb <= pc else corner


def _unfilter(raw: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the per-scanline filters (None, Sub, Up, Average, Paeth) of PNG section 9."""
    out = np.zeros((raw.shape[0], raw.shape[1] - 1), np.uint8)
    previous = np.zeros(out.shape[1], np.uint8)
    for y, (kind, line) in enumerate(zip(raw[:, 0], raw[:, 1:], strict=True)):
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # Sub: a running sum per byte position within the pixel
            row = (np.cumsum(line.reshape(-1, bpp).astype(np.int64), 0) % 256).astype(
                np.uint8).ravel()
        elif kind == 2:
            row = line + previous
        elif kind in (3, 4):
            row = _sequential(line, previous, bpp, kind)
        else:
            raise AcceleratorError(f"unknown PNG filter type {kind} in scanline {y}")
        out[y], previous = row, row
    return out


def _sequential(line: np.ndarray, previous: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    """Average and Paeth depend on the byte just decoded, so they run byte by byte."""
    row = [0] * len(line)
    up = previous.tolist()
    for i, value in enumerate(line.tolist()):
        left = row[i - bpp] if i >= bpp else 0
        corner = up[i - bpp] if i >= bpp else 0
        guess = (left + up[i]) // 2 if kind == 3 else _paeth(left, up[i], corner)
        row[i] = (value + guess) & 0xFF
    return np.array(row, np.uint8)
