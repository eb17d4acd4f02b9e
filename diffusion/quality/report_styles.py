"""What a version's page shows of its styles (issue 17), for versions drawn by a model of several styles:

    styles_section(version, doc, out_dir, drawing)   None for a version of MNIST handwriting alone

- the evaluation's `per_style` measures (style accuracy and every headline metric), when it has them;
- one grid per published style, `style-<name>.png`: the first GRID_PER_DIGIT digits of each class, a row
  per digit (`style_grid`);
- `style-interpolation.png`: each digit drawn between the model's first two styles, the style embedding
  blended from 0 to 1 (MIXES) from one x_T per digit (`style_interpolation`, `blended`), a fresh draw with
  the version's model, sampler and seed; only when the page is built with that model.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffusion.config import SamplerConfig
from diffusion.data.datasets import load_digits, to_uint8
from diffusion.data.images import save_grid
from diffusion.data.shards import PublishedVersion, version_files
from diffusion.model.process import GaussianDiffusion
from diffusion.model.samplers import sample
from diffusion.model.unet import UNet
from diffusion.quality.headline import METRICS
from diffusion.styles import STYLES, manifest_styles

GRID_PER_DIGIT = 8
MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)
# the per-style table's rows: what only styles have, then every headline metric in its table's order
MEASURES = ("rows", "style_accuracy", "real_style_accuracy", "cas_size", *METRICS)
INTERVALS = ("cas_ratio", "augmentation_gain")  # measures shown with their 95% interval over CAS seeds
# per_style keys of documents graded before 2026-12-07 (night), read where the new key is absent
OLD_NAMES = {"conditional_accuracy_published": "conditional_accuracy"}


def blended(model: UNet, a: int, b: int, mix: float) -> UNet:
    """A copy of a two-condition `model` whose style `a` embeds as (1 - mix) e_a + mix e_b: asking it for
    style a draws the blend of the two styles' embeddings."""
    if model.style_emb is None:
        raise ValueError("the model knows one style: nothing to blend")
    copy = deepcopy(model)
    with torch.no_grad():
        weight = copy.style_emb.weight
        weight[a] = (1.0 - mix) * model.style_emb.weight[a] + mix * model.style_emb.weight[b]
    return copy


def style_interpolation(
    model: UNet,
    process: GaussianDiffusion,
    digits: list[int],
    a: int,
    b: int,
    mixes: list[float],
    sampler: SamplerConfig,
    seed: int,
) -> Tensor:
    """`digits` drawn for each blend of styles a -> b (`blended`), every blend from the same x_T (one CPU
    generator seeded by `seed` per blend): float (len(digits) * len(mixes), 1, H, W) in [-1, 1], digit-major
    (row i of a grid with len(mixes) columns is digits[i] from style a to style b)."""
    labels = torch.tensor([[digit, a] for digit in digits])
    device = next(model.parameters()).device
    by_mix = torch.stack(
        [
            sample(
                blended(model, a, b, mix),
                process,
                labels,
                sampler,
                torch.Generator().manual_seed(seed),
                device,
            )
            for mix in mixes
        ],
        dim=1,
    )  # (D, M, 1, H, W)
    return by_mix.flatten(0, 1)


def style_grid(
    images: np.ndarray, labels: np.ndarray, styles: np.ndarray, code: int, per_digit: int
) -> np.ndarray:
    """uint8 (10 * per_digit, H, W): the first `per_digit` digits of style `code` for each digit 0-9, one
    row per digit, black where a digit has fewer (`diffusion.data.images.save_grid` with ncols=per_digit)."""
    rows = []
    for digit in range(10):
        pick = np.flatnonzero((styles == code) & (labels == digit))[:per_digit]
        blank = np.zeros((per_digit - len(pick), *images.shape[1:]), np.uint8)
        rows.append(np.concatenate([images[pick], blank]))
    return np.concatenate(rows)


def _measures(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The evaluation's per-style measures as a table of one row per measure and one column per style (STYLES
    order), each measure with a real reference (`<measure>_real`: the same measure of the style's real
    digits) followed by a row of it: {styles, rows: [{field, label, cells {style: value}}], intervals
    {measure: {style: [lo, hi]}}}; None when it has none."""
    per_style = (doc or {}).get("per_style") or {}
    styles = [s for s in STYLES if isinstance(per_style.get(s), dict)]
    if not styles:
        return None

    def row(field: str, label: str) -> dict[str, Any]:
        cells = {s: per_style[s].get(field, per_style[s].get(OLD_NAMES.get(field, field))) for s in styles}
        return {"field": field, "label": label, "cells": cells}

    rows = []
    for f in MEASURES:
        label = METRICS[f].label if f in METRICS else f.replace("_", " ")
        rows.append(row(f, label))
        if any(f"{f}_real" in per_style[s] for s in styles):
            rows.append(row(f"{f}_real", f"{label}, real vs real"))
    return {
        "styles": styles,
        "rows": rows,
        "intervals": {f: {s: per_style[s].get(f"{f}_interval") for s in styles} for f in INTERVALS},
    }


def _interpolation(
    trained: list[str], drawing: tuple[Any, SamplerConfig, int] | str, out_dir: Path, scale: int
) -> tuple[dict[str, Any] | None, str]:
    """Draw and save the interpolation between the model's first two trained styles; what the page says of
    it, or None and why it was not drawn (`drawing`: the model, sampler and seed, or why there is none)."""
    if isinstance(drawing, str):
        return None, drawing
    model, sampler, seed = drawing
    if len(trained) < 2 or model.network.style_emb is None:
        return None, "not drawn: the model knows one style"
    a, b = STYLES.index(trained[0]), STYLES.index(trained[1])
    try:
        images = style_interpolation(
            model.network,
            model.process,
            list(range(model.network.null_class)),
            a,
            b,
            list(MIXES),
            sampler,
            seed,
        )
    except ValueError as err:  # e.g. a distilled sampler, which the teacher network cannot run
        return None, f"not drawn: {err}"
    save_grid(to_uint8(images), out_dir / "style-interpolation.png", ncols=len(MIXES), scale=scale)
    return {"src": "style-interpolation.png", "from": trained[0], "to": trained[1], "mixes": list(MIXES)}, ""


def styles_section(
    version: PublishedVersion,
    doc: dict[str, Any] | None,
    out_dir: Path,
    drawing: tuple[Any, SamplerConfig, int] | str,
    scale: int = 2,
) -> dict[str, Any] | None:
    """What the page's Styles section shows (module docstring), its PNGs saved into `out_dir`; None when the
    version's model was trained on MNIST handwriting alone (so every row is). `drawing`: (the loaded model
    that drew the version, its sampler, its seed), or why the page is built without it."""
    trained = manifest_styles(version.manifest)
    if trained == [STYLES[0]]:
        return None
    images, labels, styles = load_digits(version_files(version))
    present = sorted(set(styles.tolist()))
    interpolation, status = _interpolation(trained, drawing, out_dir, scale)
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
        "grids": grids,
        "interpolation": interpolation,
        "interpolation_status": status,
    }


__all__ = ["blended", "style_grid", "style_interpolation", "styles_section"]
