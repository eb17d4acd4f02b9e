"""Image grids saved as PNG: sample grids, the forward-diffusion strip, data previews."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from diffusion.checkpoint import write_bytes_atomic


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
