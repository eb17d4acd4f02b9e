"""The publish gate: a Great Expectations suite every synthetic version passes before it is published.

`validate_rows` turns the rows to publish (a DIGITS_SCHEMA table) into one pandas frame: the
schema's columns with their Arrow types kept (`image` flattened into `image.bytes` and
`image.path`) plus derived columns computed once in Python:

    png_ok            bool     the bytes are a PNG that decodes
    image_mode        str      "L" for 8-bit grayscale ("RGB", "LA", ... otherwise; "" if not a PNG)
    image_height      int64    pixels (0 if not a PNG)
    image_width       int64
    pixel_sha256      str      hash of the decoded grayscale pixels (null if they do not decode)
    nearest_train_rms float64  RMS pixel distance (pixels in [0, 1]) to the nearest training digit
    is_copy           int64    1 where nearest_train_rms < copy_distance
    label_count       float64  rows with this row's label (NaN where the label is null)
    label_requested   number   rows requested for this row's label (0 for a class not requested)

The suite runs through a fresh in-memory (ephemeral) Data Context per call: a pandas datasource,
a whole-frame batch definition, the suite, a validation definition and a checkpoint whose
`UpdateDataDocsAction` writes Data Docs into `docs_dir`. Nothing is shared between calls and
nothing is written outside `docs_dir`, which holds the latest validation only (GX removes the pages
of results its fresh store does not hold). Each expectation carries a readable name such as
"expect_column_values_to_be_unique(id)", reported in `GateResult.failed` and shown in Data Docs.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from diffusion.config import FilterConfig, QualityConfig
from diffusion.data.schema import DIGITS_SCHEMA, decode_png
from diffusion.errors import DigitsError

if TYPE_CHECKING:
    from great_expectations.data_context import EphemeralDataContext

IMAGE_SIZE = 28
NAME = "publish_gate"
FLAT_SCHEMA = pa.Table.from_batches([], DIGITS_SCHEMA).flatten().schema  # image -> image.bytes, image.path
NULLABLE = ("image.path",)  # the only column a synthetic row may leave null
DERIVED = (
    "png_ok",
    "image_mode",
    "image_height",
    "image_width",
    "pixel_sha256",
    "nearest_train_rms",
    "is_copy",
    "label_count",
    "label_requested",
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLORS = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}  # PNG color type -> PIL-style mode


class GateError(DigitsError):
    """A version failed the publish gate; the message is `GateResult.summary()` (one line)."""


@dataclass(frozen=True)
class GateSpec:
    """What the published rows must satisfy: the request, the filter thresholds, the copy limits."""

    counts: dict[int, int]  # accepted images per class; a class left out must have no rows
    filter: FilterConfig  # the thresholds every row was generated under
    quality: QualityConfig  # copy_distance and max_memorization

    def __post_init__(self) -> None:
        bad = {c: n for c, n in self.counts.items() if not 0 <= c <= 9 or n < 0}
        if bad:
            raise DigitsError(f"gate counts must map classes 0-9 to counts >= 0, got {bad}")

    @classmethod
    def from_config(cls, counts: Mapping[int, int], filter: FilterConfig, quality: QualityConfig) -> GateSpec:
        """The gate for a run that requested `counts` images per class under these params sections."""
        return cls({int(c): int(n) for c, n in counts.items()}, filter, quality)


@dataclass(frozen=True)
class GateResult:
    """The outcome of one validation; `failed` keeps the suite's order."""

    success: bool
    failed: list[str]  # one readable name per failed expectation
    statistics: dict  # evaluated/successful/unsuccessful_expectations, success_percent, rows
    memorization_rate: float  # share of rows that are near-copies of a training image
    duplicate_rate: float  # share of rows whose decoded pixels repeat an earlier row's
    docs_index: Path | None  # the Data Docs index.html written for this validation, if any

    def summary(self) -> str:
        """One line: what failed, or that everything passed, with the copy and duplicate rates."""
        total = self.statistics.get("evaluated_expectations", 0)
        rates = f"memorization {self.memorization_rate:.2%}, duplicates {self.duplicate_rate:.2%}"
        if self.success:
            return f"gate passed: {total} expectations on {self.statistics.get('rows', 0)} rows ({rates})"
        return f"gate failed: {len(self.failed)} of {total} expectations: {', '.join(self.failed)} ({rates})"


# --------------------------------------------------------------------------- derived columns
def png_header(data: bytes | None) -> tuple[str, int, int]:
    """(mode, height, width) from a PNG's IHDR chunk, or ("", 0, 0) if `data` is not a PNG."""
    if not data or len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return "", 0, 0
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    mode = _PNG_COLORS.get(color, f"color{color}") + ("" if depth == 8 else f";{depth}")
    return mode, height, width


def nearest_rms_distance(
    images: np.ndarray, train_images: np.ndarray, chunk: int = 1024, train_chunk: int = 8192
) -> np.ndarray:
    """RMS pixel distance (pixels scaled to [0, 1]) from each image to its nearest training image.

    Args:
        images: uint8 (N, H, W); train_images: uint8 (M, H, W).
        chunk, train_chunk: block sizes of the (chunk, train_chunk) distance matrices.
    Returns:
        float64 (N,); inf where there are no training images.
    """
    n, m = len(images), len(train_images)
    if n == 0 or m == 0:
        return np.full(n, np.inf)
    dims = math.prod(images.shape[1:])
    train = torch.from_numpy(np.ascontiguousarray(train_images).reshape(m, dims)).float().div_(255.0)
    best = []
    for start in range(0, n, chunk):
        query = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk]).reshape(-1, dims))
        query = query.float().div_(255.0)
        nearest = torch.full((len(query),), math.inf)
        for t0 in range(0, m, train_chunk):
            dist = torch.cdist(query, train[t0 : t0 + train_chunk], compute_mode="use_mm_for_euclid_dist")
            nearest = torch.minimum(nearest, dist.min(dim=1).values)
        best.append(nearest)
    return (torch.cat(best).double() / math.sqrt(dims)).numpy()


def _numeric(frame: pd.DataFrame, name: str) -> np.ndarray:
    """float64 (N,) of a column, NaN where it is null, not a number, or missing altogether."""
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name].astype(object), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def gate_frame(table: pa.Table, spec: GateSpec, train_images: np.ndarray) -> pd.DataFrame:
    """The frame the suite validates: the flattened table (Arrow dtypes) plus the DERIVED columns."""
    flat = table.flatten()
    frame = flat.to_pandas(types_mapper=pd.ArrowDtype)
    n = len(frame)
    blobs = (
        flat.column("image.bytes").to_pylist()
        if "image.bytes" in flat.column_names and pa.types.is_binary(flat.schema.field("image.bytes").type)
        else [None] * n
    )
    headers = [png_header(b) for b in blobs]
    png_ok, hashes, pixels, pixel_rows = np.zeros(n, bool), [None] * n, [], []
    for i, blob in enumerate(blobs):
        if not headers[i][0]:
            continue
        try:
            image = decode_png(blob)  # a full decode, converted to 8-bit grayscale
        except Exception:  # any decoder failure means the bytes do not decode
            continue
        png_ok[i] = True
        hashes[i] = hashlib.sha256(f"{image.shape}".encode() + image.tobytes()).hexdigest()
        if image.shape == (IMAGE_SIZE, IMAGE_SIZE):
            pixels.append(image)
            pixel_rows.append(i)
    nearest = np.full(n, np.nan)
    if pixels:
        nearest[pixel_rows] = nearest_rms_distance(np.stack(pixels), train_images)
    labels = _numeric(frame, "label")
    label_series = pd.Series(labels)
    frame["png_ok"] = png_ok
    frame["image_mode"] = [h[0] for h in headers]
    frame["image_height"] = np.array([h[1] for h in headers], dtype=np.int64)
    frame["image_width"] = np.array([h[2] for h in headers], dtype=np.int64)
    frame["pixel_sha256"] = pd.Series(hashes, dtype=object)
    frame["nearest_train_rms"] = nearest
    frame["is_copy"] = (nearest < spec.quality.copy_distance).astype(np.int64)  # NaN compares False
    frame["label_count"] = label_series.map(label_series.value_counts()).to_numpy(dtype=float)
    frame["label_requested"] = [np.nan if math.isnan(x) else spec.counts.get(int(x), 0) for x in labels]
    return frame


# --------------------------------------------------------------------------- the suite
def _dtype(dtype: pa.DataType) -> str:
    """The pandas name of ArrowDtype(dtype) ("utf8" for strings: "string[pyarrow]" is StringDtype)."""
    return f"{'utf8' if dtype == pa.string() else dtype}[pyarrow]"


def build_expectations(spec: GateSpec) -> list[tuple[str, gxe.Expectation]]:
    """(readable name, expectation) pairs of the gate, in the order they are reported.

    Each expectation's description (what Data Docs show) is a plain sentence and then its name.
    """
    cols, digits, size = FLAT_SCHEMA.names, list(range(10)), [IMAGE_SIZE]
    in_set, between = gxe.ExpectColumnValuesToBeInSet, gxe.ExpectColumnValuesToBeBetween
    gate: list[tuple[gxe.Expectation, str]] = [
        (gxe.ExpectTableColumnsToMatchOrderedList(column_list=[*cols, *DERIVED]), "the columns, in order"),
        *(
            (gxe.ExpectColumnTypeToBe(column=f.name, type_=_dtype(f.type)), f"{f.name} is {f.type}")
            for f in FLAT_SCHEMA
        ),
        *(
            (gxe.ExpectColumnValuesToNotBeNull(column=c), f"{c} is never null")
            for c in cols
            if c not in NULLABLE
        ),
        (in_set(column="label", value_set=digits), "label is a digit 0-9"),
        (in_set(column="png_ok", value_set=[True]), "every image is a PNG that decodes"),
        (in_set(column="image_mode", value_set=["L"]), "every image is 8-bit grayscale (L)"),
        (in_set(column="image_height", value_set=size), f"every image is {IMAGE_SIZE} pixels high"),
        (in_set(column="image_width", value_set=size), f"every image is {IMAGE_SIZE} pixels wide"),
        (gxe.ExpectColumnValuesToBeUnique(column="id"), "ids are unique"),
        (between(column="clip_score", min_value=-100, max_value=100), "clip_score lies in [-100, 100]"),
        (between(column="clip_margin", min_value=-200, max_value=200), "clip_margin lies in [-200, 200]"),
        (between(column="classifier_prob", min_value=0, max_value=1), "classifier_prob lies in [0, 1]"),
        (in_set(column="classifier_pred", value_set=digits), "classifier_pred is a digit 0-9"),
    ]
    names = [_default_name(exp) for exp, _ in gate]
    for key in ("min_clip_score", "min_clip_margin", "min_classifier_prob"):
        if (bound := getattr(spec.filter, key)) is not None:
            column = key.removeprefix("min_")
            gate.append((between(column=column, min_value=bound), f"{column} >= {bound:g}"))
            names.append(f"expect_column_values_to_be_between({column}, {key}={bound:g})")
    pairs = {"ignore_row_if": "either_value_is_missing"}  # nulls fail their own expectations
    if spec.filter.require_pred_match:
        match = gxe.ExpectColumnPairValuesToBeEqual(column_A="classifier_pred", column_B="label", **pairs)
        gate.append((match, "the classifier predicts the intended label"))
        names.append(_default_name(match))
    requested, total = sorted(c for c, k in spec.counts.items() if k > 0), sum(spec.counts.values())
    copies = f"at most {spec.quality.max_memorization:.1%} of rows within RMS {spec.quality.copy_distance:g} of a training digit"
    classes = gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=requested)
    per_class = gxe.ExpectColumnPairValuesToBeEqual(
        column_A="label_count", column_B="label_requested", **pairs
    )
    tail: list[tuple[gxe.Expectation, str]] = [
        (in_set(column="accepted", value_set=[True]), "every row passed the generation filter"),
        (gxe.ExpectTableRowCountToEqual(value=total), f"{total} rows, as requested"),
        (classes, f"rows of exactly the classes {requested}"),
        (per_class, "every class has the requested number of rows"),
        (gxe.ExpectColumnValuesToBeUnique(column="pixel_sha256"), "no two images have the same pixels"),
        (gxe.ExpectColumnMeanToBeBetween(column="is_copy", max_value=spec.quality.max_memorization), copies),
    ]
    gate += tail
    names += [_default_name(exp) for exp, _ in tail]
    assert len(set(names)) == len(names), "gate expectation names must be unique"
    for name, (exp, what) in zip(names, gate, strict=True):
        exp.meta, exp.description = {"gate_name": name}, f"{what} [{name}]"
    return [(name, exp) for name, (exp, _) in zip(names, gate, strict=True)]


def _default_name(exp: gxe.Expectation) -> str:
    """ "expect_...(column)", "expect_...(column_A, column_B)", or the bare type of a table expectation."""
    kwargs = exp.configuration.kwargs
    columns = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    return f"{exp.expectation_type}({', '.join(columns)})" if columns else exp.expectation_type


def _context(docs_dir: Path | None) -> EphemeralDataContext:
    """A fresh in-memory Data Context whose one Data Docs site (if any) is `docs_dir`."""
    sites = {}
    if docs_dir is not None:
        sites[NAME] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(Path(docs_dir).resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def validate_rows(
    table: pa.Table, spec: GateSpec, train_images: np.ndarray, docs_dir: Path | None
) -> GateResult:
    """Run the publish gate on `table` (DIGITS_SCHEMA rows) and write Data Docs into `docs_dir`.

    Args:
        table: the rows to publish; every column but image.path filled.
        spec: the request and limits the rows must meet.
        train_images: uint8 (M, 28, 28), the real training digits for the memorisation check.
        docs_dir: the folder for the Data Docs site (index.html); None writes nothing.
    Returns:
        the GateResult; the caller raises GateError(result.summary()) when it did not pass.
    """
    if train_images.ndim != 3 or train_images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DigitsError(f"train_images must be (M, {IMAGE_SIZE}, {IMAGE_SIZE}), got {train_images.shape}")
    frame = gate_frame(table, spec, train_images)
    context = _context(docs_dir)
    batch = context.data_sources.add_pandas(NAME).add_dataframe_asset("rows")
    batch_definition = batch.add_batch_definition_whole_dataframe("all_rows")
    named = build_expectations(spec)
    # Built whole, then added: `add_expectation` on a suite no context owns yet would write through
    # GX's process-wide current context, which another thread's call may have just replaced.
    suite = context.suites.add(gx.ExpectationSuite(name=NAME, expectations=[exp for _, exp in named]))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=NAME, data=batch_definition, suite=suite)
    )
    actions = [] if docs_dir is None else [gx.checkpoint.UpdateDataDocsAction(name="data_docs")]
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=NAME,
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "SUMMARY"},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = outcome.run_results.values()
    if docs_dir is not None:  # GX deletes the pages of earlier runs but leaves their folders
        for folder in sorted((docs_dir / "validations").rglob("*"), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    failed_set = {r.expectation_config.meta["gate_name"] for r in validation.results if not r.success}
    n = len(frame)
    duplicates = frame["pixel_sha256"].dropna().duplicated().sum()
    index = docs_dir / "index.html" if docs_dir is not None else None
    return GateResult(
        success=bool(validation.success),
        failed=[name for name, _ in named if name in failed_set],
        statistics={**dict(validation.statistics), "rows": n},
        memorization_rate=float(frame["is_copy"].mean()) if n else 0.0,
        duplicate_rate=float(duplicates / n) if n else 0.0,
        docs_index=index if index is not None and index.is_file() else None,
    )
