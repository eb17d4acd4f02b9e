"""Parquet digits (local paths or fsspec URLs, one file or many) as PyTorch datasets.

The same reader serves the prepared real splits and the published synthetic shards: both
use `diffusion.data.schema.DIGITS_SCHEMA`, and columns are read by name. Published versions
(diffusion/data/shards.py) are found through their manifests and load in memory (`published_dataset`)
or stream one file at a time (`ShardStream`); `MixedDigits` and `MixedStream` add real digits at a ratio.
A file or version that cannot be opened, read or decoded raises DataError: one line naming it and what to do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from diffusion.data.evaluations import latest_version
from diffusion.data.handoff import published_path
from diffusion.data.schema import table_arrays
from diffusion.data.shards import (
    MANIFEST,
    PublishedVersion,
    check_sha256,
    location,
    read_manifest,
    version_files,
    version_sha256,
)
from diffusion.errors import DataError, one_line

_COLUMNS = ["id", "image", "label"]
_FIX = "replace it with an intact copy (rerun the stage that wrote it)"


def _read_one(
    path: str, columns: Sequence[str], optional: Sequence[str] = (), sha256: str | None = None
) -> pa.Table:
    """`columns` of one Parquet file, and those of `optional` that it has. The file's bytes are read once;
    with `sha256` (a published version's manifest entry) they must hash to it (`check_sha256`). DataError
    naming the file otherwise; an I/O failure keeps its OSError as the cause (worth a retry: `is_transient`).
    """
    published = sha256 is not None  # a file of a published version: restored, not rewritten, when bad
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except (ValueError, ImportError) as err:  # an unknown protocol, or its package is not installed
        raise DataError(
            f"{path}: cannot open ({one_line(err)}); give a local path or a URL fsspec can open"
        ) from None
    except FileNotFoundError:
        if published:
            raise DataError(
                f"{path}: missing from the published version; restore the version's files"
            ) from None
        raise DataError(f"{path}: Parquet file not found") from None
    except IsADirectoryError:
        if published:
            raise DataError(
                f"{path}: a folder where the version has a file; restore the version's files"
            ) from None
        raise DataError(
            f"{path}: a folder; give a Parquet file (a split, or one file of a version)"
        ) from None
    except OSError as err:  # kept as the cause: a network or disk failure may pass (is_transient)
        raise DataError(f"{path}: cannot be read ({one_line(err)})") from err
    if published:
        check_sha256(path, data, sha256)
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        present = [c for c in optional if c in parquet.schema_arrow.names]
        return parquet.read(columns=[*columns, *present])
    except (pa.ArrowException, KeyError, OSError, ValueError) as err:
        fix = "publish the version again" if published else _FIX  # its checksum matched: as published
        raise DataError(f"{path}: not a digits Parquet file ({one_line(err)}); {fix}") from None


def read_table(paths: str | Path | Sequence[str | Path], columns: Sequence[str] = _COLUMNS) -> pa.Table:
    """Read and concatenate Parquet files (local or any fsspec URL) keeping only `columns`."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables = [_read_one(path, columns) for path in map(str, paths)]
    if not tables:
        raise DataError("no Parquet files given")
    try:
        return pa.concat_tables(tables)
    except pa.ArrowException as err:
        raise DataError(
            f"{', '.join(map(str, paths))}: the files' columns differ ({one_line(err)})"
        ) from None


def _decode(path: str, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one file's table; DataError naming the file when its columns do not decode."""
    image, label = table.schema.field("image").type, table.schema.field("label").type
    if not (pa.types.is_struct(image) and image.get_field_index("bytes") >= 0 and pa.types.is_integer(label)):
        raise DataError(
            f"{path}: expected image (struct of PNG bytes) and label (integer) columns, "
            f"found image: {image}, label: {label}; {_FIX}"
        )
    if table.column("label").null_count or table.column("image").combine_chunks().field("bytes").null_count:
        raise DataError(f"{path}: null images or labels; {_FIX}")
    try:
        images, labels = table_arrays(table)
    except (OSError, ValueError, SyntaxError) as err:  # PIL: not a PNG, truncated; numpy: mixed sizes
        raise DataError(
            f"{path}: an image does not decode as a PNG digit ({one_line(err)}); {_FIX}"
        ) from None
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must lie in 0-9, found {labels.min()}..{labels.max()}; {_FIX}")
    return images, labels


def load_arrays(
    paths: str | Path | Sequence[str | Path], sha256: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read digits Parquet into (images uint8 (N, 28, 28), labels int64 (N,)). Raises DataError naming a bad file."""
    images, labels, _ = load_digits(paths, sha256)
    return images, labels


def load_digits(
    paths: str | Path | Sequence[str | Path], sha256: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,), style codes int64 (N,)) of digits Parquet files.

    Files written before styles existed hold MNIST handwriting: their rows read as style 0. `sha256`: each
    file's expected checksum, checked on the bytes read (published versions). Raises DataError naming a bad
    file.
    """
    images, labels, styles, _ = _load(paths, sha256)
    return images, labels, styles


def _load(
    paths: str | Path | Sequence[str | Path], sha256: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    """`load_digits` and the rows' ids (None when a file has no id column), every file read once."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [str(p) for p in paths]
    sums = list(sha256) if sha256 is not None else [None] * len(paths)
    parts = []
    for path, expected in zip(paths, sums, strict=True):
        table = _read_one(path, ["image", "label"], optional=["style", "id"], sha256=expected)
        images, labels = _decode(path, table)
        if "style" in table.column_names:
            if table.column("style").null_count:
                raise DataError(f"{path}: null styles; {_FIX}")
            styles = table.column("style").to_numpy().astype(np.int64)
        else:
            styles = np.zeros(len(labels), np.int64)
        ids = [str(i) for i in table.column("id").to_pylist()] if "id" in table.column_names else None
        parts.append((path, images, labels, styles, ids))
    if not parts:
        raise DataError("no Parquet files given")
    first, size = parts[0][0], parts[0][1].shape[1:]
    for path, images, *_ in parts:
        if images.shape[1:] != size and len(images) and len(parts[0][1]):
            raise DataError(
                f"{path}: {images.shape[1:]} images, but {first} holds {size}; give one image size"
            )
    ids = None if any(p[4] is None for p in parts) else [i for p in parts for i in p[4]]
    return (*(np.concatenate([p[i] for p in parts]) for i in (1, 2, 3)), ids)  # type: ignore[return-value]


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) in [0, 255] -> float32 (N, 1, H, W) in [-1, 1]."""
    x = torch.as_tensor(images).float()
    return (x / 127.5 - 1.0).unsqueeze(1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 1, H, W) in [-1, 1] -> uint8 (N, H, W), clamped and rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).squeeze(1).cpu().numpy()


class DigitsDataset(Dataset):
    """Decoded digits held in memory.

    Item: (image float32 (1, H, W) in [-1, 1], label int64 scalar tensor).
    The whole tensors are also exposed as `.images` (N, 1, H, W), `.labels` (N,) and `.styles` (N,) (style
    codes of diffusion.styles.STYLES) for fast batching, and `.ids` (N strings; None when a file has no id
    column). `sha256`: each file's checksum, checked on the bytes read (`published_dataset` passes them).
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], sha256: Sequence[str] | None = None):
        images, labels, styles, self.ids = _load(paths, sha256)
        self.images = to_model_range(images)
        self.labels = torch.from_numpy(labels)
        self.styles = torch.from_numpy(styles)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


# --------------------------------------------------------------------------- published versions
def open_version(path: str | Path) -> PublishedVersion:
    """The published version at `path` (its folder: a local path or an fsspec URL), with its manifest.

    `<output_root>/<name>/latest` means the newest version of `name` that was graded and not flagged
    (`diffusion.data.evaluations.latest_version`; call that with include_flagged / include_ungraded for more).
    A `.json` path is the file `digits generate --published` wrote, naming the version (data/generated.json
    in `dvc repro`; `diffusion.data.handoff`).
    """
    path = published_path(str(path)).rstrip("/")
    if path.endswith("/latest"):
        parent = path.removesuffix("/latest")
        root, name = parent.rsplit("/", 1) if "/" in parent else (".", parent)
        try:
            return latest_version(root, name)
        except DataError:
            raise
        except (ValueError, ImportError) as err:  # unknown protocol, missing package
            raise DataError(f"{path}: cannot read the versions of {root}/{name} ({one_line(err)})") from None
        except OSError as err:  # kept as the cause: a network or disk failure may pass (is_transient)
            raise DataError(f"{path}: cannot read the versions of {root}/{name} ({one_line(err)})") from err
    try:
        fs, folder = fsspec.core.url_to_fs(path)
        manifest = read_manifest(fs, folder.rstrip("/"))
    except DataError:  # a manifest that is not JSON (a DataError is a ValueError too)
        raise
    except NotADirectoryError:
        raise DataError(f"{path}: a file, not a published version's folder") from None
    except ImportError as err:  # the URL's protocol needs a package (s3fs, gcsfs, ...)
        raise DataError(f"{path}: cannot open ({one_line(err)})") from None
    except ValueError as err:  # an unknown protocol
        raise DataError(f"{path}: cannot read its {MANIFEST} ({one_line(err)})") from None
    except OSError as err:  # kept as the cause: a network or disk failure may pass (is_transient)
        raise DataError(f"{path}: cannot read its {MANIFEST} ({one_line(err)})") from err
    if manifest is None:
        raise DataError(f"{path}: not a published version (no {MANIFEST})")
    if not isinstance(manifest.get("files"), list):
        raise DataError(f"{path}/{MANIFEST}: no 'files' list; publish the version again")
    return PublishedVersion(path, path.rsplit("/", 1)[-1], manifest, reused=False)


Versions = str | Path | PublishedVersion | Sequence[str | Path | PublishedVersion]


@dataclass(frozen=True)
class Listing:
    """The Parquet files of one split of one or more published versions, and the sha256 each file's
    manifest recorded (same order): what a reader checks each file's bytes against as it reads them."""

    files: list[str]
    sha256: list[str]


def published_listing(versions: Versions, split: str = "train") -> Listing:
    """The files of `split` ("train": the published rows, "unfiltered": every sampled row) of one or more
    published versions (folders or URLs, `<root>/<name>/latest`, the JSON file `digits generate --published`
    wrote, or versions `open_version` already opened), as their manifests list them, version by version,
    with their checksums. A version named twice (in any spelling, or a copy of it: the same content_sha256)
    is refused: its digits would count twice.
    """
    if isinstance(versions, (str, Path, PublishedVersion)):
        versions = [versions]
    opened = [v if isinstance(v, PublishedVersion) else open_version(v) for v in versions]
    for i, v in enumerate(opened):  # the same folder in two spellings, or a copy of it elsewhere
        content = v.manifest.get("content_sha256")
        for earlier in opened[:i]:
            copy = content is not None and content == earlier.manifest.get("content_sha256")
            if copy or location(v.path) == location(earlier.path):
                raise DataError(
                    f"{v.path}: the same version as {earlier.path} (named twice, or a copy); each of its"
                    " digits would be counted twice"
                )
    files = [f for v in opened for f in version_files(v, split)]
    if not files:
        raise DataError(f"no '{split}' files in {', '.join(v.path for v in opened) or 'no versions'}")
    return Listing(files, [s for v in opened for s in version_sha256(v, split)])


def published_files(versions: Versions, split: str = "train") -> list[str]:
    """`published_listing(versions, split).files`: the paths alone (a reader given them checks nothing)."""
    return published_listing(versions, split).files


def published_dataset(versions: Versions, split: str = "train") -> DigitsDataset:
    """One or more published versions in memory, as a map-style DigitsDataset; each file is checked against
    its manifest's sha256 as it is read (one read), so a changed or swapped shard fails, naming it."""
    listing = published_listing(versions, split)
    return DigitsDataset(listing.files, listing.sha256)


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (seed, epoch, ...), each tuple its own stream."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


def _draws(pool: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` indices (count,) into range(pool): a random order with no repeat until all were drawn."""
    if count == 0:
        return torch.zeros(0, dtype=torch.int64)
    if pool == 0:
        raise DataError(f"cannot draw {count} rows from an empty dataset")
    return torch.cat([torch.randperm(pool, generator=generator) for _ in range(-(-count // pool))])[:count]


def _real_count(synthetic: int, real_fraction: float) -> int:
    """Real rows to add to `synthetic` rows so that `real_fraction` of all rows are real."""
    if not 0.0 <= real_fraction < 1.0:
        raise DataError(f"real_fraction must lie in [0, 1), got {real_fraction}")
    return round(synthetic * real_fraction / (1.0 - real_fraction))


class ShardStream(IterableDataset):
    """Digits streamed from Parquet files (local or fsspec) one file at a time, never all in memory.

    Each epoch the files are put in a seeded order and dealt round-robin to the DataLoader's workers, and each
    file's rows are shuffled, so every row comes exactly once per epoch across the workers (a worker without a
    file yields nothing). Workers get a copy of the dataset when an epoch starts: call `set_epoch(e)` before
    iterating to draw epoch e's order. Item: (image float32 (1, 28, 28) in [-1, 1], label int64 scalar).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        seed: int = 0,
        shuffle: bool = True,
        sha256: Sequence[str] | None = None,
    ):
        if not files:
            raise DataError("no Parquet files given")
        self.files, self.seed, self.shuffle, self.epoch = [str(f) for f in files], seed, shuffle, 0
        self.sha256 = list(sha256) if sha256 is not None else None  # checked as each file is read
        if self.sha256 is not None and len(self.sha256) != len(self.files):
            raise DataError(f"{len(self.files)} files but {len(self.sha256)} checksums; give one per file")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        n = len(self.files)
        order = (
            torch.randperm(n, generator=_generator(self.seed, self.epoch)).tolist()
            if self.shuffle
            else range(n)
        )
        for index in order[worker::workers]:
            sums = [self.sha256[index]] if self.sha256 is not None else None
            images, labels = load_arrays(self.files[index], sums)
            x, y = to_model_range(images), torch.from_numpy(labels)
            rows = torch.randperm(len(y), generator=_generator(self.seed, self.epoch, index)).tolist()
            for r in rows if self.shuffle else range(len(y)):
                yield x[r], y[r]


class MixedDigits(Dataset):
    """Synthetic digits with real ones added so that `real_fraction` of the items are real.

    Every synthetic digit is kept; round(n * f / (1 - f)) real digits are drawn by `seed`, without repeats
    while the real set lasts. Items 0..n-1 are the synthetic ones, the real ones follow. Item: (image float32
    (1, H, W) in [-1, 1], label int64 scalar); `.images` (N, 1, H, W) and `.labels` (N,) hold them all.
    """

    def __init__(self, synthetic: DigitsDataset, real: DigitsDataset, real_fraction: float, seed: int):
        pick = _draws(len(real), _real_count(len(synthetic), real_fraction), _generator(seed))
        self.images = torch.cat([synthetic.images, real.images[pick]])
        self.labels = torch.cat([synthetic.labels, real.labels[pick]])
        self.is_real = torch.arange(len(self.labels)) >= len(synthetic)  # (N,) bool

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


class MixedStream(IterableDataset):
    """A ShardStream with real digits interleaved so that `real_fraction` of each worker's items are real.

    After each streamed digit, real digits (drawn by (seed, epoch, worker), without repeats while the real set
    lasts) follow until round(s * f / (1 - f)) of them have come for the s streamed so far. Item: (image
    float32 (1, H, W) in [-1, 1], label int64 scalar). `set_epoch` sets the stream's epoch too.
    """

    def __init__(self, stream: ShardStream, real: DigitsDataset, real_fraction: float, seed: int):
        if _real_count(1, real_fraction) and not len(real):  # also validates the fraction
            raise DataError("no real digits to mix in")
        self.stream, self.real, self.real_fraction, self.seed = stream, real, real_fraction, seed

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        generator = _generator(self.seed, self.stream.epoch, info.id if info is not None else 0)
        order, drawn = torch.zeros(0, dtype=torch.int64), 0
        for streamed, item in enumerate(self.stream, start=1):
            yield item
            while drawn < _real_count(streamed, self.real_fraction):
                if drawn % len(self.real) == 0:  # the next pass over the real set, in a new order
                    order = torch.randperm(len(self.real), generator=generator)
                yield self.real[int(order[drawn % len(self.real)])]
                drawn += 1
