"""The frames the publish gate validates: each split's columns plus columns derived from the bytes.

Every image is decoded once per gate, however many splits hold it (the accepted rows are a subset of the
unfiltered ones): `decode_images` memoises by PNG bytes. The nearest-training-digit search runs batched on
the device that holds the training pixels (`nearest_rms_distance`).

Derived columns of every split:

    png_ok            bool     the bytes are a PNG that decodes
    image_mode        str      "L" for 8-bit grayscale ("RGB", "LA", ... otherwise; "" if not a PNG)
    image_height      int64    pixels (0 if not a PNG)
    image_width       int64

of the `train` split (the accepted rows, what the product is) also:

    pixel_sha256      str      hash of the decoded grayscale pixels (null if they do not decode)
    nearest_train_rms float64  RMS pixel distance (pixels in [0, 1]) to the nearest training digit
    is_copy           int64    1 where nearest_train_rms < copy_distance
    label_count       float64  rows with this row's label (NaN where the label is null)
    label_requested   number   rows requested for this row's label (0 for a class not requested)

and of the `unfiltered` split (every sampled row):

    filter_verdict    bool     what the filter's thresholds say of the row's scores (null if a score is)
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from diffusion.config import FilterConfig
from diffusion.data.schema import decode_png

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


def decode_images(blobs: list[bytes | None], memo: dict[bytes, Decoded]) -> list[Decoded]:
    """Decode every blob, each distinct one once across calls that share `memo`."""
    out = []
    for blob in blobs:
        if blob is None:
            out.append(_decode(None))
            continue
        if blob not in memo:
            memo[blob] = _decode(blob)
        out.append(memo[blob])
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


def _base_frame(table: pa.Table, decoded: list[Decoded]) -> pd.DataFrame:
    frame = table.flatten().to_pandas(types_mapper=pd.ArrowDtype)
    frame["png_ok"] = np.array([d.pixels is not None for d in decoded], dtype=bool)
    frame["image_mode"] = [d.mode for d in decoded]
    frame["image_height"] = np.array([d.height for d in decoded], dtype=np.int64)
    frame["image_width"] = np.array([d.width for d in decoded], dtype=np.int64)
    return frame


def train_frame(
    table: pa.Table,
    decoded: list[Decoded],
    counts: dict[int, int],
    copy_distance: float,
    train: np.ndarray | torch.Tensor,
) -> pd.DataFrame:
    """The accepted rows with TRAIN_COLUMNS: Arrow dtypes kept (`image` flattened into its fields)."""
    frame = _base_frame(table, decoded)
    square = [
        i for i, d in enumerate(decoded) if d.pixels is not None and d.pixels.shape == (IMAGE_SIZE,) * 2
    ]
    nearest = np.full(len(frame), np.nan)
    if square:
        nearest[square] = nearest_rms_distance(np.stack([decoded[i].pixels for i in square]), train)
    labels = numeric(frame, "label")
    label_series = pd.Series(labels)
    frame["pixel_sha256"] = pd.Series([d.sha256 for d in decoded], dtype=object)
    frame["nearest_train_rms"] = nearest
    frame["is_copy"] = (nearest < copy_distance).astype(np.int64)  # NaN compares False
    frame["label_count"] = label_series.map(label_series.value_counts()).to_numpy(dtype=float)
    frame["label_requested"] = [np.nan if math.isnan(x) else counts.get(int(x), 0) for x in labels]
    return frame


def unfiltered_frame(table: pa.Table, decoded: list[Decoded], filter: FilterConfig) -> pd.DataFrame:
    """Every sampled row with UNFILTERED_COLUMNS; `filter_verdict` re-applies the filter to the scores."""
    frame = _base_frame(table, decoded)
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
