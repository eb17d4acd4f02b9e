"""The publish gate: Great Expectations suites that every split of a synthetic version passes before it is
published.

`validate_rows` validates the accepted rows (the `train` split, the product) and, when given, every row the
run sampled (the `unfiltered` split). Each split is validated in chunks of `chunk_rows` rows, so memory
follows the chunk and not the version: a chunk becomes one pandas frame, the schema's columns with their
Arrow types kept (`image` flattened into `image.bytes` and `image.path`) plus columns derived from the bytes
(`diffusion.quality.gate_columns`: PNG header and decode, pixel hashes, nearest training digit, the filter's
verdict re-applied to the scores), each image decoded once. What only the whole split can tell (unique ids
and pixels, row and class counts, the share of copies) is checked once on a narrow frame of those columns.

    train       rows: schema, types, nulls, labels 0-9, 28x28 grayscale PNGs, score ranges, the filter's
                thresholds, every row accepted, exact counts per class; whole split: unique ids and
                pixels, the row count, exactly the requested classes, near-copies of training digits at
                most `max_memorization`
    unfiltered  rows: schema, types, nulls, labels 0-9, 28x28 grayscale PNGs, score ranges, and `accepted`
                equal to what the thresholds say of the row's scores; whole split: unique ids

The suites run through a fresh in-memory (ephemeral) Data Context per call: a pandas datasource with one
asset per split, a whole-frame batch definition, a suite and a validation definition per split and scope
(rows, whole split), each chunk one validation run; the Data Docs site in `docs_dir` is built once from
all of them at the end. Nothing is shared between calls and nothing is written outside `docs_dir`, which
holds the latest validation only. Each expectation carries
a readable name such as "train: expect_column_values_to_be_unique(id)", reported in `GateResult.failed`
and shown in Data Docs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from diffusion.config import FilterConfig, QualityConfig
from diffusion.data.schema import DIGITS_SCHEMA
from diffusion.errors import DataError, DigitsError, one_line
from diffusion.quality.gate_columns import (
    IMAGE_SIZE,
    TRAIN_COLUMNS,
    UNFILTERED_COLUMNS,
    ImageMemo,
    image_blobs,
    image_facts,
    label_counts,
    numeric,
    rates_per_style,
    split_frame,
    split_part,
    train_frame,
    unfiltered_frame,
    unit_pixels,
)
from diffusion.styles import STYLES, cell_digit

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.data_context import EphemeralDataContext

NAME = "publish_gate"
FLAT_SCHEMA = pa.Table.from_batches([], DIGITS_SCHEMA).flatten().schema  # image -> image.bytes, image.path
NULLABLE = ("image.path", "source_detail")  # the only columns a synthetic row may leave null
CHUNK_ROWS = 5000  # rows validated at once: bounds the gate's memory (GX's metrics of one chunk)


class GateError(DigitsError):
    """A version failed the publish gate; the message is `GateResult.summary()` (one line)."""


@dataclass(frozen=True)
class GateSpec:
    """What the published rows must satisfy: the request, the filter thresholds, the copy limits."""

    counts: dict[int, int]  # accepted images per class (a cell: 10 x style + digit); one left out has no rows
    filter: FilterConfig  # the thresholds every row was generated under
    quality: QualityConfig  # copy_distance and max_memorization

    def __post_init__(self) -> None:
        bad = {c: n for c, n in self.counts.items() if not 0 <= c < 10 * len(STYLES) or n < 0}
        if bad:
            raise DigitsError(f"gate counts must map classes (10 x style + digit) to counts >= 0, got {bad}")

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
    # style name -> the two rates among that style's rows; empty when the rows are of one style
    per_style: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: what failed, or that everything passed, with the copy and duplicate rates."""
        total = self.statistics.get("evaluated_expectations", 0)
        rates = f"memorization {self.memorization_rate:.2%}, duplicates {self.duplicate_rate:.2%}"
        if self.success:
            return f"gate passed: {total} expectations on {self.statistics.get('rows', 0)} rows ({rates})"
        return f"gate failed: {len(self.failed)} of {total} expectations: {', '.join(self.failed)} ({rates})"


# --------------------------------------------------------------------------- the suite
def _dtype(dtype: pa.DataType) -> str:
    """The pandas name of ArrowDtype(dtype) ("utf8" for strings: "string[pyarrow]" is StringDtype)."""
    return f"{'utf8' if dtype == pa.string() else dtype}[pyarrow]"


def _common(derived: tuple[str, ...]) -> list[tuple[gxe.Expectation, str]]:
    """What every chunk of every split must be: the schema's columns (then `derived`), types, nulls,
    labels 0-9, known styles, 28x28 grayscale PNGs that decode, scores in their ranges."""
    cols, digits, size = FLAT_SCHEMA.names, list(range(10)), [IMAGE_SIZE]
    in_set, between = gxe.ExpectColumnValuesToBeInSet, gxe.ExpectColumnValuesToBeBetween
    return [
        (gxe.ExpectTableColumnsToMatchOrderedList(column_list=[*cols, *derived]), "the columns, in order"),
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
        (in_set(column="style", value_set=list(range(len(STYLES)))), "style is a known style's code"),
        (in_set(column="png_ok", value_set=[True]), "every image is a PNG that decodes"),
        (in_set(column="image_mode", value_set=["L"]), "every image is 8-bit grayscale (L)"),
        (in_set(column="image_height", value_set=size), f"every image is {IMAGE_SIZE} pixels high"),
        (in_set(column="image_width", value_set=size), f"every image is {IMAGE_SIZE} pixels wide"),
        (between(column="clip_score", min_value=-100, max_value=100), "clip_score lies in [-100, 100]"),
        (between(column="clip_margin", min_value=-200, max_value=200), "clip_margin lies in [-200, 200]"),
        (between(column="classifier_prob", min_value=0, max_value=1), "classifier_prob lies in [0, 1]"),
        (in_set(column="classifier_pred", value_set=digits), "classifier_pred is a digit 0-9"),
    ]


PAIRS = {"ignore_row_if": "either_value_is_missing"}  # nulls fail their own expectations
ROWS, SPLIT = "rows", "split"  # checked on every chunk of rows / once on the whole split


def _train_suite(spec: GateSpec) -> list[tuple[gxe.Expectation, str, str, str]]:
    """(expectation, what it checks, name, scope) of the accepted rows: the common checks, the filter's
    thresholds, every row accepted, exact counts per class, unique pixels, few near-copies."""
    between = gxe.ExpectColumnValuesToBeBetween
    gate = [(exp, what, _default_name(exp)) for exp, what in _common(TRAIN_COLUMNS)]
    for key in ("min_clip_score", "min_clip_margin", "min_classifier_prob"):
        if (bound := getattr(spec.filter, key)) is not None:
            column = key.removeprefix("min_")
            name = f"expect_column_values_to_be_between({column}, {key}={bound:g})"
            # in float32, as the filter compared the float32 scores (`diffusion.judges.scoring.keep_mask`)
            low = float(np.float32(bound))
            gate.append((between(column=column, min_value=low), f"{column} >= {bound:g}", name))
    tail: list[tuple[gxe.Expectation, str]] = []
    if spec.filter.require_pred_match:
        match = gxe.ExpectColumnPairValuesToBeEqual(column_A="classifier_pred", column_B="label", **PAIRS)
        tail.append((match, "the classifier predicts the intended label"))
    requested = sorted({cell_digit(c) for c, k in spec.counts.items() if k > 0})
    total = sum(spec.counts.values())
    copies = f"at most {spec.quality.max_memorization:.1%} of rows within RMS {spec.quality.copy_distance:g} of a training digit"
    classes = gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=requested)
    per_class = gxe.ExpectColumnPairValuesToBeEqual(
        column_A="label_count", column_B="label_requested", **PAIRS
    )
    tail += [
        (gxe.ExpectColumnValuesToBeInSet(column="accepted", value_set=[True]), "every row passed the filter"),
        (per_class, "every class has the requested number of rows"),
    ]
    whole = [
        (gxe.ExpectTableRowCountToEqual(value=total), f"{total} rows, as requested"),
        (classes, f"rows of exactly the classes {requested}"),
        (gxe.ExpectColumnValuesToBeUnique(column="id"), "ids are unique"),
        (gxe.ExpectColumnValuesToBeUnique(column="pixel_sha256"), "no two images have the same pixels"),
        (gxe.ExpectColumnMeanToBeBetween(column="is_copy", max_value=spec.quality.max_memorization), copies),
    ]
    rows = gate + [(exp, what, _default_name(exp)) for exp, what in tail]
    return [(*item, ROWS) for item in rows] + [(exp, what, _default_name(exp), SPLIT) for exp, what in whole]


def _unfiltered_suite(spec: GateSpec) -> list[tuple[gxe.Expectation, str, str, str]]:
    """(expectation, what it checks, name, scope) of every sampled row: the common checks, unique ids, and
    `accepted` exactly where the filter's thresholds pass the row's scores."""
    verdict = gxe.ExpectColumnPairValuesToBeEqual(column_A="accepted", column_B="filter_verdict", **PAIRS)
    gate = [*_common(UNFILTERED_COLUMNS), (verdict, "accepted exactly where the filter passes the scores")]
    unique = gxe.ExpectColumnValuesToBeUnique(column="id")
    return [(exp, what, _default_name(exp), ROWS) for exp, what in gate] + [
        (unique, "ids are unique", _default_name(unique), SPLIT)
    ]


def build_expectations(spec: GateSpec, split: str = "train") -> list[tuple[str, gxe.Expectation, str]]:
    """(readable name, expectation, scope) of one split's suite ("train" or "unfiltered"), in report order.

    Names are "<split>: <expectation>(<columns>)"; each expectation's description (what Data Docs show) is
    a plain sentence and then its name. Scope ROWS: checked chunk by chunk on the rows with their derived
    columns; SPLIT: checked once on the whole split's `gate_columns.SPLIT_COLUMNS`.
    """
    suite = _train_suite(spec) if split == "train" else _unfiltered_suite(spec)
    names = [f"{split}: {name}" for _, _, name, _ in suite]
    assert len(set(names)) == len(names), "gate expectation names must be unique"
    for name, (exp, what, _, _) in zip(names, suite, strict=True):
        exp.meta, exp.description = {"gate_name": name}, f"{what} [{name}]"
    return [(name, exp, scope) for name, (exp, _, _, scope) in zip(names, suite, strict=True)]


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


def _clear_docs(docs_dir: Path) -> None:
    """Remove the pages of an earlier validation, so the site holds the latest one only."""
    for name in ("validations", "expectations", "index.html"):
        path = docs_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _chunk_frames(
    split: str,
    table: pa.Table,
    spec: GateSpec,
    memo: ImageMemo,
    train_pixels: torch.Tensor,
    chunk_rows: int,
) -> Iterator[tuple[int, pd.DataFrame]]:
    """(first row, frame) of each chunk of one split's rows, derived columns added, built one at a time."""
    counts = label_counts(table) if split == "train" else {}
    for start in range(0, table.num_rows, chunk_rows):
        chunk = table.slice(start, chunk_rows)
        if split == "train":
            facts = image_facts(image_blobs(chunk), memo, train_pixels)
            frame = train_frame(chunk, facts, spec.counts, counts, spec.quality.copy_distance)
        else:
            frame = unfiltered_frame(chunk, image_facts(image_blobs(chunk), memo), spec.filter)
        yield start, frame


def _definitions(
    context: EphemeralDataContext, source: Any, split: str, suite: list[tuple[str, gxe.Expectation, str]]
) -> dict[str, gx.ValidationDefinition]:
    """One split's validation definitions, by scope: its rows chunk by chunk (ROWS), its whole (SPLIT)."""
    batch = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe(f"{split}_rows")
    definitions = {}
    for scope in (ROWS, SPLIT):
        # Built whole, then added: `add_expectation` on a suite no context owns yet would write through
        # GX's process-wide current context, which another thread's call may have just replaced.
        expectations = [exp for _, exp, s in suite if s == scope]
        name = f"{NAME}_{split}_{scope}"
        added = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definitions[scope] = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=added)
        )
    return definitions


def _run(
    definition: gx.ValidationDefinition, frame: pd.DataFrame, what: str, run_time: datetime
) -> ExpectationSuiteValidationResult:
    """Validate one frame; `what` names the run in Data Docs ("train-rows-0-4999")."""
    run_id = RunIdentifier(run_name=what, run_time=run_time)
    return definition.run(batch_parameters={"dataframe": frame}, result_format="BASIC", run_id=run_id)


def validate_rows(
    table: pa.Table,
    spec: GateSpec,
    train_images: np.ndarray | torch.Tensor,
    docs_dir: Path | None,
    unfiltered: pa.Table | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> GateResult:
    """Run the publish gate on the rows to publish (and every sampled row) and write Data Docs.

    Args:
        table: the accepted rows to publish (the `train` split); every column but image.path filled.
        spec: the request and limits the rows must meet.
        train_images: the real training digits for the memorisation check: uint8 (M, 28, 28), or float
            (M, 784) in [0, 1] on the device to search on.
        docs_dir: the folder for the Data Docs site (index.html); None writes nothing.
        unfiltered: every row the run sampled (the `unfiltered` split), validated by its own suite; None
            validates `table` alone.
        chunk_rows: rows per validated chunk: memory follows it, the outcome does not.
    Returns:
        the GateResult; the caller raises GateError(result.summary()) when it did not pass.
    """
    if isinstance(train_images, np.ndarray):
        if train_images.ndim != 3 or train_images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DigitsError(
                f"train_images must be (M, {IMAGE_SIZE}, {IMAGE_SIZE}), got {train_images.shape}"
            )
        train_images = unit_pixels(train_images)
    if chunk_rows < 1:
        raise DigitsError(f"chunk_rows must be >= 1, got {chunk_rows}")
    splits = {"train": table} if unfiltered is None else {"train": table, "unfiltered": unfiltered}
    memo = ImageMemo()  # every image decoded once, whichever splits hold it (train first: it searches)
    context = _context(docs_dir)
    source = context.data_sources.add_pandas(NAME)
    run_time = datetime.now(UTC)
    named: list[str] = []
    results: list[ExpectationSuiteValidationResult] = []
    wholes: dict[str, pd.DataFrame] = {}
    for split, rows in splits.items():
        suite = build_expectations(spec, split)
        named += [name for name, _, _ in suite]
        definitions = _definitions(context, source, split, suite)
        parts = []
        for start, frame in _chunk_frames(split, rows, spec, memo, train_images, chunk_rows):
            what = f"{split}-rows-{start}-{start + len(frame) - 1}"
            results.append(_run(definitions[ROWS], frame, what, run_time))
            parts.append(split_part(split, frame))
        wholes[split] = split_frame(split, parts)
        results.append(_run(definitions[SPLIT], wholes[split], f"{split}-whole-split", run_time))
    accepted = wholes["train"]
    if docs_dir is not None:
        try:
            _clear_docs(docs_dir)
            context.build_data_docs(site_names=[NAME])
        except OSError as err:  # a full or failing disk: one line, the cause kept (worth a retry)
            raise DataError(f"{docs_dir}: the Data Docs cannot be written ({one_line(err)})") from err
    failed_set = {r.expectation_config.meta["gate_name"] for v in results for r in v.results if not r.success}
    n = len(accepted)
    # a row repeats an earlier row's pixels (rows whose pixels do not decode repeat nothing)
    repeats = (
        accepted["pixel_sha256"].duplicated().to_numpy(dtype=bool)
        & accepted["pixel_sha256"].notna().to_numpy()
    )
    copies = np.nan_to_num(numeric(accepted, "is_copy"))
    index = docs_dir / "index.html" if docs_dir is not None else None
    # an expectation counts once however many chunks checked it; it fails if it failed in any
    statistics = {"evaluated_expectations": len(named), "unsuccessful_expectations": len(failed_set)}
    statistics["successful_expectations"] = len(named) - len(failed_set)
    statistics["success_percent"] = 100.0 * statistics["successful_expectations"] / len(named)
    return GateResult(
        success=all(v.success for v in results),
        failed=[name for name in named if name in failed_set],
        statistics={**statistics, "rows": n, "splits": {split: t.num_rows for split, t in splits.items()}},
        memorization_rate=float(copies.mean()) if n else 0.0,
        duplicate_rate=float(repeats.mean()) if n else 0.0,
        docs_index=index if index is not None and index.is_file() else None,
        per_style=rates_per_style(numeric(accepted, "style"), copies, repeats),
    )
