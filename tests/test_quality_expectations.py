"""The publish gate runs a real Great Expectations suite: a good table passes, each planted defect fails."""

from __future__ import annotations

import datetime as dt
import io
import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

from diffusion.config import FilterConfig, QualityConfig
from diffusion.data.schema import DIGITS_SCHEMA, IMAGE_TYPE, digits_table, encode_png
from diffusion.quality.expectations import GateError, GateResult, GateSpec, validate_rows
from diffusion.quality.gate_columns import nearest_rms_distance, png_header

torch.set_num_threads(1)

COUNTS = {0: 3, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 7: 2, 9: 3}  # 20 rows; class 8 not requested
SPEC = GateSpec.from_config(
    COUNTS,
    FilterConfig(min_clip_score=20.0, min_clip_margin=0.5, min_classifier_prob=0.5, require_pred_match=True),
    QualityConfig(copy_distance=0.04, max_memorization=0.05),  # one copy in 20 rows is allowed, two are not
)
RNG_SEED = 0


def noise_digits(rng: np.random.Generator, n: int, size: int = 28) -> np.ndarray:
    """uint8 (n, size, size): a dark background with a random bright blob: far from each other."""
    images = np.zeros((n, size, size), np.uint8)
    for image in images:
        r, c = rng.integers(4, size - 10, 2)
        image[r : r + 8, c : c + 6] = rng.integers(128, 256, (8, 6))
    return images


@pytest.fixture(scope="module")
def train_images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (64, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def good_table() -> pa.Table:
    rng = np.random.default_rng(RNG_SEED)
    labels = np.array([c for c, k in COUNTS.items() for _ in range(k)], dtype=np.int64)
    n = len(labels)
    return digits_table(
        [f"synthetic-{i:04d}" for i in range(n)],
        noise_digits(rng, n),
        labels,
        "synthetic",
        sampler="dpm-solver++",
        steps=20,
        guidance=3.0,
        seed=1234,
        model_sha256="0" * 64,
        run_id="run-abc",
        created_at=dt.datetime(2025, 1, 2, tzinfo=dt.UTC),
        clip_score=rng.uniform(25.0, 35.0, n).astype(np.float32),
        clip_margin=rng.uniform(1.0, 8.0, n).astype(np.float32),
        classifier_prob=rng.uniform(0.7, 1.0, n).astype(np.float32),
        classifier_pred=labels,
        accepted=True,
    )


# --------------------------------------------------------------------------- defect planting
def set_values(table: pa.Table, name: str, index: int, value: object) -> pa.Table:
    """The table with row `index` of column `name` replaced (type kept; None makes it null)."""
    i = table.schema.get_field_index(name)
    values = table.column(name).to_pylist()
    values[index] = value
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def set_image(table: pa.Table, index: int, data: bytes) -> pa.Table:
    images = table.column("image").to_pylist()
    images[index] = {"bytes": data, "path": None}
    return table.set_column(1, DIGITS_SCHEMA.field("image"), pa.array(images, IMAGE_TYPE))


def png_of(image: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def copy_train(table: pa.Table, train: np.ndarray, rows: list[int], noise: int = 0) -> pa.Table:
    """Rows `rows` replaced by training digits, each pixel moved by up to +-noise."""
    rng = np.random.default_rng(3)
    for k, row in enumerate(rows):
        image = train[k].astype(np.int16) + rng.integers(-noise, noise + 1, (28, 28))
        table = set_image(table, row, encode_png(image.clip(0, 255).astype(np.uint8)))
    return table


def first_image(table: pa.Table) -> bytes:
    return table.column("image")[0]["bytes"].as_py()


DEFECTS: dict[str, tuple[Callable[[pa.Table, np.ndarray], pa.Table], set[str]]] = {
    "column missing": (
        lambda t, _: t.drop_columns(["seed"]),
        {
            "expect_table_columns_to_match_ordered_list",
            "expect_column_type_to_be(seed)",
            "expect_column_values_to_not_be_null(seed)",
        },
    ),
    "column of wrong type": (
        lambda t, _: t.set_column(
            t.schema.get_field_index("seed"), "seed", pc.cast(t.column("seed"), pa.float64())
        ),
        {"expect_column_type_to_be(seed)"},
    ),
    "image not a PNG": (
        lambda t, _: set_image(t, 4, b"not a png at all, just garbage bytes"),
        {
            "expect_column_values_to_be_in_set(png_ok)",
            "expect_column_values_to_be_in_set(image_mode)",
            "expect_column_values_to_be_in_set(image_height)",
            "expect_column_values_to_be_in_set(image_width)",
        },
    ),
    "PNG truncated": (
        lambda t, _: set_image(t, 4, first_image(t)[:60]),
        {"expect_column_values_to_be_in_set(png_ok)"},
    ),
    "image 32x32": (
        lambda t, _: set_image(t, 4, encode_png(np.zeros((32, 32), np.uint8))),
        {"expect_column_values_to_be_in_set(image_height)", "expect_column_values_to_be_in_set(image_width)"},
    ),
    "image RGB": (
        lambda t, _: set_image(t, 4, png_of(np.full((28, 28, 3), 40, np.uint8), "RGB")),
        {"expect_column_values_to_be_in_set(image_mode)"},
    ),
    "label 11": (
        lambda t, _: set_values(set_values(t, "label", 19, 11), "classifier_pred", 19, 11),
        {
            "expect_column_values_to_be_in_set(label)",
            "expect_column_values_to_be_in_set(classifier_pred)",
            "expect_column_distinct_values_to_equal_set(label)",
            "expect_column_pair_values_to_be_equal(label_count, label_requested)",
        },
    ),
    "label null": (
        lambda t, _: set_values(t, "label", 19, None),  # so class 9 is one row short too
        {
            "expect_column_values_to_not_be_null(label)",
            "expect_column_pair_values_to_be_equal(label_count, label_requested)",
        },
    ),
    "clip_score null": (
        lambda t, _: set_values(t, "clip_score", 0, None),
        {"expect_column_values_to_not_be_null(clip_score)"},
    ),
    "clip_score out of range": (
        lambda t, _: set_values(t, "clip_score", 0, 150.0),
        {"expect_column_values_to_be_between(clip_score)"},
    ),
    "clip_score below threshold": (
        lambda t, _: set_values(t, "clip_score", 0, 12.0),
        {"expect_column_values_to_be_between(clip_score, min_clip_score=20)"},
    ),
    "classifier_prob below threshold": (
        lambda t, _: set_values(t, "classifier_prob", 2, 0.3),
        {"expect_column_values_to_be_between(classifier_prob, min_classifier_prob=0.5)"},
    ),
    "prediction mismatch": (
        lambda t, _: set_values(t, "classifier_pred", 5, 8),
        {"expect_column_pair_values_to_be_equal(classifier_pred, label)"},
    ),
    "not accepted": (
        lambda t, _: set_values(t, "accepted", 3, False),
        {"expect_column_values_to_be_in_set(accepted)"},
    ),
    "id duplicated": (
        lambda t, _: set_values(t, "id", 7, "synthetic-0001"),
        {"expect_column_values_to_be_unique(id)"},
    ),
    "image duplicated": (
        lambda t, _: set_image(t, 9, first_image(t)),
        {"expect_column_values_to_be_unique(pixel_sha256)"},
    ),
    "class count off by one": (
        lambda t, _: t.slice(1),  # one row of class 0 fewer
        {
            "expect_table_row_count_to_equal",
            "expect_column_pair_values_to_be_equal(label_count, label_requested)",
        },
    ),
    "class missing": (
        lambda t, _: pa.concat_tables([t.slice(0, 17), t.slice(20)]),  # no row of class 9
        {"expect_table_row_count_to_equal", "expect_column_distinct_values_to_equal_set(label)"},
    ),
    "training digits copied": (
        lambda t, train: copy_train(t, train, [0, 5]),
        {"expect_column_mean_to_be_between(is_copy)"},
    ),
    "training digits copied with noise": (
        lambda t, train: copy_train(t, train, [0, 5], noise=8),
        {"expect_column_mean_to_be_between(is_copy)"},
    ),
}


# --------------------------------------------------------------------------- tests
def test_good_table_passes(good_table: pa.Table, train_images: np.ndarray) -> None:
    result = validate_rows(good_table, SPEC, train_images, docs_dir=None)
    assert result.success, result.summary()
    assert result.failed == []
    assert result.statistics["unsuccessful_expectations"] == 0
    assert result.statistics["evaluated_expectations"] > 40
    assert result.memorization_rate == 0.0 and result.duplicate_rate == 0.0
    assert result.docs_index is None
    assert result.summary().startswith("gate passed: ")


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_defect_fails_the_gate(defect: str, good_table: pa.Table, train_images: np.ndarray) -> None:
    plant, expected = DEFECTS[defect]
    result = validate_rows(plant(good_table, train_images), SPEC, train_images, docs_dir=None)
    assert not result.success
    assert set(result.failed) == {f"train: {name}" for name in expected}, result.summary()
    summary = result.summary()
    assert "\n" not in summary and summary.startswith(f"gate failed: {len(expected)} of ")


def test_one_copy_is_within_the_limit_and_rates_are_reported(
    good_table: pa.Table, train_images: np.ndarray
) -> None:
    table = copy_train(good_table, train_images, [0])
    table = set_image(table, 9, table.column("image")[3]["bytes"].as_py())
    result = validate_rows(table, SPEC, train_images, docs_dir=None)
    assert result.failed == ["train: expect_column_values_to_be_unique(pixel_sha256)"]
    assert result.memorization_rate == pytest.approx(1 / 20)
    assert result.duplicate_rate == pytest.approx(1 / 20)


def test_docs_written_only_to_docs_dir_and_rerun_is_idempotent(
    good_table: pa.Table, train_images: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "report" / "docs"
    bad = set_values(good_table, "id", 7, "synthetic-0001")
    first = validate_rows(bad, SPEC, train_images, Path("report/docs"))  # a relative folder works too
    second = validate_rows(bad, SPEC, train_images, docs)
    assert first.failed == second.failed == ["train: expect_column_values_to_be_unique(id)"]
    assert second.docs_index == docs / "index.html" and second.docs_index.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # nothing beside docs_dir
    # the index links the latest validation only (a rerun replaces the pages): one page for the rows (one
    # chunk here), one for the whole split; the whole split's page names the failure
    pages = set(re.findall(r"validations/[^'\"]+\.html", second.docs_index.read_text()))
    assert len(pages) == 2 and len(list((docs / "validations").rglob("*.html"))) == 2
    (whole,) = [page for page in pages if "whole" in page]
    assert "expect_column_values_to_be_unique(id)" in (docs / whole).read_text()
    assert len(list((docs / "validations").rglob("*Z"))) == 2  # a run folder each, named by its time


def test_chunks_change_nothing_but_memory(
    good_table: pa.Table, train_images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validated 7 rows at a time, every defect is found as on the whole table, across chunk borders too
    (an id or image repeated from another chunk, a class short), and no frame holds more than a chunk."""
    import diffusion.quality.expectations as gate

    sizes: list[int] = []
    frame = gate.train_frame
    monkeypatch.setattr(
        gate, "train_frame", lambda chunk, *a: sizes.append(chunk.num_rows) or frame(chunk, *a)
    )
    far_apart = set_values(good_table, "id", 19, "synthetic-0001")  # rows 1 and 19: chunks 0 and 2
    far_apart = set_image(far_apart, 18, far_apart.column("image")[2]["bytes"].as_py())
    kinds = ("class missing", "training digits copied", "class count off by one", "column of wrong type")
    tables = [far_apart, *(DEFECTS[kind][0](good_table, train_images) for kind in kinds)]
    for table in tables:
        whole = validate_rows(table, SPEC, train_images, None, table)
        sizes.clear()
        chunked = validate_rows(table, SPEC, train_images, None, table, chunk_rows=7)
        assert chunked.failed == whole.failed and not chunked.success
        assert chunked.statistics == whole.statistics
        assert (chunked.memorization_rate, chunked.duplicate_rate) == (
            whole.memorization_rate,
            whole.duplicate_rate,
        )
        assert max(sizes) == 7 and sum(sizes) == table.num_rows
    far = validate_rows(far_apart, SPEC, train_images, None, chunk_rows=7)
    assert far.failed == [
        "train: expect_column_values_to_be_unique(id)",
        "train: expect_column_values_to_be_unique(pixel_sha256)",
    ]


def test_concurrent_calls_share_nothing(good_table: pa.Table, train_images: np.ndarray) -> None:
    tables = {"good": good_table, "bad": set_values(good_table, "accepted", 3, False)}
    results: dict[str, GateResult] = {}

    def run(key: str) -> None:
        results[key] = validate_rows(tables[key], SPEC, train_images, docs_dir=None)

    threads = [threading.Thread(target=run, args=(key,)) for key in tables]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["good"].success
    assert results["bad"].failed == ["train: expect_column_values_to_be_in_set(accepted)"]


def test_spec_from_config_and_gate_error() -> None:
    spec = GateSpec.from_config({3: 5}, FilterConfig(), QualityConfig())
    assert spec.counts == {3: 5} and spec.filter.min_clip_score is None and spec.filter.require_pred_match
    assert spec.quality.copy_distance == QualityConfig().copy_distance
    assert GateSpec.from_config({17: 1}, FilterConfig(), QualityConfig()).counts == {17: 1}  # printed 7
    with pytest.raises(ValueError, match=r"classes \(10 x style \+ digit\)"):
        GateSpec.from_config({30: 1}, FilterConfig(), QualityConfig())
    assert issubclass(GateError, ValueError)


def test_thresholds_left_out_are_not_checked(good_table: pa.Table, train_images: np.ndarray) -> None:
    loose = GateSpec.from_config(
        COUNTS,
        FilterConfig(min_clip_margin=None, min_classifier_prob=None, require_pred_match=False),
        QualityConfig(),
    )
    table = set_values(set_values(good_table, "clip_score", 0, -50.0), "classifier_pred", 5, 8)
    assert validate_rows(table, loose, train_images, docs_dir=None).success


def test_png_header_and_nearest_distance() -> None:
    assert png_header(encode_png(np.zeros((28, 30), np.uint8))) == ("L", 28, 30)
    assert png_header(png_of(np.zeros((5, 5, 4), np.uint8), "RGBA")) == ("RGBA", 5, 5)
    assert png_header(b"garbage") == ("", 0, 0)
    train = np.zeros((3, 28, 28), np.uint8)
    train[1] = 255
    images = np.stack([np.full((28, 28), 255, np.uint8), np.full((28, 28), 51, np.uint8)])
    np.testing.assert_allclose(
        nearest_rms_distance(images, train, chunk=1, train_chunk=2), [0.0, 0.2], atol=1e-5
    )
    assert np.isinf(nearest_rms_distance(images, train[:0])).all()


def test_each_image_is_decoded_once_for_both_splits(
    good_table: pa.Table, train_images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusion.quality.gate_columns as columns

    decoded, decode = [], columns._decode
    monkeypatch.setattr(columns, "_decode", lambda blob: decoded.append(blob) or decode(blob))
    # in chunks of 4 rows: the memo keeps what the gate needs of each image across chunks and splits
    rejected = set_values(set_values(good_table.slice(0, 5), "accepted", 0, False), "id", 0, "extra-0")
    rejected = set_values(rejected, "clip_score", 0, 5.0)  # below min_clip_score: rejected, rightly
    unfiltered = pa.concat_tables([good_table, rejected.slice(0, 1)])  # the accepted rows and one more
    result = validate_rows(good_table, SPEC, train_images, None, unfiltered, chunk_rows=4)
    assert result.success, result.summary()
    assert result.statistics["splits"] == {"train": 20, "unfiltered": 21}
    assert len(decoded) == len(set(decoded)) == 20  # the extra row repeats row 0's bytes: one decode each


def test_the_unfiltered_split_has_its_own_suite(good_table: pa.Table, train_images: np.ndarray) -> None:
    lying = set_values(good_table, "clip_score", 2, 5.0)  # accepted, but below min_clip_score = 20
    unfiltered_only = pa.concat_tables([good_table, set_values(lying.slice(2, 1), "id", 0, "u-2")])
    result = validate_rows(good_table, SPEC, train_images, None, unfiltered_only)
    assert result.failed == ["unfiltered: expect_column_pair_values_to_be_equal(accepted, filter_verdict)"]
