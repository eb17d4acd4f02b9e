"""Atomic file writes and model checkpoints: safetensors weights + a JSON config beside them.

A checkpoint is a folder:

    <dir>/config.json          {"kind": ..., "config": {...}, "meta": {...}}
    <dir>/<name>.safetensors   one or more named weight files (e.g. "model", "ema")

Nothing is ever unpickled. Every write goes to a temporary file in the same folder and is then
renamed over the target, so a killed process leaves either the old file or the new one. A checkpoint
that cannot be read or decoded raises CheckpointError: one line naming the file and what to do.
It imports only `diffusion.errors`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffusion.errors import DigitsError


class CheckpointError(DigitsError):
    """A checkpoint folder or weights file is missing or corrupt. One-line message naming it."""


class OutputError(DigitsError):
    """An output path that cannot be written: a folder where a file goes, a file where a folder goes, no
    permission. One line naming it."""


def check_output(path: str | Path, what: str, folder: bool = False) -> None:
    """Fail before any work when `path` (a file, or with `folder` a folder) cannot be written.

    Writes and removes a probe file in the deepest folder that exists on the way to `path` and creates no
    folder, so a command stopped by other bad input leaves nothing behind. Raises OutputError naming `what`
    (e.g. "--metrics") and `path`. URLs (`scheme://`) are left to the store that writes them.
    """
    if "://" in str(path):
        return
    target = Path(path)
    try:
        if target.is_dir() and not folder:
            raise IsADirectoryError("a folder, not a file")
        if target.exists() and not target.is_dir() and folder:
            raise NotADirectoryError("a file, not a folder")
        where = target if target.is_dir() else target.parent
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise NotADirectoryError(f"{where} is a file, not a folder")
        probe = where / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:  # PermissionError, a read-only or virtual file system (/proc, /sys), ...
        reason = err.strerror or str(err)
        raise OutputError(f"{what} {path}: cannot be written ({reason})") from None


_FIX = "restore the folder (dvc checkout) or rerun the stage that writes it"


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`.

    On an exception the temporary file or folder is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """A DVC metrics file (JSON, atomically): `metrics` without its mappings and lists (per-class breakdowns,
    style names: plots and documents hold those), so `dvc metrics show` has one value per key; NaN and
    infinities are written as null. A value JSON cannot hold (a numpy scalar) is a TypeError, as ever."""
    kept = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v
        for k, v in metrics.items()
        if not isinstance(v, dict | list | tuple)
    }
    write_json_atomic(path, kept)


def write_csv_atomic(path: str | Path, rows: list[dict]) -> None:
    """Write rows (dicts with the same keys) as CSV, atomically: the format of DVC plots."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex): what manifests and run keys record of weights and data."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(
    directory: str | Path,
    kind: str,
    config: dict[str, Any],
    weights: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a whole checkpoint folder atomically (the folder appears complete or not at all).

    Args:
        directory: the checkpoint folder to create or replace.
        kind: what the weights are ("unet", "classifier", ...), checked on load.
        config: what rebuilds the network and nothing more (architecture fields).
        weights: weight-file name -> state dict, e.g. {"model": ..., "ema": ...}.
        meta: everything else worth keeping (training settings, metrics), stored in config.json.
    """
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for name, state in weights.items():
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
            save_file(tensors, str(tmp / f"{name}.safetensors"))
        doc = {"kind": kind, "config": config, "meta": meta or {}}
        (tmp / "config.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_checkpoint_config(directory: str | Path, kind: str) -> dict[str, Any]:
    """Return the checkpoint's config.json document after checking its kind."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint config not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err.msg}); {_FIX}") from None
    except (UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint config ({err}); {_FIX}") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        found = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"{path}: expected a '{kind}' checkpoint, found '{found}'")
    if not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{path}: no 'config' mapping (a checkpoint holds kind, config and meta)")
    if not isinstance(doc.setdefault("meta", {}), dict):
        raise CheckpointError(f"{path}: 'meta' is not a mapping; {_FIX}")
    return doc


def load_weights(path: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Load one safetensors file; a missing or corrupt file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a valid safetensors file ({first}); {_FIX}") from None
