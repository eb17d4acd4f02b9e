"""The frames the publish gate validates: each split's columns plus columns derived from the bytes, built
chunk by chunk so that memory follows the chunk, not the version.

Every image is decoded once per gate, however many splits hold it (the accepted rows are a subset of the
unfiltered ones): `ImageMemo` keeps, per distinct PNG (keyed by the SHA-256 of its bytes), the few facts
the gate needs, never the pixels. The nearest-training-digit search runs batched, a chunk at a time, on the
device that holds the training pixels (`nearest_rms_distance`).

Derived columns of every split:

    png_ok            bool     the bytes are a PNG that decodes
    image_mode        str      "L" for 8-bit grayscale ("RGB", "LA", ... otherwise; "" if not a PNG)
    image_height      int64    pixels (0 if not a PNG)
    image_width       int64

of the `train` split (the accepted rows, what the product is) also:

    pixel_sha256      str      hash of the decoded grayscale pixels (null if they do not decode)
    nearest_train_rms float64  RMS pixel distance (pixels in [0, 1]) to the nearest training digit
    is_copy           int64    1 where nearest_train_rms < copy_distance
    label_count       float64  rows of the whole split of this row's class, its (label, style) cell (NaN where
                               the label or style is null)
    label_requested   number   rows requested for this row's class (0 for a class not requested)

and of the `unfiltered` split (every sampled row):

    filter_verdict    bool     what the filter's thresholds say of the row's scores (null if a score is)

`split_frame` holds what only the whole split can tell (uniqueness, row and class counts, the share of
copies): `id`, and for `train` also `label`, `style`, `pixel_sha256` and `is_copy`, gathered from the chunks;
`rates_per_style` the shares of copies and repeats among each style's rows.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from diffusion.config import FilterConfig
from diffusion.data.schema import decode_png
from diffusion.styles import STYLES

IMAGE_SIZE = 28
IMAGE_COLUMNS = ("png_ok", "image_mode", "image_height", "image_width")
TRAIN_COLUMNS = (
    *IMAGE_COLUMNS,
    "pixel_sha256",
    "nearest_train_rms",
    "is_copy",
    "label_count",
    "label_requested",
)
UNFILTERED_COLUMNS = (*IMAGE_COLUMNS, "filter_verdict")
SPLIT_COLUMNS = {"train": ("id", "label", "style", "pixel_sha256", "is_copy"), "unfiltered": ("id",)}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLORS = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}  # PNG color type -> PIL-style mode


def png_header(data: bytes | None) -> tuple[str, int, int]:
    """(mode, height, width) from a PNG's IHDR chunk, or ("", 0, 0) if `data` is not a PNG."""
    if not data or len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return "", 0, 0
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    mode = _PNG_COLORS.get(color, f"color{color}") + ("" if depth == 8 else f";{depth}")
    return mode, height, width


@dataclass(frozen=True)
class Decoded:
    """One image's bytes, read once: its PNG header, and its grayscale pixels when they decode."""

    mode: str
    height: int
    width: int
    pixels: np.ndarray | None  # uint8 (H, W)

    @property
    def sha256(self) -> str | None:
        if self.pixels is None:
            return None
        return hashlib.sha256(f"{self.pixels.shape}".encode() + self.pixels.tobytes()).hexdigest()


@dataclass
class Facts:
    """What the gate keeps of one distinct PNG: its header, whether and to what pixels it decodes, and
    (once a `train` chunk has searched for it) its distance to the nearest training digit."""

    mode: str
    height: int
    width: int
    ok: bool
    pixel_sha256: str | None
    nearest: float = math.nan


@dataclass
class ImageMemo:
    """Facts per distinct PNG (key: SHA-256 of the bytes) shared by the splits of one gate call."""

    facts: dict[bytes, Facts] = field(default_factory=dict)


def _decode(blob: bytes | None) -> Decoded:
    mode, height, width = png_header(blob)
    pixels = None
    if mode:
        try:
            pixels = decode_png(blob)  # a full decode, converted to 8-bit grayscale
        except Exception:  # any decoder failure means the bytes do not decode
            pixels = None
    return Decoded(mode, height, width, pixels)


def image_blobs(table: pa.Table) -> list[bytes | None]:
    """The PNG bytes of every row (None for every row when the column is missing or of another type)."""
    flat = table.flatten()
    if "image.bytes" in flat.column_names and pa.types.is_binary(flat.schema.field("image.bytes").type):
        return flat.column("image.bytes").to_pylist()
    return [None] * table.num_rows


def image_facts(blobs: list[bytes | None], memo: ImageMemo, train: torch.Tensor | None = None) -> list[Facts]:
    """The facts of each blob, decoding each distinct blob once across calls that share `memo`.

    With `train` (float (M, 784) in [0, 1] on the device to search on), the square 28x28 images this call
    decodes also get their nearest-training-digit distance, searched in one batch. Call it for the `train`
    split first: a blob first decoded without `train` keeps a NaN distance.
    """
    out: list[Facts] = []
    pixels: dict[bytes, np.ndarray] = {}  # square images decoded by this call, for the search
    for blob in blobs:
        if blob is None:
            out.append(Facts("", 0, 0, False, None))
            continue
        key = hashlib.sha256(blob).digest()
        facts = memo.facts.get(key)
        if facts is None:
            decoded = _decode(blob)
            facts = Facts(
                decoded.mode, decoded.height, decoded.width, decoded.pixels is not None, decoded.sha256
            )
            memo.facts[key] = facts
            if train is not None and facts.ok and decoded.pixels.shape == (IMAGE_SIZE, IMAGE_SIZE):
                pixels[key] = decoded.pixels
        out.append(facts)
    if pixels:
        distances = nearest_rms_distance(np.stack(list(pixels.values())), train)
        for key, distance in zip(pixels, distances, strict=True):
            memo.facts[key].nearest = float(distance)
    return out


def unit_pixels(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (M, H, W) -> float32 (M, H*W) in [0, 1] on `device`: the rows the nearest-digit search compares."""
    rows = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), math.prod(images.shape[1:])))
    return rows.to(device, torch.float32).div_(255.0)


def nearest_rms_distance(
    images: np.ndarray, train: np.ndarray | torch.Tensor, chunk: int = 1024, train_chunk: int = 8192
) -> np.ndarray:
    """RMS pixel distance (pixels scaled to [0, 1]) from each image to its nearest training image.

    Args:
        images: uint8 (N, H, W).
        train: uint8 (M, H, W), or float (M, H*W) in [0, 1] already on the device to search on
            (`diffusion.generate.workers.train_pixels`, loaded once per worker).
        chunk, train_chunk: block sizes of the (chunk, train_chunk) distance matrices.
    Returns:
        float64 (N,); inf where there are no training images.
    """
    if isinstance(train, np.ndarray):
        train = unit_pixels(train)
    n, m = len(images), len(train)
    if n == 0 or m == 0:
        return np.full(n, np.inf)
    dims = math.prod(images.shape[1:])
    query_all = torch.from_numpy(np.ascontiguousarray(images).reshape(n, dims)).to(train.device)
    best = []
    for start in range(0, n, chunk):
        query = query_all[start : start + chunk].float().div_(255.0)
        nearest = torch.full((len(query),), math.inf, device=train.device)
        for t0 in range(0, m, train_chunk):
            dist = torch.cdist(query, train[t0 : t0 + train_chunk], compute_mode="use_mm_for_euclid_dist")
            nearest = torch.minimum(nearest, dist.min(dim=1).values)
        best.append(nearest)
    return (torch.cat(best).double().cpu() / math.sqrt(dims)).numpy()


def numeric(frame: pd.DataFrame, name: str) -> np.ndarray:
    """float64 (N,) of a column, NaN where it is null, not a number, or missing altogether."""
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name].astype(object), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def cells(frame: pd.DataFrame) -> np.ndarray:
    """float64 (N,) class keys of the rows, 10 x style + label (`diffusion.styles.cell`); NaN where either is
    null or missing."""
    return numeric(frame, "label") + 10 * numeric(frame, "style")


def label_counts(table: pa.Table) -> dict[int, int]:
    """Rows per class, a (label, style) cell, of a whole split, read as `numeric` reads them (null or
    non-numbers count nowhere)."""
    names = [c for c in ("label", "style") if c in table.column_names]
    keys = pd.Series(cells(table.select(names).to_pandas(types_mapper=pd.ArrowDtype)))
    return {int(k): int(n) for k, n in keys.dropna().value_counts().items()}


def _base_frame(table: pa.Table, facts: list[Facts]) -> pd.DataFrame:
    frame = table.flatten().to_pandas(types_mapper=pd.ArrowDtype)
    frame["png_ok"] = np.array([f.ok for f in facts], dtype=bool)
    frame["image_mode"] = [f.mode for f in facts]
    frame["image_height"] = np.array([f.height for f in facts], dtype=np.int64)
    frame["image_width"] = np.array([f.width for f in facts], dtype=np.int64)
    return frame


def train_frame(
    chunk: pa.Table,
    facts: list[Facts],
    counts: dict[int, int],
    split_counts: dict[int, int],
    copy_distance: float,
) -> pd.DataFrame:
    """A chunk of the accepted rows with TRAIN_COLUMNS: Arrow dtypes kept (`image` flattened into its fields).

    counts: rows requested per class (cell); split_counts: rows per cell in the whole split (`label_counts`).
    """
    frame = _base_frame(chunk, facts)
    nearest = np.array([f.nearest if f.ok else math.nan for f in facts], dtype=float)
    labels = cells(frame)
    frame["pixel_sha256"] = pd.Series([f.pixel_sha256 for f in facts], dtype=object)
    frame["nearest_train_rms"] = nearest
    frame["is_copy"] = (nearest < copy_distance).astype(np.int64)  # NaN compares False
    frame["label_count"] = [math.nan if math.isnan(x) else float(split_counts.get(int(x), 0)) for x in labels]
    frame["label_requested"] = [np.nan if math.isnan(x) else counts.get(int(x), 0) for x in labels]
    return frame


def unfiltered_frame(chunk: pa.Table, facts: list[Facts], filter: FilterConfig) -> pd.DataFrame:
    """A chunk of every sampled row with UNFILTERED_COLUMNS; `filter_verdict` re-applies the filter."""
    frame = _base_frame(chunk, facts)
    checks = [  # in float32, as the filter compared them (`diffusion.judges.scoring.keep_mask`)
        numeric(frame, key.removeprefix("min_")).astype(np.float32) >= np.float32(bound)
        for key in ("min_clip_score", "min_clip_margin", "min_classifier_prob")
        if (bound := getattr(filter, key)) is not None
    ]
    if filter.require_pred_match:
        checks.append(numeric(frame, "classifier_pred") == numeric(frame, "label"))
    verdict = np.logical_and.reduce(checks) if checks else np.ones(len(frame), bool)
    scored = ("clip_score", "clip_margin", "classifier_prob", "classifier_pred", "label")
    missing = np.logical_or.reduce([np.isnan(numeric(frame, c)) for c in scored])
    frame["filter_verdict"] = pd.array(
        [None if m else bool(v) for v, m in zip(verdict, missing, strict=True)], dtype="boolean"
    )
    return frame


def split_part(split: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The SPLIT_COLUMNS of one chunk frame (those it has), kept while the chunk itself is dropped."""
    return frame[[c for c in SPLIT_COLUMNS[split] if c in frame]].copy()


def split_frame(split: str, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The whole split's SPLIT_COLUMNS from its chunks' `split_part`s (no rows: the columns, empty)."""
    if not parts:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in SPLIT_COLUMNS[split]})
    return pd.concat(parts, ignore_index=True)


def rates_per_style(
    styles: np.ndarray, copies: np.ndarray, repeats: np.ndarray
) -> dict[str, dict[str, float]]:
    """{style name: {memorization_rate, duplicate_rate}} among the rows of each style (float64 codes (N,),
    NaN where null), when the rows hold more than one; {} otherwise (the version's rates say it all)."""
    codes = sorted({int(c) for c in styles[~np.isnan(styles)] if 0 <= c < len(STYLES)})
    if len(codes) < 2:
        return {}
    return {
        STYLES[c]: {
            "memorization_rate": float(copies[styles == c].mean()),
            "duplicate_rate": float(repeats[styles == c].mean()),
        }
        for c in codes
    }
