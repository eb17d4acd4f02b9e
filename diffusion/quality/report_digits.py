"""What a version's page shows of its published digits, read from the version's Parquet: per-class digit
grids, score histograms, and the digits its evaluation flagged as possible label issues.

    grids(train, unfiltered, classes, out_dir)      best / worst accepted and rejected digits per class
    histograms(scored, classes, filters)            CLIP score and classifier probability, accepted vs rejected
    label_issues(doc, train, out_dir)               the flagged digits, under the label they were published as

Grids and digits are saved as PNGs into the page's folder (`class-<c>-<kind>.png`, `label-issues/<k>.png`)
and returned as what the page says of them; histograms are inline SVG (`charts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from diffusion.data.datasets import read_table
from diffusion.data.images import save_grid
from diffusion.data.schema import decode_png
from diffusion.data.shards import PublishedVersion, version_files
from diffusion.quality import charts
from diffusion.quality.report_html import markup
from diffusion.quality.trajectory import PAD

SCORE_COLUMNS = ["label", "clip_score", "clip_margin", "classifier_prob", "classifier_pred", "accepted"]
GRID_SIZE = 8  # digits per grid
BINS = 20
LABEL_ISSUES_SHOWN = 32
SCALE = 2  # PNG upscaling


def read_split(version: PublishedVersion, split: str) -> pa.Table | None:
    """The id, image and score columns of one split, or None when the version has no such split."""
    files = version_files(version, split)
    return read_table(files, columns=["id", "image", *SCORE_COLUMNS]) if files else None


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls (booleans as 0/1)."""
    return table.column(name).cast(pa.float64()).to_numpy()


def _images(table: pa.Table, rows: np.ndarray | list[int]) -> np.ndarray:
    blobs = table.column("image").combine_chunks().field("bytes").take(pa.array(rows, pa.int64())).to_pylist()
    return np.stack([decode_png(b) for b in blobs])


def _grid(table: pa.Table, rows: np.ndarray, out_dir: Path, kind: str, c: int) -> dict[str, Any]:
    """Save the digits at `rows` as the PNG grid `class-<c>-<kind>.png`; what the page says of it."""
    what, src = f"{kind}-{c}", f"class-{c}-{kind}.png"
    if rows.size == 0:
        return {"what": what, "count": 0}
    save_grid(_images(table, rows), out_dir / src, ncols=4, scale=SCALE)
    clip = _column(table, "clip_score")[rows]
    lo, hi = (float(np.nanmin(clip)), float(np.nanmax(clip))) if np.isfinite(clip).any() else (None, None)
    return {"what": what, "count": int(rows.size), "src": src, "clip_min": lo, "clip_max": hi}


def grids(train: pa.Table, unfiltered: pa.Table | None, classes: list[int], out_dir: Path) -> list[dict]:
    """Per class: the best and worst accepted digits by CLIP score, and rejected ones over the score range."""
    labels, clip = train.column("label").to_numpy(), _column(train, "clip_score")
    if unfiltered is not None:
        u_labels, u_clip = unfiltered.column("label").to_numpy(), _column(unfiltered, "clip_score")
        u_rejected = _column(unfiltered, "accepted") == 0
    rows = []
    for c in classes:
        of_class = np.flatnonzero(labels == c)
        ranked = of_class[np.argsort(-np.nan_to_num(clip[of_class], nan=-np.inf), kind="stable")]
        cells: list[dict | None] = [
            _grid(train, ranked[:GRID_SIZE], out_dir, "best", c),
            _grid(train, ranked[::-1][:GRID_SIZE], out_dir, "worst", c),
        ]
        if unfiltered is None:
            cells.append(None)
        else:
            rejected = np.flatnonzero((u_labels == c) & u_rejected)
            rejected = rejected[np.argsort(np.nan_to_num(u_clip[rejected], nan=-np.inf), kind="stable")]
            spread = np.linspace(0, rejected.size - 1, min(GRID_SIZE, rejected.size)).round().astype(int)
            cells.append(_grid(unfiltered, rejected[np.unique(spread)], out_dir, "rejected", c))
        rows.append({"class": c, "cells": cells})
    return rows


def histograms(scored: pa.Table, classes: list[int], filters: dict[str, Any]) -> dict[str, Any]:
    """The CLIP-score histograms per class (shared bins) and the classifier-probability one, accepted vs
    rejected, with the filter's thresholds."""
    labels, verdict = scored.column("label").to_numpy(), _column(scored, "accepted")  # 1, 0 or NaN
    clip, prob = _column(scored, "clip_score"), _column(scored, "classifier_prob")

    def split(values: np.ndarray, mask: np.ndarray, edges: np.ndarray) -> dict[str, list[int]]:
        ok = mask & np.isfinite(values)
        return {
            k: np.histogram(values[ok & sel], edges)[0].tolist()
            for k, sel in (("accepted", verdict == 1), ("rejected", verdict == 0))
        }

    clip_chart = None
    if np.isfinite(clip).any():
        edges = np.histogram_bin_edges(clip[np.isfinite(clip)], BINS)
        panels = {str(c): split(clip, labels == c, edges) for c in classes}
        title = "CLIP score per class"
        clip_chart = charts.histograms_svg(
            panels, edges.tolist(), "hist-clip", title, filters.get("min_clip_score"), prefix="class "
        )
    prob_edges = np.linspace(0.0, 1.0, BINS + 1)
    prob_chart = charts.histograms_svg(
        {"all classes": split(prob, np.ones(len(prob), bool), prob_edges)},
        prob_edges.tolist(),
        "hist-classifier-prob",
        "Filter classifier's probability of the intended digit",
        filters.get("min_classifier_prob"),
    )
    return {"clip": markup(clip_chart) if clip_chart else None, "prob": markup(prob_chart)}


def label_issues(doc: dict[str, Any] | None, train: pa.Table, out_dir: Path) -> dict[str, Any] | None:
    """The first LABEL_ISSUES_SHOWN flagged digits (in the document's order) saved as `label-issues/<k>.png`,
    with the label they were published under, read from the train split by id."""
    if doc is None or doc["label_issues"] is None:
        return None
    ids = doc["label_issues"]
    found = train.filter(pc.is_in(train.column("id"), value_set=pa.array(ids, pa.string())))
    where = {row_id: i for i, row_id in enumerate(found.column("id").to_pylist())}
    present = [i for i in ids if i in where]
    shown = present[:LABEL_ISSUES_SHOWN]
    issues = []
    if shown:
        images = _images(found, [where[i] for i in shown])
        labels = found.column("label").to_pylist()
        for k, (row_id, image) in enumerate(zip(shown, images, strict=True)):
            src = f"label-issues/{k}.png"
            save_grid(image[None], out_dir / src, ncols=1, scale=SCALE)
            width = (image.shape[1] + 2 * PAD) * SCALE
            issues.append({"id": row_id, "label": labels[where[row_id]], "src": src, "width": width})
    return {"count": len(ids), "shown": issues, "not_found": len(ids) - len(present)}


__all__ = ["SCALE", "grids", "histograms", "label_issues", "read_split"]
