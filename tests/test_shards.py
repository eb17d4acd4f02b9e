"""Publishing versions: all or nothing, never overwritten, local folders and fsspec URLs alike."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from diffusion.data.schema import digits_table
from diffusion.data.shards import check_writable, list_versions, publish_version, version_files
from diffusion.errors import DataError, DigitsError


def _rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return digits_table(
        [f"r{seed}-{i}" for i in range(n)], images, np.arange(n) % 10, "synthetic", accepted=True
    )


@pytest.mark.parametrize("where", ["local", "memory"])
def test_publish_lists_reads_and_never_overwrites(where: str, tmp_path: Path) -> None:
    root = str(tmp_path / "out") if where == "local" else f"memory://bucket-{tmp_path.name}"
    manifest = {"created_at": "2026-11-26T03:00:00+00:00"}
    first = publish_version(
        root, "ds", "v1", {"train": _rows(25, 0)}, 10, "card", manifest, {"data_docs/index.html": b"<html>"}
    )
    assert not first.reused and [f["rows"] for f in first.manifest["files"]] == [10, 10, 5]
    assert [Path(f).name for f in version_files(first)] == [
        f"train-0000{i}-of-00003.parquet" for i in range(3)
    ]
    fs, _ = fsspec.core.url_to_fs(root)
    with fsspec.open(version_files(first)[2], "rb") as f:
        assert pq.read_table(f).num_rows == 5
    again = publish_version(root, "ds", "v1", {"train": _rows(25, 0)}, 10, "card", manifest)
    assert again.reused and again.manifest["content_sha256"] == first.manifest["content_sha256"]
    with pytest.raises(DataError, match="version exists with other content"):
        publish_version(root, "ds", "v1", {"train": _rows(25, 1)}, 10, "card", manifest)
    assert [v.version for v in list_versions(root, "ds")] == ["v1"]
    if where == "local":
        assert not [p for p in (tmp_path / "out").rglob(".*")]


def test_a_folder_without_a_manifest_is_no_version(tmp_path: Path) -> None:
    (tmp_path / "ds" / "half-written" / "data").mkdir(parents=True)
    assert list_versions(str(tmp_path), "ds") == []


def test_an_unwritable_output_root_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DigitsError, match="generate.output_root .*a-file.* cannot be written") as err:
        check_writable(str(tmp_path / "a-file" / "below"), "ds")
    assert "\n" not in str(err.value)


def test_the_write_check_leaves_no_folder_behind(tmp_path: Path) -> None:
    """A run stopped by later bad input must not leave an empty dataset folder: the check writes a probe
    into the deepest folder that exists and creates none."""
    check_writable(str(tmp_path / "new" / "root"), "ds")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept" / "ds").mkdir(parents=True)
    check_writable(str(tmp_path / "kept"), "ds")
    assert list((tmp_path / "kept" / "ds").iterdir()) == []
    (tmp_path / "kept" / "a-file").write_text("")
    with pytest.raises(DigitsError, match="cannot be written"):
        check_writable(str(tmp_path / "kept" / "a-file" / "below"), "ds")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a-file", "ds", "kept"]


def test_a_full_disk_staging_a_shard_is_one_line_worth_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's tmpfs of 300 kB: a traceback and exit 1 before; now a DataError keeping the OSError
    (a task retries it; the CLI prints its line), and no half-written shard."""
    import errno

    from diffusion.data.staged import write_shard
    from diffusion.errors import is_transient

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(
        DataError, match=r"c0\.parquet: cannot be written \(\[Errno 28\] No space left"
    ) as err:
        write_shard(_rows(3, 0), tmp_path / "c0.parquet")
    assert is_transient(err.value) and not list(tmp_path.iterdir())
