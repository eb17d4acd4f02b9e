"""`dvc repro` for real, in a temporary git + DVC copy of the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import copy_repo


def _dvc(repo: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_dvc_repro_prepare(tmp_path: Path, npm_cache: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["cache_dir"] = str(npm_cache.parent)  # reuse the session's npm tarball
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    _dvc(repo, "repro", "prepare")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {o["path"]: o for o in lock["stages"]["prepare"]["outs"]}
    assert outs["data/prepared"]["nfiles"] == 3 and outs["data/prepared"]["md5"].endswith(".dir")
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["data"]["seed"] == 0
    assert pq.read_metadata(repo / "data/prepared/train.parquet").num_rows == 8000
    metrics = json.loads((repo / "metrics/data.json").read_text())
    assert metrics["splits"]["test"]["count"] == 1001
    assert "up to date" in _dvc(repo, "status")
    assert "didn't change, skipping" in _dvc(repo, "repro", "prepare")
    # A changed seed makes the stage out of date; the output is identical for the same seed.
    first = (repo / "data/prepared/train.parquet").read_bytes()
    _dvc(repo, "repro", "-f", "prepare")
    assert (repo / "data/prepared/train.parquet").read_bytes() == first
