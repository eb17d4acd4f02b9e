"""The one Parquet schema shared by the prepared real splits and the published synthetic shards.

Columns (named, never positional; every generation and quality column is null for real digits):
    id               string   stable across runs, unique within a dataset
    image            struct<bytes: binary, path: string>   PNG bytes (Hugging Face `Image` convention)
    label            int64    0-9 (a `ClassLabel` for Hugging Face `datasets`)
    source           string   where the digit came from: "mnist", "fonts", "uci-digits", "synthetic", ...
    style            int64    the digit's style, a `ClassLabel` of diffusion.styles.STYLES (codes never change)
    source_detail    string   what the source tells of the row: the font family, or the id in the original set
    sampler          string   sampler name
    steps            int64    sampler steps (network calls per image, x2 with guidance)
    guidance         float32  classifier-free guidance scale w
    seed             int64    the seed of the generator that drew the image's batch
    model_sha256     string   checksum of the diffusion weights that drew it
    run_id           string   the generation run (a hash of its params and model)
    created_at       timestamp[ms, UTC]  the run's logical date
    clip_score       float32  100 x cosine(image, intended prompt)
    clip_margin      float32  clip_score minus the best other digit's clip_score
    classifier_prob  float32  the filtering classifier's probability of the intended label
    classifier_pred  int64    the filtering classifier's predicted label
    accepted         bool     passed the generation filter (published rows always do)

Every field is nullable on the Arrow level because `datasets` only honours its metadata for
fields equal to its own (always nullable) ones; `digits_table` and the data checks enforce that
id, image, label and source are present. The schema metadata carries the `huggingface` key so
`datasets.load_dataset("parquet", ...)` decodes `image` as a PIL image and `label` as a ClassLabel.
This module imports nothing of ours but `diffusion.styles`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from diffusion.styles import STYLES

CLASS_NAMES = [str(i) for i in range(10)]
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

# name -> (Arrow type, Hugging Face feature); the one place a column is declared.
_COLUMNS: dict[str, tuple[pa.DataType, dict]] = {
    "id": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "image": (IMAGE_TYPE, {"_type": "Image"}),
    "label": (pa.int64(), {"names": CLASS_NAMES, "_type": "ClassLabel"}),
    "source": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "style": (pa.int64(), {"names": list(STYLES), "_type": "ClassLabel"}),
    "source_detail": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "sampler": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "steps": (pa.int64(), {"dtype": "int64", "_type": "Value"}),
    "guidance": (pa.float32(), {"dtype": "float32", "_type": "Value"}),
    "seed": (pa.int64(), {"dtype": "int64", "_type": "Value"}),
    "model_sha256": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "run_id": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "created_at": (pa.timestamp("ms", tz="UTC"), {"dtype": "timestamp[ms, tz=UTC]", "_type": "Value"}),
    "clip_score": (pa.float32(), {"dtype": "float32", "_type": "Value"}),
    "clip_margin": (pa.float32(), {"dtype": "float32", "_type": "Value"}),
    "classifier_prob": (pa.float32(), {"dtype": "float32", "_type": "Value"}),
    "classifier_pred": (pa.int64(), {"dtype": "int64", "_type": "Value"}),
    "accepted": (pa.bool_(), {"dtype": "bool", "_type": "Value"}),
}
HF_FEATURES = {name: feature for name, (_, feature) in _COLUMNS.items()}

DIGITS_SCHEMA = pa.schema(
    [pa.field(name, dtype) for name, (dtype, _) in _COLUMNS.items()],
    metadata={"huggingface": json.dumps({"info": {"features": HF_FEATURES}})},
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
    ids: Sequence[str],
    images: np.ndarray,
    labels: np.ndarray,
    source: str | Sequence[str],
    **columns: Sequence | np.ndarray,
) -> pa.Table:
    """Build a table in DIGITS_SCHEMA, every column by name.

    Args:
        ids: one unique string id per image.
        images: uint8 array of shape (N, H, W), stored as PNG.
        labels: int array of shape (N,) with values 0-9.
        source: the source of every row, or one per row.
        columns: further schema columns by name (N values each, or one scalar for every row);
            the columns not given stay null, but for `style`, which defaults to handwritten-mnist (code 0).
    """
    n = len(ids)
    if images.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"ids ({n}), images ({images.shape[0]}) and labels ({labels.shape[0]}) differ")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise ValueError("labels must lie in 0-9")
    unknown = set(columns) - set(DIGITS_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}; the schema has {DIGITS_SCHEMA.names}")
    given = {
        "id": list(ids),
        "image": [{"bytes": encode_png(img), "path": None} for img in images],
        "label": np.asarray(labels, dtype=np.int64),
        "source": [source] * n if isinstance(source, str) else list(source),
        "style": [0] * n,
    }
    for name, values in columns.items():
        scalar = isinstance(values, (str, int, float, bool)) or values is None or np.ndim(values) == 0
        given[name] = [values] * n if scalar else values
    styles = np.asarray(given["style"], dtype=np.int64)
    if n and (styles.min() < 0 or styles.max() >= len(STYLES)):
        raise ValueError(f"style codes must lie in 0-{len(STYLES) - 1} ({', '.join(STYLES)})")
    arrays = [
        pa.array(given[name], type=field.type) if name in given else pa.nulls(n, field.type)
        for name, field in zip(DIGITS_SCHEMA.names, DIGITS_SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=DIGITS_SCHEMA)


def table_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Decode a DIGITS_SCHEMA table into (images uint8 (N, H, W), labels int64 (N,))."""
    blobs = table.column("image").combine_chunks().field("bytes").to_pylist()
    images = np.stack([decode_png(b) for b in blobs]) if blobs else np.zeros((0, 28, 28), np.uint8)
    labels = table.column("label").to_numpy().astype(np.int64)
    return images, labels
