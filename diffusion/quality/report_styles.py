"""What a version's page shows of its styles (issue 17), for versions drawn by a model of several styles:

    styles_section(version, doc, out_dir, drawing)   None for a version of MNIST handwriting alone

- the evaluation's `per_style` measures (conditional accuracy, style accuracy, CAS), when it has them;
- one grid per published style, `style-<name>.png`: the first GRID_PER_DIGIT digits of each class, a row
  per digit (`diffusion.quality.styles.style_grid`);
- `style-interpolation.png`: each digit drawn between the model's first two styles, the style embedding
  blended from 0 to 1 (MIXES) from one x_T per digit (`style_interpolation`), a fresh draw with the
  version's model, sampler and seed; only when the page is built with that model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusion.config import SamplerConfig
from diffusion.data.datasets import load_digits, to_uint8
from diffusion.data.images import save_grid
from diffusion.data.shards import PublishedVersion, version_files
from diffusion.judges.training import NUM_CLASSES
from diffusion.quality.styles import style_grid, style_interpolation
from diffusion.styles import STYLES

GRID_PER_DIGIT = 8
MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)
MEASURES = ("rows", "conditional_accuracy", "style_accuracy", "real_style_accuracy", "cas_ratio", "cas_size")


def _measures(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The evaluation's per-style rows, in STYLES order: {style, cells {measure: value}, interval}."""
    per_style = (doc or {}).get("per_style") or {}
    return [
        {
            "style": style,
            "cells": {m: per_style[style].get(m) for m in MEASURES},
            "interval": per_style[style].get("cas_ratio_interval"),
        }
        for style in STYLES
        if isinstance(per_style.get(style), dict)
    ]


def _interpolation(
    trained: list[str], drawing: tuple[Any, SamplerConfig, int] | None, out_dir: Path, scale: int
) -> dict[str, Any] | None:
    """Draw and save the interpolation between the model's first two trained styles (None: not drawn)."""
    if drawing is None or len(trained) < 2 or getattr(drawing[0].network, "style_emb", None) is None:
        return None
    model, sampler, seed = drawing
    a, b = STYLES.index(trained[0]), STYLES.index(trained[1])
    digits = list(range(NUM_CLASSES))
    images = style_interpolation(model.network, model.process, digits, a, b, list(MIXES), sampler, seed)
    save_grid(to_uint8(images), out_dir / "style-interpolation.png", ncols=len(MIXES), scale=scale)
    return {"src": "style-interpolation.png", "from": trained[0], "to": trained[1], "mixes": list(MIXES)}


def styles_section(
    version: PublishedVersion,
    doc: dict[str, Any] | None,
    out_dir: Path,
    drawing: tuple[Any, SamplerConfig, int] | None,
    scale: int = 2,
) -> dict[str, Any] | None:
    """What the page's Styles section shows (module docstring), its PNGs saved into `out_dir`; None when the
    version's rows and its model are MNIST handwriting alone. `drawing`: (the loaded model that drew the
    version, its sampler, its seed), or None when the page is built without it."""
    trained = list(version.manifest.get("model", {}).get("styles") or [STYLES[0]])
    images, labels, styles = load_digits(version_files(version))
    present = sorted(set(styles.tolist()))
    if present in ([], [0]) and len(trained) < 2:
        return None
    grids = []
    for code in present:
        src = f"style-{STYLES[code]}.png"
        save_grid(
            style_grid(images, labels, styles, code, GRID_PER_DIGIT), out_dir / src, GRID_PER_DIGIT, scale
        )
        grids.append({"style": STYLES[code], "src": src, "rows": int((styles == code).sum())})
    return {
        "trained": trained,
        "measures": _measures(doc),
        "fields": list(MEASURES),
        "grids": grids,
        "interpolation": _interpolation(trained, drawing, out_dir, scale),
    }


__all__ = ["styles_section"]
