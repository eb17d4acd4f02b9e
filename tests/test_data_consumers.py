"""Consumers of published versions: in memory (map-style), streamed shard by shard, mixed with real digits."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from diffusion.data.datasets import (
    DigitsDataset,
    MixedDigits,
    MixedStream,
    ShardStream,
    open_version,
    published_dataset,
    published_files,
)
from diffusion.data.schema import digits_table
from diffusion.data.shards import publish_version
from diffusion.errors import DataError

ROWS = 23  # published rows per version, in shards of 5 (5 files)


def tagged(n: int, start: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n images whose first two pixels spell their number start..start+n-1: (uint8 (n, 28, 28), labels (n,))."""
    images = np.zeros((n, 28, 28), np.uint8)
    numbers = np.arange(start, start + n)
    images[:, 0, 0], images[:, 0, 1] = numbers % 256, numbers // 256
    return images, np.arange(n) % 10 if labels is None else labels


def number(image: torch.Tensor) -> int:
    """The number tagged into an image (1, 28, 28) in [-1, 1]."""
    pixels = ((image[0, 0, :2] + 1) * 127.5).round().long()
    return int(pixels[0] + 256 * pixels[1])


def publish(root: str, version: str, start: int) -> str:
    """Publish ROWS tagged digits (and 2 x ROWS unfiltered ones) as `<root>/tagged/<version>`; its path."""
    splits = {}
    for split, n, first in [("train", ROWS, start), ("unfiltered", 2 * ROWS, start + 1000)]:
        images, labels = tagged(n, first)
        splits[split] = digits_table(
            [f"{version}-{split}-{i}" for i in range(n)], images, labels, "synthetic"
        )
    return publish_version(root, "tagged", version, splits, 5, "card", {"created_at": version}).path


@pytest.fixture(params=["local", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A local folder or a fresh in-memory fsspec root."""
    if request.param == "local":
        yield str(tmp_path / "published")
        return
    path = f"memory://consumers-{uuid.uuid4().hex}"
    yield path
    fsspec.filesystem("memory").rm(path.removeprefix("memory://"), recursive=True)


def test_versions_load_in_memory_from_their_manifests(root: str) -> None:
    first, second = publish(root, "v1", 0), publish(root, "v2", 100)
    assert open_version(first).manifest["created_at"] == "v1"
    files = published_files(first)
    assert len(files) == 5 and all(f.startswith(first) and "/data/train-" in f for f in files)
    one = published_dataset(first)
    assert [number(x) for x, _ in one] == list(range(ROWS))
    assert one.images.shape == (ROWS, 1, 28, 28) and torch.equal(one.labels, torch.arange(ROWS) % 10)
    both = published_dataset([first, second])
    assert [number(x) for x in both.images] == [*range(ROWS), *range(100, 100 + ROWS)]
    assert len(published_dataset(first, split="unfiltered")) == 2 * ROWS


def test_a_folder_without_a_manifest_is_no_version(root: str) -> None:
    publish(root, "v1", 0)
    with pytest.raises(DataError, match="not a published version"):
        open_version(f"{root}/tagged/missing")
    with pytest.raises(DataError, match="no 'validation' files"):
        published_files(f"{root}/tagged/v1", split="validation")


def test_a_shard_changed_after_publishing_or_a_version_named_twice_is_refused(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusion.data.datasets import published_listing

    first = publish(root, "v1", 0)
    fs, folder = fsspec.core.url_to_fs(first)
    shards = sorted(fs.glob(f"{folder}/data/train-*.parquet"))
    fs.pipe_file(shards[1], fs.cat_file(shards[0]))  # valid Parquet, the wrong rows: only the checksum tells
    changed = r"train-00001-of-00005.parquet: its bytes differ from the sha256"
    with pytest.raises(DataError, match=changed):
        published_dataset(first)
    listing = published_listing(first)
    stream = ShardStream(listing.files, seed=0, shuffle=False, sha256=listing.sha256)
    with pytest.raises(DataError, match=changed):  # streamed: checked as each file is read
        list(stream)
    assert len(list(ShardStream(published_files(first), seed=0))) == ROWS  # the paths alone check nothing
    fs.rm_file(shards[1])
    with pytest.raises(DataError, match=r"train-00001-of-00005.parquet: missing from the published version"):
        published_dataset(first)
    if "://" not in root:  # a folder where the version has a file
        fs.mkdir(shards[1])
        with pytest.raises(DataError, match=r"00005.parquet: a folder where the version has a file; restore"):
            published_dataset(first)
    second = publish(root, "v2", 100)
    with pytest.raises(DataError, match="named twice"):
        published_dataset([second, f"{second}/"])
    if "://" not in root:  # a relative and an absolute spelling of one folder
        monkeypatch.chdir(tmp_path)
        relative = str(Path(second).relative_to(tmp_path))
        with pytest.raises(DataError, match="named twice"):
            published_dataset([second, relative])


def test_a_copy_of_a_version_or_an_edited_file_list_is_refused(tmp_path: Path) -> None:
    import json

    from diffusion.data.datasets import published_listing

    first = Path(publish(str(tmp_path / "published"), "v1", 0))
    copy = tmp_path / "elsewhere" / "v1"
    shutil.copytree(first, copy)
    with pytest.raises(DataError, match="the same version as .* \\(named twice, or a copy\\)"):
        published_listing([first, copy])
    manifest = json.loads((copy / "manifest.json").read_text())
    edits = {
        "the 'train' files listed are not shards 0 to 4 of 5": lambda m: m["files"].pop(1),
        "no longer hashes to its 'content_sha256'": lambda m: m["files"][0].update(rows=99),
        "which is no shard of a split": lambda m: m["files"][0].update(path="data/train-../../x"),
        "'counts' asks for 24 digits but the train files hold 23": lambda m: m.update(
            counts={"0": {"requested": 24}}
        ),
    }
    for said, edit in edits.items():
        edited = json.loads(json.dumps(manifest))
        edit(edited)
        (copy / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(DataError, match=f"v1/manifest.json: .*{re.escape(said)}.*; restore"):
            published_listing(copy)


def test_open_version_takes_the_json_file_that_names_a_version(tmp_path: Path) -> None:
    import json

    version = publish(str(tmp_path / "generated"), "v1", 0)
    (tmp_path / "generated.json").write_text(json.dumps({"path": "generated/tagged/v1", "version": "v1"}))
    assert Path(open_version(tmp_path / "generated.json").path).resolve() == Path(version).resolve()
    assert len(published_dataset(str(tmp_path / "generated.json"))) == ROWS


def epoch_numbers(stream: ShardStream | MixedStream, workers: int, epoch: int) -> list[int]:
    stream.set_epoch(epoch)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [number(image) for image, _ in loader]


def test_the_stream_yields_every_row_once_per_epoch_across_workers(tmp_path: Path) -> None:
    files = published_files(publish(str(tmp_path), "v1", 0))
    stream = ShardStream(files, seed=3)
    first, second = epoch_numbers(stream, 2, 0), epoch_numbers(stream, 2, 1)
    assert sorted(first) == sorted(second) == list(range(ROWS))
    assert first != second  # a new order each epoch
    assert epoch_numbers(stream, 0, 1) != list(range(ROWS))  # shuffled within files too
    assert sorted(epoch_numbers(stream, 0, 1)) == list(range(ROWS))
    assert epoch_numbers(stream, 0, 1) == epoch_numbers(ShardStream(files, seed=3), 0, 1)  # seeded
    assert epoch_numbers(ShardStream(files, shuffle=False), 0, 0) == list(range(ROWS))


def real_digits(tmp_path: Path, n: int) -> DigitsDataset:
    """n real-looking digits tagged 10,000 and up."""
    images, labels = tagged(n, 10_000)
    path = tmp_path / f"real-{n}.parquet"
    pq.write_table(digits_table([f"real-{i}" for i in range(n)], images, labels, "mnist"), path)
    return DigitsDataset(path)


def test_mixed_digits_hold_the_real_fraction(tmp_path: Path) -> None:
    synthetic, real = published_dataset(publish(str(tmp_path), "v1", 0)), real_digits(tmp_path, 40)
    mixed = MixedDigits(synthetic, real, real_fraction=0.25, seed=0)
    numbers = [number(x) for x, _ in mixed]
    assert len(mixed) == ROWS + 8 and int(mixed.is_real.sum()) == 8  # round(23 / 3)
    assert numbers[:ROWS] == list(range(ROWS)) and all(k >= 10_000 for k in numbers[ROWS:])
    assert len(set(numbers)) == len(numbers)  # no real digit twice while the real set lasts
    again = MixedDigits(synthetic, real, real_fraction=0.25, seed=0)
    assert torch.equal(again.images, mixed.images)
    assert not torch.equal(MixedDigits(synthetic, real, 0.25, seed=1).images, mixed.images)
    assert len(MixedDigits(synthetic, real_digits(tmp_path, 3), real_fraction=0.5, seed=0)) == 2 * ROWS
    with pytest.raises(DataError, match="real_fraction"):
        MixedDigits(synthetic, real, real_fraction=1.0, seed=0)


def test_the_mixed_stream_holds_the_real_fraction_across_workers(tmp_path: Path) -> None:
    files = published_files(publish(str(tmp_path), "v1", 0))
    mixed = MixedStream(ShardStream(files, seed=0), real_digits(tmp_path, 50), real_fraction=0.5, seed=0)
    numbers = epoch_numbers(mixed, 2, 0)
    synthetic = sorted(k for k in numbers if k < 10_000)
    real = [k for k in numbers if k >= 10_000]
    assert synthetic == list(range(ROWS)) and len(real) == ROWS  # every worker mixes half and half


def test_train_on_takes_the_json_file_that_names_a_version(tmp_path: Path) -> None:
    """`digits train-on --data data/generated.json`: the version `dvc repro` published, by its handed-on name."""
    import json

    import yaml

    from diffusion.cli import main
    from diffusion.data.handoff import handed_on_path

    version = publish(str(tmp_path / "generated"), "v1", 0)
    named = tmp_path / "generated.json"
    named.write_text(json.dumps({"path": handed_on_path(version, str(named)), "version": "v1"}))
    real_digits(tmp_path, 20), real_digits(tmp_path, 21)
    val, test = str(tmp_path / "real-20.parquet"), str(tmp_path / "real-21.parquet")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"cas": {"max_epochs": 1, "seeds": [0], "batch_size": 8}}}))
    metrics = tmp_path / "m.json"
    argv = ["train-on", "--params", str(params), "--data", str(named), "--metrics", str(metrics)]
    assert main([*argv, "--val", val, "--test", test]) == 0
    assert json.loads(metrics.read_text())["train_images"] == ROWS


def test_train_on_a_flagged_version_says_so_and_trains(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A version the monitor flagged is trained on when named (latest would skip it), with a note naming the
    broken bound; an unflagged one gets none."""
    import yaml

    from diffusion.cli import main
    from diffusion.data.evaluations import quality_dir, write_document

    root = str(tmp_path / "published")
    flagged, clean = publish(root, "v1", 0), publish(root, "v2", 100)
    flag = {"metric": "cas_ratio", "value": 0.9, "bound": 0.97, "kind": "floor"}
    for version, flags in (("v1", [flag]), ("v2", [])):
        doc = {"name": "tagged", "version": version, "metrics": {"cas_ratio": 0.9}, "flags": flags}
        write_document(quality_dir(root, "tagged"), {**doc, "flagged": bool(flags)})
    real_digits(tmp_path, 20), real_digits(tmp_path, 21)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"cas": {"max_epochs": 1, "seeds": [0], "batch_size": 8}}}))
    real = ["--val", str(tmp_path / "real-20.parquet"), "--test", str(tmp_path / "real-21.parquet")]
    for version, noted in ((flagged, True), (clean, False)):
        assert main(["train-on", "--params", str(params), "--data", version, *real]) == 0
        err = capsys.readouterr().err
        assert ("note: tagged v1 flagged: cas_ratio 0.9 below its floor 0.97" in err) is noted, err


def test_a_handed_on_name_keeps_urls_and_old_absolute_paths(tmp_path: Path) -> None:
    import json

    from diffusion.data.handoff import handed_on_path, published_path

    assert handed_on_path("s3://bucket/d/v1", str(tmp_path / "g.json")) == "s3://bucket/d/v1"
    assert handed_on_path(str(tmp_path / "out" / "v1"), str(tmp_path / "data" / "g.json")) == "../out/v1"
    for path in ["s3://bucket/d/v1", str(tmp_path / "elsewhere" / "v1")]:  # as written before relative names
        (tmp_path / "g.json").write_text(json.dumps({"path": path, "version": "v1"}))
        assert published_path(str(tmp_path / "g.json")) == path


def test_a_disk_failure_reading_a_version_is_worth_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error (EIO, injected under fsspec's local reader) is one line that keeps its OSError as the
    cause, so the flow's tasks retry it; a swapped or missing file (above) is bad input and never is."""
    import errno

    from fsspec.implementations.local import LocalFileOpener

    from diffusion.errors import is_transient

    version = publish(str(tmp_path / "published"), "v1", 0)

    read = LocalFileOpener.read
    for failing, line in [
        (".parquet", r"train-00000-of-00005.parquet: cannot be read"),
        (".json", "manifest"),
    ]:

        def failing_read(
            self: LocalFileOpener, *args: object, failing: str = failing, **kwargs: object
        ) -> bytes:
            if str(self.path).endswith(failing):
                raise OSError(errno.EIO, "Input/output error")
            return read(self, *args, **kwargs)

        monkeypatch.setattr(LocalFileOpener, "read", failing_read)
        with pytest.raises(DataError, match=line) as err:
            published_dataset(version)
        assert "[Errno 5]" in str(err.value) and is_transient(err.value)
