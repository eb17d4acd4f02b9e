"""Published versions and evaluation documents for the report tests (tests/report/test_*.py):
real rendered digits, real Parquet and a manifest like the flow's, and `site`, the reports of three versions
built once a test session (the tests only read it)."""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from diffusion.data.datasets import read_table
from diffusion.data.schema import digits_table
from diffusion.data.shards import PublishedVersion, publish_version, version_files
from diffusion.model.saved import new_model, save_diffusion
from diffusion.quality.report import build_reports
from tests.generate_fixtures import TINY_DIFFUSION
from tests.judges_fixtures import render_digits

NAME = "tiny-digits"
PER_CLASS, SAMPLED = 6, 20
SAMPLER = {"name": "ddim", "steps": 10, "guidance": 3.0, "eta": 0.0}
METRIC_VALUES: dict[str, float | None] = {
    "conditional_accuracy_published": 0.973,
    "conditional_accuracy_raw": 0.912,
    "judge_accuracy_published": 0.995,
    "judge_accuracy_raw": 0.934,
    "cas_accuracy": 0.9612,
    "real_baseline_accuracy": 0.97,
    "cas_ratio": 0.991,
    "augmentation_gain": 0.004,
    "frechet_distance": 12.5,
    "frechet_distance_real": 1.25,
    "diversity_synthetic": 0.41,
    "diversity_real": 0.45,
    "memorization_rate": 0.002,  # the gate's, copied from the manifest
    "duplicate_rate": 0.0,
    "precision": 0.8,
    "recall": None,  # NaN in the grading, null in JSON
    "density": 0.9,
    "coverage": 0.9,
    "coverage_ratio": 0.95,
    "dcr_share": 0.65,
    "dcr_share_real": 0.51,  # a real-against-real reference: shown beside its measure
    "label_issue_rate": 0.02,
}
FLAGS = [
    {"metric": "recall", "value": None, "bound": 0.5, "kind": "floor"},
    {"metric": "dcr_share", "value": 0.65, "bound": 0.6, "kind": "ceiling"},
]
OLD_FLAT = {"cas_ratio": 0.9, "conditional_accuracy_published": 0.95, "frechet_distance": 20.0}


def graded(metrics: dict[str, Any], **rest: Any) -> dict[str, Any]:
    """The smallest evaluation document `build_reports` takes: these metrics, no flags (and `rest`)."""
    return {"metrics": dict(metrics), "flags": [], "flagged": False, **rest}


def rejected_of(c: int) -> int:
    """How many of a class's SAMPLED digits the fixture's filter rejected: 2 to 6."""
    return 2 + c // 2


def publish(
    root: str,
    version: str,
    created_at: str,
    seed: int = 0,
    model_sha256: str = "ab" * 32,
    model_path: str | None = None,
) -> PublishedVersion:
    """Publish SAMPLED rendered digits per class with scores: the unfiltered split (some rejected) and
    the first PER_CLASS accepted ones of each class as train, with a manifest like the flow's (which
    records the model folder's path when `model_path` is given)."""
    n = 10 * SAMPLED
    images, labels = render_digits(n, seed)
    rng = np.random.default_rng(seed)
    rank = np.arange(n) // 10  # the k-th digit of its class
    accepted = rank < SAMPLED - np.array([rejected_of(c) for c in labels])
    clip = np.where(accepted, rng.uniform(22, 32, n), rng.uniform(12, 21.9, n)).astype(np.float32)
    prob = np.where(accepted, rng.uniform(0.6, 1, n), rng.uniform(0, 0.9, n)).astype(np.float32)
    unfiltered = digits_table(
        [f"{version}-{i}" for i in range(n)], images, labels, "synthetic",
        sampler="ddim", steps=20, guidance=3.0, seed=seed, clip_score=clip, clip_margin=clip - 18,
        classifier_prob=prob, classifier_pred=labels, accepted=accepted,
    )  # fmt: skip
    keep = np.concatenate([np.flatnonzero(accepted & (labels == c))[:PER_CLASS] for c in range(10)])
    train = unfiltered.take(pa.array(keep))
    counts = {
        str(c): {
            "requested": PER_CLASS,
            "sampled": SAMPLED,
            "accepted": SAMPLED - rejected_of(c),
            "blocks": 2,  # as the flow's manifest counts them
            "acceptance_rate": (SAMPLED - rejected_of(c)) / SAMPLED,
        }
        for c in range(10)
    }
    manifest: dict[str, Any] = {
        "name": NAME,
        "version": version,
        "created_at": created_at,
        "run_id": f"run{seed}",
        "params": {
            "sampler": SAMPLER,
            "filter": {"min_clip_score": 22.0, "min_clip_margin": None, "min_classifier_prob": 0.5},
            "best_of_n": 2,
            "seed": seed,
            "per_class": {str(c): PER_CLASS for c in range(10)},
        },
        "counts": counts,
        "model": {
            "sha256": model_sha256,
            "git_revision": "1234abcd",
            **({"path": model_path} if model_path else {}),
        },
        "judges": {"classifier_sha256": "cd" * 32, "clip": "ef" * 32},
        "gate": {"memorization_rate": 0.002, "duplicate_rate": 0.0, "success_percent": 100.0},
        "git_revision": "5678ef90",
        "packages": {"torch": "2.14.1", "pyarrow": "26.0.1"},
    }
    docs = {"data_docs/index.html": b"<html><body>Data Docs</body></html>"}
    splits = {"train": train, "unfiltered": unfiltered}
    return publish_version(root, NAME, version, splits, 25, "# card\n", manifest, docs)


def document(version: PublishedVersion, issues: list[str]) -> dict[str, Any]:
    """An evaluation document as `diffusion.quality.grading` writes it, flagged on two metrics."""
    return {
        "name": NAME,
        "version": version.version,
        "path": version.path,
        "evaluated_at": "2026-11-26T03:10:00+00:00",
        "metrics": dict(METRIC_VALUES),
        "intervals": {
            "cas_ratio": [0.98, 1.0],
            "cas_accuracy": [0.95, 0.97],
            "real_baseline_accuracy": [0.96, 0.98],
            "augmentation_gain": [-0.2, 0.3],
        },
        "per_class": [
            {
                "class": c,
                "conditional_accuracy": 0.9 + c / 100,
                "frechet_distance": 2.0 + c,
                "diversity_synthetic": 5.0,
                "diversity_real": 5.1,
            }
            for c in range(10)
        ],
        "confusion": [
            {"actual": a, "predicted": p, "count": 18 if a == p else (2 if p == (a + 1) % 10 else 0)}
            for a in range(10)
            for p in range(10)
        ],
        "cas_runs": [
            {"seed": s, "cas_accuracy": 0.96, "real_baseline_accuracy": 0.97, "cas_ratio": 0.99, "epochs": 12}
            for s in (0, 1)
        ],
        "label_issues": issues,
        "monitor": {"floors": {"cas_ratio": 0.97, "recall": 0.5}, "ceilings": {"dcr_share": 0.6}},
        "flags": FLAGS,
        "flagged": True,
    }


def text_of(page: str, attribute: str, value: str) -> str:
    """The text of the one element whose `attribute` is `value` (the report's number cells are leaves)."""
    found = re.findall(rf'<\w+[^>]*\b{attribute}="{re.escape(value)}"[^>]*>([^<]*)<', page)
    assert len(found) == 1, f"{attribute}={value!r}: {len(found)} elements"
    return html.unescape(found[0])


def svg_data(page: str, chart_id: str) -> dict[str, Any]:
    """The data-* attributes (JSON) of one inline SVG chart."""
    head = re.search(rf'<svg id="{re.escape(chart_id)}"[^>]*>', page)
    assert head, f"no chart {chart_id}"
    found = {}
    for key, value in re.findall(r'data-([\w-]+)="([^"]*)"', head.group(0)):
        try:
            found[key] = json.loads(html.unescape(value))
        except ValueError:
            found[key] = html.unescape(value)
    return found


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight diffusion checkpoint folder (as tests/generate_fixtures.py writes it)."""
    root = tmp_path_factory.mktemp("model") / "diffusion"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = new_model(TINY_DIFFUSION, torch.device("cpu"))
    save_diffusion(root, TINY_DIFFUSION, unet.state_dict(), unet.state_dict(), {"steps": 0})
    return root


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, Any]:
    """Three local versions and their reports in `out`: v1 never evaluated, v2 with an old flat document,
    v3 (drawn by the tiny model) with a flagged evaluation document, its page written with the model."""
    root = str(tmp_path_factory.mktemp("published"))
    out = tmp_path_factory.mktemp("reports") / NAME
    sha = hashlib.sha256((model_dir / "ema.safetensors").read_bytes()).hexdigest()
    v1 = publish(root, "20261124-030000-aaaa", "2026-11-24T03:00:00+00:00", seed=1)
    v2 = publish(root, "20261125-030000-bbbb", "2026-11-25T03:00:00+00:00", seed=2)
    v3 = publish(root, "20261126-030000-cccc", "2026-11-26T03:00:00+00:00", seed=0, model_sha256=sha)
    (out / v2.version).mkdir(parents=True)  # as earlier code wrote it: `--evaluation` takes full ones only
    (out / v2.version / "evaluation.json").write_text(json.dumps({**OLD_FLAT, "version": v2.version}))
    build_reports(root, NAME, str(out), version=v2.path)  # writes every missing page
    train = read_table(version_files(v3, "train"), columns=["id", "label"])
    ids, labels = train.column("id").to_pylist(), train.column("label").to_pylist()
    issues = [ids[7], ids[30], ids[2], "not-a-row"]
    doc = document(v3, issues)
    index = build_reports(root, NAME, str(out), version=v3.path, evaluation=doc, model=str(model_dir))
    return {
        "root": root,
        "out": out,
        "index": index,
        "versions": (v1, v2, v3),
        "doc": doc,
        "issue_labels": {ids[i]: labels[i] for i in (7, 30, 2)},
    }


def page_of(site: dict[str, Any], i: int) -> str:
    return (site["out"] / site["versions"][i].version / "index.html").read_text()
