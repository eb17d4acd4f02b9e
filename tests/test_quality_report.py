"""The data-quality report: real published versions (rendered digits, real Parquet, real manifest) and
evaluation documents in, pages rendered from the templates with their PNGs and inline SVG charts out, read
back by id and rendered in headless Chromium."""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from diffusion.data.datasets import read_table
from diffusion.data.schema import digits_table
from diffusion.data.shards import PublishedVersion, list_versions, publish_version, version_files
from diffusion.errors import DataError
from diffusion.model.saved import new_model, save_diffusion
from diffusion.quality.headline import METRICS
from diffusion.quality.report import EVALUATION_ROWS, build_reports, load_model, write_page
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
    "memorization_rate": 0.001,
    "duplicate_rate": 0.0,
    "precision": 0.8,
    "recall": None,  # NaN in the grading, null in JSON
    "density": 0.9,
    "coverage": 0.9,
    "coverage_ratio": 0.95,
    "dcr_share": 0.65,
    "label_issue_rate": 0.02,
}
FLAGS = [
    {"metric": "recall", "value": None, "bound": 0.5, "kind": "floor"},
    {"metric": "dcr_share", "value": 0.65, "bound": 0.6, "kind": "ceiling"},
]
OLD_FLAT = {"cas_ratio": 0.9, "conditional_accuracy_published": 0.95, "frechet_distance": 20.0}


def rejected_of(c: int) -> int:
    """How many of a class's SAMPLED digits the fixture's filter rejected: 2 to 6."""
    return 2 + c // 2


def publish(
    root: str, version: str, created_at: str, seed: int = 0, model_sha256: str = "ab" * 32
) -> PublishedVersion:
    """Publish SAMPLED rendered digits per class with scores: the unfiltered split (some rejected) and
    the first PER_CLASS accepted ones of each class as train, with a manifest like the flow's."""
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
        "model": {"sha256": model_sha256, "git_revision": "1234abcd"},
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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight diffusion checkpoint folder (as tests/generate_fixtures.py writes it)."""
    root = tmp_path_factory.mktemp("model") / "diffusion"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = new_model(TINY_DIFFUSION, torch.device("cpu"))
    save_diffusion(root, TINY_DIFFUSION, unet.state_dict(), unet.state_dict(), {"steps": 0})
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, Any]:
    """Three local versions and their reports in `out`: v1 never evaluated, v2 with an old flat document,
    v3 (drawn by the tiny model) with a flagged evaluation document, its page written with the model."""
    root = str(tmp_path_factory.mktemp("published"))
    out = tmp_path_factory.mktemp("reports") / NAME
    sha = hashlib.sha256((model_dir / "ema.safetensors").read_bytes()).hexdigest()
    v1 = publish(root, "20261124-030000-aaaa", "2026-11-24T03:00:00+00:00", seed=1)
    v2 = publish(root, "20261125-030000-bbbb", "2026-11-25T03:00:00+00:00", seed=2)
    v3 = publish(root, "20261126-030000-cccc", "2026-11-26T03:00:00+00:00", seed=0, model_sha256=sha)
    build_reports(root, NAME, str(out), version=v2.path, evaluation=OLD_FLAT)  # writes every missing page
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


def test_version_page_shows_every_number_by_id(site) -> None:
    page = page_of(site, 2)
    for key, value in METRIC_VALUES.items():
        shown = text_of(page, "id", key)
        if value is None:
            assert shown == "n/a", key  # measured as NaN: not "not evaluated"
        else:
            assert float(shown) == pytest.approx(value, abs=5e-4), key
    assert {key for _, key, _, _ in EVALUATION_ROWS} | set(METRICS) <= set(re.findall(r'id="([\w]+)"', page))
    assert text_of(page, "data-metric", "cas_ratio") == "0.991"
    assert text_of(page, "data-metric", "conditional_accuracy_published") == "0.973"
    assert text_of(page, "id", "gate_memorization_rate") == "0.002"
    assert text_of(page, "id", "gate_duplicate_rate") == "0.000"
    assert re.search(r'id="cas_ratio-interval" data-lo="0.98" data-hi="1.0"', page)
    assert re.search(r'id="real_baseline_accuracy-interval" data-lo="0.96" data-hi="0.98"', page)
    assert text_of(page, "id", "cas_ratio-bound") == "0.97" and 'data-kind="floor"' in page
    assert text_of(page, "id", "evaluated_at") == "2026-11-26T03:10:00+00:00"
    for c in range(10):
        assert text_of(page, "id", f"accepted-{c}") == str(SAMPLED - rejected_of(c))
        assert float(text_of(page, "id", f"acceptance_rate-{c}")) == (SAMPLED - rejected_of(c)) / SAMPLED
        assert float(text_of(page, "id", f"class-{c}-conditional_accuracy")) == pytest.approx(0.9 + c / 100)
    assert text_of(page, "id", "total_sampled") == str(10 * SAMPLED)
    assert text_of(page, "id", "total_blocks") == "20" and "total_batches" not in page
    clip = svg_data(page, "hist-clip")
    for c in range(10):
        assert sum(clip["counts"][str(c)]["rejected"]) == rejected_of(c)
        assert sum(clip["counts"][str(c)]["accepted"]) == SAMPLED - rejected_of(c)
    assert clip["threshold"] == 22.0  # the CLIP filter threshold is drawn
    prob = svg_data(page, "hist-classifier-prob")["counts"]["all classes"]
    assert sum(prob["accepted"]) + sum(prob["rejected"]) == 10 * SAMPLED
    bars = svg_data(page, "acceptance-bars")
    assert bars["values"]["acceptance rate"] == [(SAMPLED - rejected_of(c)) / SAMPLED for c in range(10)]
    assert svg_data(page, "per-class-diversity_synthetic")["values"]["real"] == [5.1] * 10
    assert re.search(r'data-actual="3" data-predicted="4" data-value="2"', page)
    assert len(re.findall(r'data-field="cas_ratio"', page)) == 2  # one cell per CAS seed
    params = {"param_sampler": "ddim", "param_guidance": "3.0", "param_best_of_n": "2", "param_seed": "0"}
    assert {k: text_of(page, "id", k) for k in params} == params
    assert text_of(page, "id", "param_filter_min_clip_score") == "22.0"
    assert text_of(page, "id", "model_git_revision") == "1234abcd"
    assert text_of(page, "id", "run_id") == "run0"
    assert text_of(page, "id", "created_at") == "2026-11-26T03:00:00+00:00"
    assert text_of(page, "data-package", "torch") == "2.14.1"
    # self-contained: no code, nothing fetched from elsewhere
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)


def test_a_flagged_version_names_each_flag_in_a_banner(site) -> None:
    page = page_of(site, 2)
    banner = re.search(r'<div class="banner" id="flags".*?</div>', page, re.S).group(0)
    assert re.findall(r'data-flag="([^"]+)" data-kind="([^"]+)"', banner) == [
        ("recall", "floor"),
        ("dcr_share", "ceiling"),
    ]
    assert text_of(banner, "data-flag-value", "recall") == "not measured"
    assert text_of(banner, "data-flag-bound", "recall") == "0.5"
    assert text_of(banner, "data-flag-value", "dcr_share") == "0.6500"
    assert text_of(banner, "data-flag-bound", "dcr_share") == "0.6"
    assert "above its ceiling" in banner and "below its floor" in banner
    assert re.search(r'<tr data-metric-row="dcr_share" class="flagged">', page)
    for i in (0, 1):  # neither the unevaluated nor the old flat document is flagged
        assert 'id="flags"' not in page_of(site, i)


def test_label_issues_show_their_digits_with_their_labels(site) -> None:
    out, v3 = site["out"], site["versions"][2]
    page = page_of(site, 2)
    assert text_of(page, "id", "label-issue-count") == "4"
    assert text_of(page, "id", "label-issues-not-found") == "1"
    shown = re.findall(r'<figure data-row-id="([^"]+)" data-label="(\d)"><img src="([^"]+)"', page)
    assert [(i, int(label)) for i, label, _ in shown] == list(site["issue_labels"].items())  # doc order
    train = read_table(version_files(v3, "train"), columns=["id", "image"]).to_pylist()
    png = {row["id"]: row["image"]["bytes"] for row in train}
    for row_id, _, src in shown:
        with Image.open(out / v3.version / src) as img:
            assert img.mode == "L" and img.size == (64, 64)  # 28 px, padded by 2, scaled 2x
            with Image.open(io.BytesIO(png[row_id])) as digit:
                assert np.array_equal(np.asarray(img)[4:60:2, 4:60:2], np.asarray(digit))


def test_the_trajectory_grid_is_the_versions_sampler_from_its_seed(
    site, model_dir: Path, tmp_path: Path
) -> None:
    from diffusion.config import SamplerConfig
    from diffusion.model.saved import load_diffusion
    from diffusion.quality.trajectory import draw_trajectory, trajectory_grid

    out, v3 = site["out"], site["versions"][2]
    page = page_of(site, 2)
    figure = re.search(r'<figure id="trajectory"[^>]*>', page).group(0)
    assert 'data-sampler="ddim"' in figure and 'data-seed="0"' in figure and 'data-total="10"' in figure
    assert 'data-steps="[0, 2, 4, 7, 9]"' in html.unescape(figure)
    with Image.open(out / v3.version / "trajectory.png") as img:
        pixels = np.asarray(img)
    assert img.size == ((10 * 30 + 2) * 2, (10 * 30 + 2) * 2)  # 5 steps x (x_t, x0); 10 classes
    model, process = load_diffusion(model_dir)
    again = trajectory_grid(draw_trajectory(model, process, SamplerConfig(**SAMPLER), seed=0))
    assert np.array_equal(pixels[::2, ::2], again)  # the same seed draws the same pixels
    for i in (0, 1):  # written without a model
        assert text_of(page_of(site, i), "id", "trajectory-status").startswith("not drawn: the report was")
    other = write_page(site["versions"][0], None, tmp_path, load_model(str(model_dir))).read_text()
    assert text_of(other, "id", "trajectory-status").startswith("not drawn: the model given (sha256 ")
    assert not (tmp_path / "trajectory.png").exists()  # another model drew that version


def test_grids_are_pngs_beside_the_page_and_links_are_relative(site) -> None:
    out, v3 = site["out"], site["versions"][2]
    page = page_of(site, 2)
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 30 + 1 + 3  # grids of ten classes, the trajectory, three label issues
    for src in sources:
        with Image.open(out / v3.version / src) as img:
            assert img.format == "PNG" and img.mode == "L"
    with Image.open(out / v3.version / "class-3-best.png") as img:  # 6 digits, 4 a row, 30 px a cell, 2x
        assert img.size == ((4 * 30 + 2) * 2, (2 * 30 + 2) * 2)
    grids = dict(re.findall(r'data-grid="([^"]+)" data-count="(\d+)"', page))
    assert [int(grids[f"rejected-{c}"]) for c in range(10)] == [rejected_of(c) for c in range(10)]
    assert {grids[f"best-{c}"] for c in range(10)} == {grids[f"worst-{c}"] for c in range(10)} == {"6"}
    for link_id, rel in [("data-docs", "data_docs/index.html"), ("dataset-card", "README.md")]:
        href = re.search(rf'id="{link_id}" href="([^"]+)"', page).group(1)
        target = (out / v3.version / href).resolve()
        assert not Path(href).is_absolute() and target == (Path(v3.path) / rel).resolve()
    assert not list(out.rglob("*.parquet")) and not list(out.rglob("data_docs"))  # nothing large copied
    assert json.loads((out / v3.version / "evaluation.json").read_text())["flagged"] is True


def test_an_unevaluated_version_says_so_and_an_old_flat_document_still_reads(site) -> None:
    page = page_of(site, 0)
    assert text_of(page, "id", "evaluation-status").startswith("not evaluated")
    assert {text_of(page, "id", k) for k in METRICS} == {"not evaluated"}
    assert text_of(page, "data-metric", "cas_ratio") == "not evaluated"
    assert text_of(page, "id", "gate_memorization_rate") == "0.002"  # the gate always ran
    assert text_of(page, "id", "label-issue-status") == "not evaluated"
    assert not (site["out"] / site["versions"][0].version / "evaluation.json").exists()
    old = page_of(site, 1)
    assert text_of(old, "id", "cas_ratio") == "0.900" and text_of(old, "id", "recall") == "not evaluated"
    assert text_of(old, "data-metric", "conditional_accuracy_published") == "0.950"


def test_index_lists_versions_with_flags_and_a_drift_chart_per_metric(site) -> None:
    v1, v2, v3 = site["versions"]
    page = Path(site["index"]).read_text()
    assert site["index"] == str(site["out"] / "index.html")
    assert re.findall(r'<tr data-version="([^"]+)"', page) == [v1.version, v2.version, v3.version]
    for v in (v1, v2, v3):
        assert f'href="{v.version}/index.html"' in page
    cells = {
        f: [html.unescape(x) for x in re.findall(rf'data-field="{f}"[^>]*>([^<]*)<', page)]
        for f in ["created_at", "published", "acceptance_rate", "cas_ratio", "dcr_share", "flagged"]
    }
    assert cells["published"] == [str(10 * PER_CLASS)] * 3
    assert cells["acceptance_rate"] == ["0.800"] * 3  # 160 of 200 passed the filter
    assert cells["cas_ratio"] == ["not evaluated", "0.900", "0.991"]
    assert cells["dcr_share"] == ["not evaluated", "not evaluated", "0.650"]
    assert cells["flagged"][0] == "not evaluated" and cells["flagged"][1] == "ok"
    assert cells["flagged"][2].endswith("flagged: recall, dcr_share")
    assert re.search(rf'<tr data-version="{v3.version}" data-flagged="true" class="flagged">', page)
    assert text_of(page, "id", "flagged-count") == "1"
    held = [k for k in METRICS if METRIC_VALUES.get(k) is not None or k in OLD_FLAT]
    assert re.findall(r'<svg id="trend-([\w]+)"', page) == ["acceptance_rate", *held]
    dcr = svg_data(page, "trend-dcr_share")
    assert dcr["values"] == [None, None, 0.65] and dcr["flagged"] == [False, False, True]
    assert dcr["bound"] == 0.6 and dcr["kind"] == "ceiling"
    cas = svg_data(page, "trend-cas_ratio")
    assert cas["values"] == [None, 0.9, 0.991] and cas["bound"] == 0.97 and not any(cas["flagged"])
    assert "<script" not in page


def test_build_reports_keeps_documents_across_runs_and_checks_versions(tmp_path: Path) -> None:
    root, out = str(tmp_path / "published"), str(tmp_path / "reports")
    first = publish(root, "v1", "2026-11-25T03:00:00+00:00")
    build_reports(root, NAME, out, version=first.path, evaluation={**OLD_FLAT, "cas_ratio": 0.8})
    publish(root, "v2", "2026-11-26T03:00:00+00:00", seed=2)
    index = build_reports(root, NAME, out)  # every page again; v1's document read back from `out`
    assert re.findall(r'data-field="cas_ratio"[^>]*>([^<]*)<', Path(index).read_text()) == [
        "0.800",
        "not evaluated",
    ]
    assert text_of((tmp_path / "reports/v2/index.html").read_text(), "id", "trajectory-status").startswith(
        "not drawn: the report was built without"
    )
    index = build_reports(root, NAME, out, evaluation={**OLD_FLAT, "version": "v2"})
    assert re.findall(r'data-field="cas_ratio"[^>]*>([^<]*)<', Path(index).read_text()) == ["0.800", "0.900"]
    assert [v.version for v in list_versions(root, NAME)] == ["v1", "v2"]
    with pytest.raises(DataError, match="version v9 is not published"):
        build_reports(root, NAME, out, evaluation={"version": "v9"})
    with pytest.raises(DataError, match="the evaluation is of version v2, not of v1"):
        build_reports(root, NAME, out, version=first.path, evaluation={**OLD_FLAT, "version": "v2"})
    with pytest.raises(DataError, match="names no version"):
        build_reports(root, NAME, out, evaluation=dict(OLD_FLAT))  # never "the newest folder"
    with pytest.raises(DataError, match="no published versions"):
        build_reports(str(tmp_path / "empty"), NAME, out)


def test_versions_and_reports_behind_fsspec_urls(tmp_path: Path) -> None:
    root, out = f"memory://versions-{tmp_path.name}", f"memory://reports-{tmp_path.name}/{NAME}/_quality"
    version = publish(root, "v1", "2026-11-26T03:00:00+00:00")
    index = build_reports(root, NAME, out, version=version.path, evaluation={**OLD_FLAT, "cas_ratio": 0.5})
    assert index == f"{out}/index.html"
    assert [v.version for v in list_versions(root, NAME)] == ["v1"]  # _quality is no version
    fs = fsspec.filesystem("memory")
    page = fs.cat_file(f"{out}/v1/index.html").decode()
    assert f'href="{version.path}/data_docs/index.html"' in page and version.path.startswith("memory://")
    assert text_of(page, "id", "cas_ratio") == "0.500"
    assert text_of(page, "id", "coverage") == "not evaluated"  # a partial evaluation
    assert len(fs.glob(f"{out}/v1/class-*.png")) == 30
    assert json.loads(fs.cat_file(f"{out}/v1/evaluation.json"))["cas_ratio"] == 0.5
    again = build_reports(root, NAME, out)  # the document is read back through fsspec
    assert re.findall(r'data-field="cas_ratio"[^>]*>([^<]*)<', fs.cat_file(again).decode()) == ["0.500"]


def _chromium():
    """Headless Chromium through Selenium (Debian's chromium and chromium-driver), or a skip saying why."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    browser, driver = (
        shutil.which("chromium") or shutil.which("chromium-browser"),
        shutil.which("chromedriver"),
    )
    if not browser or not driver:
        pytest.skip("chromium or chromedriver not on PATH (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ]:
        options.add_argument(arg)
    # the driver's path given, Selenium Manager (which would download drivers) is never started
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


CHARTS = "return Array.from(document.querySelectorAll('svg.chart')).map(s => [s.id, s.getBoundingClientRect().width])"
IMAGES = "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"


def test_the_pages_render_in_chromium(site, tmp_path: Path) -> None:
    v3 = site["versions"][2]
    driver = _chromium()
    from selenium.webdriver.common.by import By  # selenium is there once _chromium() did not skip

    try:
        driver.get(Path(site["index"]).as_uri())
        charts = driver.execute_script(CHARTS)
        held = [k for k in METRICS if METRIC_VALUES.get(k) is not None or k in OLD_FLAT]
        assert len(charts) == 1 + len(held) and all(width > 50 for _, width in charts), charts
        marker = driver.find_element(
            By.CSS_SELECTOR, f'tr[data-version="{v3.version}"] td[data-field="flagged"]'
        )
        assert marker.is_displayed() and "flagged" in marker.text
        cell = driver.find_element(
            By.CSS_SELECTOR, f'td[data-version="{v3.version}"][data-field="cas_ratio"]'
        )
        assert cell.is_displayed() and cell.text == "0.991"
        assert driver.find_element(By.ID, "flagged-count").text == "1"

        driver.find_element(By.LINK_TEXT, v3.version).click()  # the index links to the page
        assert driver.current_url == (site["out"] / v3.version / "index.html").as_uri()
        images = driver.execute_script(IMAGES)
        assert len(images) == 34 and all(width > 0 for _, width in images), images
        assert {"trajectory.png", "label-issues/0.png"} <= {src for src, _ in images}
        charts = driver.execute_script(CHARTS)
        assert {"hist-clip", "hist-classifier-prob", "acceptance-bars"} <= {i for i, _ in charts}
        assert all(width > 50 for _, width in charts), charts
        shown = {
            "cas_ratio": "0.991",
            "conditional_accuracy_published": "0.973",
            "gate_memorization_rate": "0.002",
            "total_accepted": str(sum(SAMPLED - rejected_of(c) for c in range(10))),
            "label-issue-count": "4",
        }
        for key, text in shown.items():
            element = driver.find_element(By.ID, key)
            assert element.is_displayed() and element.text == text, key
        banner = driver.find_element(By.ID, "flags")
        assert banner.is_displayed() and "dcr_share" in banner.text and "0.6500" in banner.text
        card = driver.find_element(By.CSS_SELECTOR, '[data-metric="cas_ratio"]')
        assert card.is_displayed() and card.text == "0.991"
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, height)
        assert driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
