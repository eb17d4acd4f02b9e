"""Checkpoints pinned by another git revision's dvc.lock, fetched through DVC (its cache or a remote).

folder = fetch_pinned("v1.0", "data/models/diffusion", cache="data/cache/pinned")
"""

from __future__ import annotations

import shutil
from pathlib import Path

from diffusion.checkpoint import atomic_path
from diffusion.errors import DigitsError


def resolve_revision(rev: str, repo: str | Path = ".") -> str:
    """The full commit hash of `rev` (a tag, branch or hash) in the git repo `repo`."""
    import subprocess

    out = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=repo, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise DigitsError(f"--rev {rev}: no such git revision in {Path(repo).resolve()}")
    return out.stdout.strip()


def fetch_pinned(rev: str, path: str, cache: str | Path, repo: str | Path = ".") -> tuple[Path, str]:
    """Copy the folder `path` as the dvc.lock of git revision `rev` pins it into `<cache>/<commit>/<path>`.

    Returns (the local folder, the commit). A folder fetched before is reused (its content is fixed by
    the commit). Raises DigitsError when the revision does not exist or pins no `path`.
    """
    from dvc.api import DVCFileSystem

    commit = resolve_revision(rev, repo)
    target = Path(cache) / commit / path
    if target.is_dir():
        return target, commit
    fs = DVCFileSystem(str(repo), rev=commit)
    try:
        pinned = fs.isdir(path) and fs.info(path).get("dvc_info") is not None
    except Exception:  # DVC raises its own errors for a broken lock file at that revision
        pinned = False
    if not pinned:
        raise DigitsError(f"--rev {rev}: dvc.lock at {commit[:12]} pins no '{path}'")
    try:
        with atomic_path(target) as tmp:
            fs.get(path, str(tmp), recursive=True)
    except Exception as err:  # the cache and every remote lack the files
        shutil.rmtree(target, ignore_errors=True)
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise DigitsError(
            f"--rev {rev}: cannot fetch '{path}' from the DVC cache or remote ({first})"
        ) from None
    return target, commit
