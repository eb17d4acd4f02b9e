"""Published dataset versions: written once, complete, read back and listed (a running generation's staged
shards, which a version is made of, are diffusion/data/staged.py's).

A version is published once, complete, as Hugging Face lays out a dataset:

    <output_root>/<name>/<version>/
        data/train-00000-of-0000N.parquet       the accepted rows, exact counts per class
        data/unfiltered-00000-of-0000M.parquet  every sampled row of the run, accepted or not
                                                (both in an order drawn from the run key: every shard
                                                holds every class)
        data_docs/index.html                    the Great Expectations Data Docs of the publish gate
        README.md                               the dataset card (YAML front matter: configs, features)
        manifest.json                           files with sha256 and rows, counts, params, checksums

On a local filesystem the version folder is written beside its final name and renamed into place; on an
object store (any fsspec URL) `manifest.json` is written last and a folder without one is no version.
A version is never overwritten: publishing the same content again returns the existing one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from diffusion.checkpoint import OutputError, atomic_path, check_output
from diffusion.errors import DataError

MANIFEST = "manifest.json"
CARD = "README.md"
UNFINISHED = ".tmp-"  # a local version folder being written; renamed to the version when complete


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def split_files(split: str, table: pa.Table, shard_rows: int) -> Iterator[tuple[str, bytes, int]]:
    """(relative path, Parquet bytes, rows) of each shard of one split, named as Hugging Face expects; made
    one at a time, so that only one shard's bytes are held."""
    n = max(1, -(-table.num_rows // shard_rows))
    for i in range(n):
        rows = min(shard_rows, table.num_rows - i * shard_rows)
        yield (
            f"data/{split}-{i:05d}-of-{n:05d}.parquet",
            _parquet_bytes(table.slice(i * shard_rows, rows)),
            rows,
        )


def _shard_files(splits: dict[str, pa.Table], shard_rows: int) -> Iterator[tuple[str, bytes, int]]:
    for split, table in splits.items():
        yield from split_files(split, table, shard_rows)


def _listing(path: str, data: bytes, rows: int) -> dict[str, Any]:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "rows": rows}


def _content(listed: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class PublishedVersion:
    """A published version: its folder (local path or URL), name and manifest; `reused` when an earlier
    run had already published exactly this content."""

    path: str
    version: str
    manifest: dict[str, Any]
    reused: bool


def _fs(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, base = url_to_fs(root)
    return fs, base.rstrip("/")


def url_to_fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """`fsspec.core.url_to_fs`, with a URL whose protocol is unknown or whose package is not installed as
    one DataError naming it."""
    try:
        return fsspec.core.url_to_fs(str(path))
    except ImportError as err:  # the protocol's package (s3fs, gcsfs, ...) is not installed
        raise DataError(f"{path}: cannot open ({str(err).splitlines()[0]})") from None
    except ValueError as err:  # an unknown protocol
        raise DataError(f"{path}: cannot open ({err}); give a local path or a URL fsspec knows") from None


def location(path: str) -> tuple[str, str]:
    """(protocol, path) of a local path or URL, so two spellings of one folder compare equal: as fsspec
    resolves it (`~` expanded, relative made absolute, `file://` and plain paths alike), then on a local disk
    the real path (`..`, `//` and symbolic links resolved), elsewhere with repeated slashes collapsed."""
    fs, resolved = url_to_fs(str(path))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if isinstance(fs, LocalFileSystem):
        return protocol, os.path.realpath(resolved)
    return protocol, re.sub("/+", "/", resolved).rstrip("/") or "/"


def _url(root: str, base: str, *parts: str) -> str:
    """The user-facing location: a local path, or the URL with the root's protocol."""
    path = "/".join([base, *parts])
    if "://" not in root:
        return path
    protocol = root.split("://", 1)[0]
    # file:///abs keeps its absolute path; bucket-style protocols (s3://bucket/...) have no leading slash
    return f"{protocol}://{path}" if protocol in ("file", "local") else f"{protocol}://{path.lstrip('/')}"


def check_writable(root: str, name: str) -> None:
    """Fail early, before any generation, when `<root>/<name>` cannot be written (a one-line OutputError).

    Writes and removes a probe file and creates no folder: on a local disk the probe goes into `<root>/<name>`
    or, where that does not exist yet, its deepest existing parent (publishing creates the rest), so a run
    stopped later by other bad input leaves nothing behind, and two runs' checks never race over a folder
    (`diffusion.checkpoint.check_output`). Elsewhere (an fsspec URL) the folder is made as the store makes
    folders, and the probe written there.
    """
    fs, base = _fs(root)
    folder = f"{base}/{name}"
    if isinstance(fs, LocalFileSystem):
        check_output(folder, "generate.output_root", folder=True)
        return
    probe = f".write-probe-{uuid.uuid4().hex}"
    try:
        fs.makedirs(folder, exist_ok=True)
        fs.pipe_file(f"{folder}/{probe}", b"")
        fs.rm_file(f"{folder}/{probe}")
    except OSError as err:  # PermissionError, NotADirectoryError, ... included
        raise OutputError(
            f"generate.output_root {_url(root, base, name)}: cannot be written ({err.strerror or err})"
        ) from None


def publish_version(
    root: str,
    name: str,
    version: str,
    splits: dict[str, pa.Table],
    shard_rows: int,
    card: str,
    manifest: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
) -> PublishedVersion:
    """Publish `splits` (split name -> DIGITS_SCHEMA rows) as `<root>/<name>/<version>`, all or nothing.

    `manifest` gains `files` (path, sha256, rows) and `content_sha256`; `card` is the README.md text;
    `extra_files` (relative path -> bytes, e.g. the Data Docs) are published beside them.
    Raises DataError when the version exists with other content: versions are never overwritten.
    """
    fs, base = _fs(root)
    target = f"{base}/{name}/{version}"
    url = _url(root, base, name, version)
    documents = [*(extra_files or {}).items(), (CARD, card.encode())]

    def finished(listed: list[dict[str, Any]]) -> tuple[dict[str, Any], bytes]:
        full = {**manifest, "files": listed, "content_sha256": _content(listed)}
        return full, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode()

    def existing_version(content: str) -> PublishedVersion | None:
        existing = read_manifest(fs, target)
        if existing is None:
            return None
        if existing.get("content_sha256") == content:
            return PublishedVersion(url, version, existing, reused=True)
        raise DataError(f"{url}: version exists with other content; versions are never overwritten")

    if isinstance(fs, LocalFileSystem):  # shards written to a hidden folder one at a time, then one rename
        tmp = f"{base}/{name}/{UNFINISHED}{version}-{uuid.uuid4().hex[:8]}"
        try:
            listed = []
            for rel, data in _with_listing(_shard_files(splits, shard_rows), listed):
                _write_local(fs, f"{tmp}/{rel}", data)
            full, manifest_bytes = finished(listed)
            if (reused := existing_version(full["content_sha256"])) is not None:
                fs.rm(tmp, recursive=True)
                return reused
            for rel, data in [*documents, (MANIFEST, manifest_bytes)]:
                _write_local(fs, f"{tmp}/{rel}", data)
            Path(tmp).rename(target)  # atomic; fails if the target appeared meanwhile
        except (OSError, DataError) as err:
            if fs.exists(tmp):
                fs.rm(tmp, recursive=True)
            if isinstance(err, DataError):
                raise
            # the cause stays: a transient I/O error is retried (`diffusion.errors.is_transient`)
            raise DataError(f"{url}: could not publish ({err})") from err
        return PublishedVersion(url, version, full, reused=False)
    # object stores: a first pass hashes the shards, a second uploads them (one shard's bytes held at a
    # time); the manifest, written last, is what makes the folder a version
    full, manifest_bytes = finished([_listing(*f) for f in _shard_files(splits, shard_rows)])
    if (reused := existing_version(full["content_sha256"])) is not None:
        return reused
    for rel, data, _ in _shard_files(splits, shard_rows):
        fs.pipe_file(f"{target}/{rel}", data)
    for rel, data in documents:
        fs.pipe_file(f"{target}/{rel}", data)
    fs.pipe_file(f"{target}/{MANIFEST}", manifest_bytes)
    return PublishedVersion(url, version, full, reused=False)


def _with_listing(
    files: Iterator[tuple[str, bytes, int]], listed: list[dict[str, Any]]
) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of each file, appending its manifest entry (path, sha256, rows) to `listed`."""
    for rel, data, rows in files:
        listed.append(_listing(rel, data, rows))
        yield rel, data


def _write_local(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    fs.makedirs(str(Path(path).parent), exist_ok=True)
    with atomic_path(path) as part:
        part.write_bytes(data)


def read_manifest(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, Any] | None:
    """The manifest of a version folder, or None when it has none (no version, or an unfinished upload)."""
    try:
        manifest = json.loads(fs.cat_file(f"{folder}/{MANIFEST}"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(
            f"{folder}/{MANIFEST}: not a version manifest ({err}); publish the version again"
        ) from None
    if not isinstance(manifest, dict):
        raise DataError(
            f"{folder}/{MANIFEST}: not a version manifest (a JSON {type(manifest).__name__}, expected an"
            " object); publish the version again"
        )
    files = manifest.get("files", [])
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
        for f in files
    ):
        raise DataError(
            f"{folder}/{MANIFEST}: 'files' should list objects with a 'path' and a 'sha256'; publish the"
            " version again"
        )
    if (problem := _listing_problem(manifest)) is not None:
        raise DataError(f"{folder}/{MANIFEST}: {problem}; restore the version's files")
    return manifest


_SHARD = re.compile(r"data/([a-z]+)-(\d{5})-of-(\d{5})\.parquet")


def _listing_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a manifest's file list other than the one `publish_version` wrote, or None: a path that is
    no shard of a split, a split whose shards are not exactly 00000..N-1 of N, a list that no longer hashes
    to `content_sha256` (an entry dropped, added or edited), or train rows that are not the per-class counts'
    sum. The shards' own bytes are checked against their sha256 as they are read (`check_sha256`)."""
    files = manifest["files"]
    shards: dict[str, list[tuple[int, int]]] = {}
    for entry in files:
        if (found := _SHARD.fullmatch(entry["path"])) is None:
            return f"'files' lists {entry['path']!r}, which is no shard of a split (data/<split>-NNNNN-of-NNNNN.parquet)"
        split, index, of = found[1], int(found[2]), int(found[3])
        shards.setdefault(split, []).append((index, of))
    for split, found in shards.items():
        n = found[0][1]
        if sorted(found) != [(i, n) for i in range(n)]:
            return f"the '{split}' files listed are not shards 0 to {n - 1} of {n}, each once"
    if "content_sha256" in manifest and manifest["content_sha256"] != _content(files):
        return "'files' no longer hashes to its 'content_sha256' (an entry was dropped, added or edited)"
    counts = manifest.get("counts")
    if isinstance(counts, dict) and all(isinstance(c, dict) for c in counts.values()) and "train" in shards:
        requested = sum(c.get("requested", 0) for c in counts.values())
        rows = sum(f.get("rows", 0) for f in files if f["path"].startswith("data/train-"))
        if requested != rows:
            return f"'counts' asks for {requested} digits but the train files hold {rows}"
    return None


def list_versions(root: str, name: str, broken: list[str] | None = None) -> list[PublishedVersion]:
    """Every published version of dataset `name` under `root`, oldest first (by the manifest's created_at).

    A version whose manifest is broken (`read_manifest`) raises its DataError; with a `broken` list, its
    one-line reason is appended there instead and the version left out."""
    fs, base = _fs(root)
    if not fs.exists(f"{base}/{name}"):
        return []
    found = []
    for entry in fs.ls(f"{base}/{name}", detail=True):
        version = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if version.startswith(".") or entry.get("type") != "directory":
            continue  # dot-folders are unfinished publishes; files (a stray page) are no version
        try:
            manifest = read_manifest(fs, f"{base}/{name}/{version}")
        except DataError as err:
            if broken is None:
                raise
            broken.append(str(err))
            continue
        if manifest is not None:
            found.append(PublishedVersion(_url(root, base, name, version), version, manifest, reused=False))
    return sorted(found, key=lambda v: (v.manifest.get("created_at", ""), v.version))


def check_sha256(path: str, data: bytes, expected: str | None) -> None:
    """DataError naming `path` when `data` (its bytes) does not hash to the sha256 its manifest recorded."""
    if hashlib.sha256(data).hexdigest() != expected:
        raise DataError(
            f"{path}: its bytes differ from the sha256 its {MANIFEST} recorded when it was published"
            " (the file was changed or replaced); restore the version's files"
        )


def version_files(version: PublishedVersion, split: str = "train") -> list[str]:
    """The Parquet files (paths or URLs) of one split of a published version, in order."""
    return [f"{version.path}/{f['path']}" for f in _entries(version, split)]


def version_sha256(version: PublishedVersion, split: str = "train") -> list[str]:
    """The sha256 the manifest recorded for each file of `version_files(version, split)`, in that order."""
    return [str(f.get("sha256")) for f in _entries(version, split)]


def _entries(version: PublishedVersion, split: str) -> list[dict[str, Any]]:
    return [f for f in version.manifest["files"] if f["path"].startswith(f"data/{split}-")]
