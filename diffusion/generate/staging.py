"""The staging folder's lifecycle: one folder per run, kept until its version is published.

    <staging_dir>/<run id>/          run.json, run.lock, c<digit>-j<block>.parquet per seed block, data_docs/
    <staging_dir>/.trash-<run id>-*  a published run's folder on its way out

A failed, gated-out or killed run keeps its folder, so the next run with the same params resumes from it.
Once its version is published the folder is renamed away (atomic: no reader ever sees half a folder) and
then removed; a kill between the two leaves only a `.trash-*` folder, which `collect_garbage` removes.
A run killed while it wrote its version leaves a `.tmp-*` folder in the output root (`publish_version`),
which `collect_unfinished_publishes` removes once it is old enough.
`collect_garbage` also removes run folders untouched for longer than a given age (abandoned runs): those
holding a `run.json`, and those named as a run id holding staged blocks without one (a run whose folder was
removed under its running tasks, which then staged blocks again); it leaves anything else alone. It cannot
tell a live run from an abandoned one but by age: `--older-than 0` removes a running run's folder too.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fsspec.core import split_protocol

from diffusion.data.shards import UNFINISHED, url_to_fs
from diffusion.generate.plan import GenerationError

TRASH = ".trash-"
RUN_ID = re.compile(r"[0-9a-f]{12}")  # the first 12 hex digits of the run key (`RunSpec.run_id`)
BLOCK_FILES = "c*-j*.parquet"  # a staged seed block
LOCK = "run.lock"  # held by the process sampling or publishing the run (`run_lock`)


@contextmanager
def run_lock(run_folder: Path) -> Iterator[None]:
    """Hold the run folder's lock (`flock` on its `run.lock`) while a run samples and publishes: a second
    run of the same run key (a `dvc repro` started again while the first one's process still runs, two
    hand runs of the same params) fails in one line instead of staging and publishing the same blocks
    twice. The operating system drops the lock with its process, so a killed run leaves none behind."""
    run_folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GenerationError(
            f"{run_folder}: another run of these params is sampling or publishing (it holds {LOCK});"
            " wait for it to end, or stop it, then run again"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def discard(run_folder: Path) -> None:
    """Remove a published run's staging folder: renamed away first, then deleted (a no-op if it is gone)."""
    if not run_folder.exists():
        return
    trash = run_folder.with_name(f"{TRASH}{run_folder.name}-{uuid.uuid4().hex[:8]}")
    run_folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def last_touched(folder: Path) -> float:
    """The newest modification time (seconds since 1970) of the folder or anything in it (a file that a
    running run renames away meanwhile is skipped)."""
    times = [folder.stat().st_mtime]
    for path in folder.rglob("*"):
        try:
            times.append(path.stat().st_mtime)
        except FileNotFoundError:
            continue
    return max(times)


def collect_unfinished_publishes(
    output_root: str, name: str, older_than_days: float, now: float | None = None
) -> list[Path]:
    """Remove the `.tmp-<version>-*` folders of dataset `name` in a local `output_root` (a path, `~/...` or
    file://) untouched for more than `older_than_days` (a run killed while it wrote its version: its rerun
    publishes anew); return them. An object store has none (there a version is its manifest, written last)."""
    if split_protocol(output_root)[0] not in (None, "file", "local"):
        return []  # an object store: nothing to build (its package, its credentials) to find nothing
    folder, now = Path(url_to_fs(output_root)[1]) / name, time.time() if now is None else now
    if not folder.is_dir():
        return []
    removed = []
    for tmp in sorted(p for p in folder.glob(f"{UNFINISHED}*") if p.is_dir()):
        if now - last_touched(tmp) > older_than_days * 86400:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def collect_garbage(staging_dir: str | Path, older_than_days: float, now: float | None = None) -> list[Path]:
    """Remove `.trash-*` folders, and run folders (above) untouched for more than `older_than_days`; return
    them."""
    root, now = Path(staging_dir), time.time() if now is None else now
    if not root.is_dir():
        return []
    removed = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        is_run = (folder / "run.json").is_file() or (
            RUN_ID.fullmatch(folder.name) is not None and any(folder.glob(BLOCK_FILES))
        )
        if folder.name.startswith(TRASH) or (is_run and now - last_touched(folder) > older_than_days * 86400):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
