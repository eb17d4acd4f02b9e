"""The `prepare` stage: a deterministic stratified split of a real source into Parquet files.

Writes `<out>/{train,val,test}.parquet` in DIGITS_SCHEMA. The test split is held out: no model of
the pipeline trains on it. The folder is written whole and atomically (nothing half-written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from diffusion.checkpoint import atomic_path
from diffusion.config import DataConfig
from diffusion.data.schema import digits_table
from diffusion.data.sources import RawDigits, load_source

SPLITS = ("train", "val", "test")


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split row indices per class by `fractions` (in SPLITS order), deterministically for a seed.

    Each class is shuffled by its own generator (seeded by (seed, class)), so adding rows of one class
    never moves rows of another. Counts are rounded per class; the last split takes the remainder.
    Returns split name -> sorted int64 indices; the splits are disjoint and cover every row.
    """
    out: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[np.random.default_rng([seed, int(cls)]).permutation(len(idx))]
        start = 0
        for name in SPLITS[:-1]:
            count = int(round(fractions[name] * len(idx)))
            out[name].append(idx[start : start + count])
            start += count
        out[SPLITS[-1]].append(idx[start:])
    return {name: np.sort(np.concatenate(parts)).astype(np.int64) for name, parts in out.items()}


@dataclass(frozen=True)
class SplitSummary:
    """metrics: the headline numbers (source, total, <split>_count); class_rows: one row per class with
    its count in each split (a DVC plot, kept out of the metrics so `dvc metrics show` stays short)."""

    metrics: dict[str, int | str]
    class_rows: list[dict[str, int]]


def write_splits(raw: RawDigits, cfg: DataConfig, out_dir: Path) -> SplitSummary:
    """Write the three split files into `out_dir` atomically and summarise them."""
    parts = stratified_split(raw.labels, cfg.split.model_dump(), cfg.seed)
    metrics: dict[str, int | str] = {"source": raw.source, "total": int(len(raw.labels))}
    rows = [{"class": c} for c in range(10)]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, idx in parts.items():
            table = digits_table([raw.ids[i] for i in idx], raw.images[idx], raw.labels[idx], raw.source)
            pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
            metrics[f"{name}_count"] = int(len(idx))
            for row in rows:
                row[name] = int((raw.labels[idx] == row["class"]).sum())
    return SplitSummary(metrics, rows)


def prepare(cfg: DataConfig, out_dir: Path) -> SplitSummary:
    """Load the configured source, split it and write the Parquet files."""
    return write_splits(load_source(cfg), cfg, Path(out_dir))
