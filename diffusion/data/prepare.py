"""The `prepare` stage: the configured real sources, mixed, split deterministically into Parquet files.

Writes `<out>/{train,val,test}.parquet` in DIGITS_SCHEMA, every row with its `style` and `source_detail`,
and `<out>/sources.json`: where the digits came from (`read_sources`; each published version's manifest
and dataset card carry it on).
The split is stratified by (digit, style), so every split holds each style's digits in the same shares.
The test split is held out: no model of the pipeline trains on it. The folder is written whole and
atomically (nothing half-written).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from diffusion.checkpoint import atomic_path
from diffusion.config import DataConfig
from diffusion.data.schema import digits_table
from diffusion.data.sources import RawDigits, load_sources, source_provenance
from diffusion.errors import DataError
from diffusion.styles import SOURCE_STYLE, STYLES, style_code

SPLITS = ("train", "val", "test")
SOURCES_FILE = "sources.json"  # beside the splits: [source_provenance of each configured source]


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split row indices per stratum by `fractions` (in SPLITS order), deterministically for a seed.

    `labels` (N,) int are the strata (`strata` makes them of (digit, style)). Each stratum is shuffled by its
    own generator (seeded by (seed, stratum)), so adding rows of one stratum never moves rows of another.
    Counts are rounded per stratum; the last split takes the remainder.
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


def strata(labels: np.ndarray, styles: np.ndarray) -> np.ndarray:
    """One stratum per (digit, style): style code x 10 + digit, so handwritten-mnist's (code 0) strata are the
    digits themselves and an MNIST-only split is the split of the digits alone."""
    return styles.astype(np.int64) * 10 + labels


@dataclass(frozen=True)
class Mixed:
    """The configured sources concatenated: images (N, 28, 28) uint8, labels and style codes (N,) int64,
    ids, sources and details (N,) (a detail is None where a source tells nothing more)."""

    images: np.ndarray
    labels: np.ndarray
    styles: np.ndarray
    ids: list[str]
    sources: list[str]
    details: list[str | None]


def mix(parts: list[tuple[str, RawDigits]]) -> Mixed:
    """Concatenate (style, digits) parts in order. DataError when two sources give the same id."""
    ids = [i for _, raw in parts for i in raw.ids]
    if len(set(ids)) != len(ids):
        raise DataError("data.sources: two sources give rows of the same id; keep one of them")
    return Mixed(
        np.concatenate([raw.images for _, raw in parts]),
        np.concatenate([raw.labels for _, raw in parts]),
        np.concatenate([np.full(len(raw.labels), style_code(style), np.int64) for style, raw in parts]),
        ids,
        [raw.source for _, raw in parts for _ in raw.ids],
        [d for _, raw in parts for d in (raw.details or [None] * len(raw.ids))],
    )


@dataclass(frozen=True)
class SplitSummary:
    """metrics: the headline numbers (source, total, <split>_count, <style>_count per configured style);
    class_rows: one row per class with its count in each split (a DVC plot, kept out of the metrics so
    `dvc metrics show` stays short)."""

    metrics: dict[str, int | str]
    class_rows: list[dict[str, int]]


def check_strata_split(data: Mixed, parts: dict[str, np.ndarray], fractions: dict[str, float]) -> None:
    """DataError (one line) when a (digit, style) has no row in a split asked for (fraction > 0): a style
    too small to split (two fonts, one rendering each) would leave its per-style measures, and early
    stopping on its validation digits, with nothing to read, long after `prepare` said it was done."""
    codes = strata(data.labels, data.styles)
    for name, idx in parts.items():
        if fractions[name] > 0:
            for stratum in np.setdiff1d(np.unique(codes), codes[idx]):
                style, digit = STYLES[int(stratum) // 10], int(stratum) % 10
                have = int((codes == stratum).sum())
                raise DataError(
                    f"data.sources: the style {style} has {have} digit(s) {digit}, too few for data.split to"
                    f" give its {name} split one (fractions {fractions}); add rows of it (for printed digits:"
                    " more fonts or a larger per_font)"
                )


def write_splits(
    data: Mixed, cfg: DataConfig, out_dir: Path, sources: list[dict[str, Any]] | None = None
) -> SplitSummary:
    """Write the three split files, and `sources` (`source_provenance` of each source) as SOURCES_FILE when
    given, into `out_dir` atomically and summarise them; DataError, nothing written, when a (digit, style)
    would have no row in a split (`check_strata_split`)."""
    fractions = cfg.split.model_dump()
    parts = stratified_split(strata(data.labels, data.styles), fractions, cfg.seed)
    check_strata_split(data, parts, fractions)
    metrics: dict[str, int | str] = {
        "source": "+".join(dict.fromkeys(data.sources)),
        "total": int(len(data.labels)),
    }
    for style in cfg.styles:
        metrics[f"{style}_count"] = int((data.styles == style_code(style)).sum())
    rows = [{"class": c} for c in range(10)]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name, idx in parts.items():
            table = digits_table(
                [data.ids[i] for i in idx],
                data.images[idx],
                data.labels[idx],
                [data.sources[i] for i in idx],
                style=data.styles[idx],
                source_detail=[data.details[i] for i in idx],
            )
            pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
            metrics[f"{name}_count"] = int(len(idx))
            for row in rows:
                row[name] = int((data.labels[idx] == row["class"]).sum())
        if sources is not None:
            record = json.dumps({"sources": sources}, indent=1, ensure_ascii=False)
            (tmp / SOURCES_FILE).write_text(record, encoding="utf-8")
    return SplitSummary(metrics, rows)


class FontRecord(BaseModel):
    """One font a printed source drew (`diffusion.data.printed.font_provenance`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    family: str = Field(min_length=1)
    file: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    copyright: str | None
    licence: str | None
    licence_url: str | None


class SourceRecord(BaseModel):
    """One entry of SOURCES_FILE (`diffusion.data.sources.source_provenance`): rows before the split."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    kind: Literal[tuple(SOURCE_STYLE)]  # type: ignore[valid-type]
    style: Literal[STYLES]  # type: ignore[valid-type]
    weight: float = Field(gt=0)
    rows: int = Field(ge=1)
    fonts: list[FontRecord] | None = None


_SOURCES = TypeAdapter(list[SourceRecord])


def read_sources(split: str | Path) -> list[dict[str, Any]] | None:
    """The sources `prepare` wrote beside a split file (`source_provenance` of each, as written), or None
    when the split was not written by `prepare` (no SOURCES_FILE beside it). DataError naming the file and
    the first field that is not what `write_splits` writes."""
    path = Path(split).with_name(SOURCES_FILE)
    if not path.is_file():
        return None
    try:
        records = _SOURCES.validate_python(json.loads(path.read_text(encoding="utf-8"))["sources"])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(["sources", *(str(x) for x in first["loc"])])
        raise DataError(f"{path}: {where}: {first['msg']}; run prepare again") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{path}: not the sources file `digits prepare` writes ({err}); run prepare again"
        ) from None
    if not records:
        raise DataError(f"{path}: sources: no source listed; run prepare again")
    return [r.model_dump(exclude_unset=True) for r in records]


def prepare(cfg: DataConfig, out_dir: Path) -> SplitSummary:
    """Load the configured sources, mix and split them, and write the Parquet files and SOURCES_FILE."""
    parts = load_sources(cfg)
    sources = [source_provenance(src, raw) for src, (_, raw) in zip(cfg.sources, parts, strict=True)]
    return write_splits(mix(parts), cfg, Path(out_dir), sources)
