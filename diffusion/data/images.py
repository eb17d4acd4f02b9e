"""Image helpers: grids saved as PNG (sample grids, the forward-diffusion strip, data previews), and the
MNIST layout that digits from other sources are brought to."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from diffusion.checkpoint import write_bytes_atomic

BOX, SIZE = 20, 28  # MNIST: the ink fitted into 20x20, centred by centre of mass in 28x28


def grid(images: np.ndarray, ncols: int, pad: int = 2, pad_value: int = 128) -> np.ndarray:
    """Tile uint8 images (N, H, W) row by row into one uint8 (rows*(H+pad)+pad, ncols*(W+pad)+pad) image."""
    n, h, w = images.shape
    nrows = -(-n // ncols)
    out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[top : top + h, left : left + w] = img
    return out


def save_grid(images: np.ndarray, path: str | Path, ncols: int, scale: int = 2) -> None:
    """Save uint8 images (N, H, W) as one PNG grid, `ncols` per row, upscaled `scale` times (atomic)."""
    tiled = grid(images, ncols)
    img = Image.fromarray(tiled, mode="L")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def mnist_layout(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """uint8 (28, 28) from a white-on-black drawing of any size: the ink's bounding box fitted into a
    `box` x `box` square (MNIST: 20; aspect ratio kept, Lanczos), then placed so that its centre of mass is
    at pixel (14, 14) (rounded to whole pixels), as LeCun et al. (1998) prepared MNIST: its digits' centres
    of mass average (14.0, 14.0) in row and column indices, not the geometric centre 13.5."""
    rows, cols = np.nonzero(ink)
    if len(rows) == 0:
        raise ValueError("nothing was drawn")
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    weights = small.sum()
    cy = (small.sum(axis=1) * np.arange(small.shape[0])).sum() / weights
    cx = (small.sum(axis=0) * np.arange(small.shape[1])).sum() / weights
    top = int(np.clip(round(SIZE / 2 - cy), 0, SIZE - small.shape[0]))
    left = int(np.clip(round(SIZE / 2 - cx), 0, SIZE - small.shape[1]))
    out = np.zeros((SIZE, SIZE), np.float64)
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return np.clip(out, 0, 255).round().astype(np.uint8)
