"""The one Parquet schema shared by the prepared real splits and the published synthetic shards.

Columns (named, never positional):
    id               string   stable across runs, unique within a dataset
    image            struct<bytes: binary, path: string>   PNG bytes (Hugging Face `Image` convention)
    label            int64    0-9 (a `ClassLabel` for Hugging Face `datasets`)
    source           string   where the digit came from: "mnist", "fashion-mnist", "synthetic", ...
    sampler          string   synthetic only: sampler name (null for real digits)
    guidance         float32  synthetic only: classifier-free guidance scale w
    seed             int64    synthetic only: the generator seed of the image
    clip_score       float32  synthetic only: 100 x cosine(image, intended prompt)
    classifier_prob  float32  synthetic only: judge probability of the intended label

Every field is nullable on the Arrow level because `datasets` only honours its metadata for
fields equal to its own (always nullable) ones; `digits_table` and the data checks enforce that
id, image, label and source are present. The schema metadata carries the `huggingface` key so
`datasets.load_dataset("parquet", ...)` decodes `image` as a PIL image and `label` as a ClassLabel. This module imports nothing of ours.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image

CLASS_NAMES = [str(i) for i in range(10)]

_HF_FEATURES = {
    "id": {"dtype": "string", "_type": "Value"},
    "image": {"_type": "Image"},
    "label": {"names": CLASS_NAMES, "_type": "ClassLabel"},
    "source": {"dtype": "string", "_type": "Value"},
    "sampler": {"dtype": "string", "_type": "Value"},
    "guidance": {"dtype": "float32", "_type": "Value"},
    "seed": {"dtype": "int64", "_type": "Value"},
    "clip_score": {"dtype": "float32", "_type": "Value"},
    "classifier_prob": {"dtype": "float32", "_type": "Value"},
}

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

DIGITS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", IMAGE_TYPE),
        pa.field("label", pa.int64()),
        pa.field("source", pa.string()),
        pa.field("sampler", pa.string()),
        pa.field("guidance", pa.float32()),
        pa.field("seed", pa.int64()),
        pa.field("clip_score", pa.float32()),
        pa.field("classifier_prob", pa.float32()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": _HF_FEATURES}})},
)


def encode_png(image: np.ndarray) -> bytes:
    """Encode one grayscale image, uint8 of shape (H, W), as PNG bytes."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a uint8 (H, W) image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes into a uint8 (H, W) grayscale array."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def digits_table(
    ids: list[str],
    images: np.ndarray,
    labels: np.ndarray,
    source: str | list[str],
    extra: dict[str, list] | None = None,
) -> pa.Table:
    """Build a table in DIGITS_SCHEMA.

    Args:
        ids: one unique string id per image.
        images: uint8 array of shape (N, H, W).
        labels: int array of shape (N,) with values 0-9.
        source: one source string for all rows, or one per row.
        extra: optional columns among sampler/guidance/seed/clip_score/classifier_prob; others stay null.
    """
    n = len(ids)
    if images.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"ids ({n}), images ({images.shape[0]}) and labels ({labels.shape[0]}) differ")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise ValueError("labels must lie in 0-9")
    extra = extra or {}
    unknown = set(extra) - set(DIGITS_SCHEMA.names[4:])
    if unknown:
        raise ValueError(f"unknown extra columns {sorted(unknown)}")
    columns = {
        "id": ids,
        "image": [{"bytes": encode_png(img), "path": None} for img in images],
        "label": labels.astype(np.int64),
        "source": [source] * n if isinstance(source, str) else source,
    }
    for name in DIGITS_SCHEMA.names[4:]:
        columns[name] = extra.get(name, [None] * n)
    return pa.Table.from_pydict(columns, schema=DIGITS_SCHEMA)


def table_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Decode a DIGITS_SCHEMA table into (images uint8 (N, H, W), labels int64 (N,))."""
    blobs = table.column("image").combine_chunks().field("bytes").to_pylist()
    images = np.stack([decode_png(b) for b in blobs]) if blobs else np.zeros((0, 28, 28), np.uint8)
    labels = table.column("label").to_numpy().astype(np.int64)
    return images, labels
