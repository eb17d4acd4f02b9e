"""`digits generate --rev`: the diffusion checkpoint that an older revision's dvc.lock pins, fetched by DVC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diffusion.checkpoint import file_sha256
from diffusion.cli import main
from diffusion.errors import DigitsError
from diffusion.generate.pinned import fetch_pinned
from diffusion.model.saved import new_model, save_diffusion
from tests.generate_fixtures import TINY_DIFFUSION, tiny_generate


def _sh(repo: Path, *args: str) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _write_model(folder: Path, seed: int) -> None:
    """A tiny random-weight checkpoint whose weights depend on `seed`."""
    cfg = TINY_DIFFUSION.model_copy(update={"train": TINY_DIFFUSION.train.model_copy(update={"seed": seed})})
    net = new_model(cfg, torch.device("cpu"))
    save_diffusion(folder, cfg, net.state_dict(), net.state_dict(), {"seed": seed})


@pytest.fixture(scope="module")
def pinned_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repo whose stage `model` outputs data/models/diffusion: two commits, two checkpoints."""
    repo = tmp_path_factory.mktemp("pinned")
    _sh(repo, "git", "init", "-q")
    _sh(repo, "git", "config", "user.email", "t@example.com")
    _sh(repo, "git", "config", "user.name", "test")
    _sh(repo, "dvc", "init", "-q")
    _sh(repo, "dvc", "config", "core.analytics", "false")
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "model": {
                        "cmd": "cp -r source data/models/diffusion",
                        "deps": ["source"],
                        "outs": ["data/models/diffusion"],
                    }
                }
            }
        )
    )
    (repo / "data" / "models").mkdir(parents=True)
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "no model yet")
    for seed in (1, 2):
        _write_model(repo / "source", seed)
        _sh(repo, "dvc", "repro", "-q")
        _sh(repo, "git", "add", "-A")
        _sh(repo, "git", "commit", "-qm", f"model {seed}")
    return repo


def test_fetch_pinned_gets_the_older_revisions_checkpoint(pinned_repo: Path, tmp_path: Path) -> None:
    current = file_sha256(pinned_repo / "data/models/diffusion/ema.safetensors")
    older, commit = fetch_pinned("HEAD~1", "data/models/diffusion", tmp_path / "cache", repo=pinned_repo)
    assert len(commit) == 40 and file_sha256(older / "ema.safetensors") != current
    assert json.loads((older / "config.json").read_text())["meta"]["seed"] == 1
    with pytest.raises(DigitsError, match="pins no 'data/models/diffusion'"):
        fetch_pinned("HEAD~2", "data/models/diffusion", tmp_path / "cache", repo=pinned_repo)
    with pytest.raises(DigitsError, match="no such git revision"):
        fetch_pinned("not-a-rev", "data/models/diffusion", tmp_path / "cache", repo=pinned_repo)


@pytest.mark.slow
def test_generate_rev_generates_from_the_older_checkpoint(
    pinned_repo: Path, prefect_server, tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_generate(tiny_models, tmp_path, per_class={3: 2})
    params = {"data": {"cache_dir": str(tmp_path / "cache")}, "generate": cfg.model_dump(mode="json")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(pinned_repo)
    args = ["generate", "--params", str(tmp_path / "params.yaml"), "--no-grade"]
    args += ["--classifier", tiny_models["classifier"]]
    args += ["--train", tiny_models["train"], "--metrics", str(tmp_path / "generate.json")]
    assert main([*args, "--rev", "HEAD~1"]) == 0
    older, commit = fetch_pinned("HEAD~1", "data/models/diffusion", tmp_path / "cache")
    manifest = json.loads(next(Path(cfg.output_root).glob("*/*/manifest.json")).read_text())
    assert manifest["model"]["sha256"] == file_sha256(older / "ema.safetensors")
    assert manifest["model"]["git_revision"] == commit
    assert main([*args, "--rev", "HEAD~2"]) == 2  # no checkpoint pinned there: one line, exit 2
