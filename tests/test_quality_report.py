"""The data-quality report: real published versions (rendered digits, real Parquet, real manifest) in,
a self-contained HTML page with its PNG grids out, read back by id and rendered in headless Chromium."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from diffusion.data.schema import digits_table
from diffusion.data.shards import PublishedVersion, list_versions, publish_version
from diffusion.errors import DataError
from diffusion.quality.report import HEADLINE_KEYS, build_reports, report_dir, write_index, write_report
from tests.judges_fixtures import render_digits

NAME = "tiny-digits"
PER_CLASS, SAMPLED = 6, 20
EVALUATION = {
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
}


def rejected_of(c: int) -> int:
    """How many of a class's SAMPLED digits the fixture's filter rejected: 2 to 6."""
    return 2 + c // 2


def publish(root: str, version: str, created_at: str, seed: int = 0) -> PublishedVersion:
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
            "batches": 2,
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
            "sampler": {"name": "ddim", "steps": 20, "guidance": 3.0, "eta": 0.0},
            "filter": {"min_clip_score": 22.0, "min_clip_margin": None, "min_classifier_prob": 0.5},
            "best_of_n": 2,
            "seed": seed,
            "per_class": {str(c): PER_CLASS for c in range(10)},
        },
        "counts": counts,
        "model": {"sha256": "ab" * 32, "git_revision": "1234abcd"},
        "judges": {"classifier_sha256": "cd" * 32, "clip": "ef" * 32},
        "gate": {"memorization_rate": 0.002, "duplicate_rate": 0.0, "success_percent": 100.0},
        "git_revision": "5678ef90",
        "packages": {"torch": "2.14.1", "pyarrow": "26.0.1"},
    }
    docs = {"data_docs/index.html": b"<html><body>Data Docs</body></html>"}
    splits = {"train": train, "unfiltered": unfiltered}
    return publish_version(root, NAME, version, splits, 25, "# card\n", manifest, docs)


def text_of(page: str, attribute: str, value: str) -> str:
    """The text of the one element whose `attribute` is `value` (the report's number cells are leaves)."""
    found = re.findall(rf'<\w+[^>]*\b{attribute}="{re.escape(value)}"[^>]*>([^<]*)<', page)
    assert len(found) == 1, f"{attribute}={value!r}: {len(found)} elements"
    return html.unescape(found[0])


def counts_in(page: str, chart_id: str, series: str) -> int:
    """The sum of data-count over one series' bars of one SVG histogram."""
    svg = re.search(rf'<svg id="{chart_id}".*?</svg>', page, re.S).group(0)
    return sum(map(int, re.findall(rf'data-series="{series}" data-bin="\d+" data-count="(\d+)"', svg)))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, PublishedVersion, PublishedVersion]:
    """Two local versions: an older one that stays unevaluated, and the evaluated newer one."""
    root = str(tmp_path_factory.mktemp("published"))
    old = publish(root, "20261125-030000-aaaa", "2026-11-25T03:00:00+00:00", seed=1)
    new = publish(root, "20261126-030000-bbbb", "2026-11-26T03:00:00+00:00", seed=0)
    return root, old, new


@pytest.fixture(scope="module")
def reports(published, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reports of both versions and their index, in `<reports>/<name>/`."""
    _, old, new = published
    out = tmp_path_factory.mktemp("reports")
    write_report(old, None, report_dir(out, NAME, old.version))
    write_report(new, EVALUATION, report_dir(out, NAME, new.version))
    write_index([new, old], {new.version: EVALUATION}, out, NAME)
    return out


def test_report_shows_every_number_by_id(published, reports: Path) -> None:
    _, _, new = published
    page = (report_dir(reports, NAME, new.version) / "index.html").read_text()
    for key in HEADLINE_KEYS:
        assert float(text_of(page, "id", key)) == pytest.approx(EVALUATION[key], abs=5e-4), key
    assert text_of(page, "data-metric", "cas_ratio") == "0.991"
    assert text_of(page, "data-metric", "conditional_accuracy_published") == "0.973"
    assert text_of(page, "id", "gate_memorization_rate") == "0.002"
    assert text_of(page, "id", "gate_duplicate_rate") == "0.000"
    for c in range(10):
        assert text_of(page, "id", f"accepted-{c}") == str(SAMPLED - rejected_of(c))
        assert float(text_of(page, "id", f"acceptance_rate-{c}")) == (SAMPLED - rejected_of(c)) / SAMPLED
        assert counts_in(page, f"hist-clip-{c}", "rejected") == rejected_of(c)
        assert counts_in(page, f"hist-clip-{c}", "accepted") == SAMPLED - rejected_of(c)
    assert text_of(page, "id", "total_sampled") == str(10 * SAMPLED)
    assert (
        counts_in(page, "hist-classifier-prob", "accepted")
        + counts_in(page, "hist-classifier-prob", "rejected")
        == 10 * SAMPLED
    )
    assert 'data-threshold="22.0"' in page  # the CLIP filter threshold is marked
    params = {"param_sampler": "ddim", "param_guidance": "3.0", "param_best_of_n": "2", "param_seed": "0"}
    assert {k: text_of(page, "id", k) for k in params} == params
    assert text_of(page, "id", "param_filter_min_clip_score") == "22.0"
    assert text_of(page, "id", "model_sha256") == "ab" * 32
    assert text_of(page, "id", "model_git_revision") == "1234abcd"
    assert text_of(page, "id", "run_id") == "run0"
    assert text_of(page, "id", "created_at") == "2026-11-26T03:00:00+00:00"
    assert text_of(page, "data-package", "torch") == "2.14.1"
    assert "<script" not in page and "http" not in page  # self-contained: no code, no external resource


def test_report_grids_are_pngs_beside_the_page_and_links_are_relative(published, reports: Path) -> None:
    root, _, new = published
    out = report_dir(reports, NAME, new.version)
    page = (out / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 30  # best, worst and rejected of ten classes
    for src in sources:
        assert "/" not in src
        with Image.open(out / src) as img:
            assert img.format == "PNG" and img.mode == "L"
    with Image.open(out / "class-3-best.png") as img:  # 6 digits, 4 a row, 30 px a cell, scaled 2x
        assert img.size == ((4 * 30 + 2) * 2, (2 * 30 + 2) * 2)
    grids = dict(re.findall(r'data-grid="([^"]+)" data-count="(\d+)"', page))
    assert [int(grids[f"rejected-{c}"]) for c in range(10)] == [rejected_of(c) for c in range(10)]
    assert (
        {grids[f"best-{c}"] for c in range(10)}
        == {grids[f"worst-{c}"] for c in range(10)}
        == {str(PER_CLASS)}
    )
    for link_id, rel in [("data-docs", "data_docs/index.html"), ("dataset-card", "README.md")]:
        href = re.search(rf'id="{link_id}" href="([^"]+)"', page).group(1)
        assert not Path(href).is_absolute() and (out / href).resolve() == (Path(new.path) / rel).resolve()
    assert not list(out.rglob("*.parquet")) and not (out / "data_docs").exists()  # nothing large copied
    assert (out / "evaluation.json").exists()


def test_an_unevaluated_version_says_so(published, reports: Path) -> None:
    _, old, _ = published
    page = (report_dir(reports, NAME, old.version) / "index.html").read_text()
    assert text_of(page, "id", "evaluation-status").startswith("not evaluated")
    assert {text_of(page, "id", k) for k in HEADLINE_KEYS} == {"not evaluated"}
    assert text_of(page, "data-metric", "cas_ratio") == "not evaluated"
    assert text_of(page, "id", "gate_memorization_rate") == "0.002"  # the gate always ran
    assert not (report_dir(reports, NAME, old.version) / "evaluation.json").exists()


def test_index_lists_versions_oldest_first_with_their_numbers(published, reports: Path) -> None:
    _, old, new = published
    page = (reports / NAME / "index.html").read_text()
    assert re.findall(r'<tr data-version="([^"]+)"', page) == [old.version, new.version]
    for v in (old, new):
        assert (reports / NAME / f"{v.version}/index.html").exists()
        assert f'href="{v.version}/index.html"' in page
    cells = {
        f: [html.unescape(x) for x in re.findall(rf'data-field="{f}"[^>]*>([^<]*)<', page)]
        for f in ["created_at", "published", "acceptance_rate", "cas_ratio", "conditional_accuracy"]
    }
    assert cells["created_at"] == ["2026-11-25T03:00:00+00:00", "2026-11-26T03:00:00+00:00"]
    assert cells["published"] == [str(10 * PER_CLASS)] * 2
    assert cells["acceptance_rate"] == ["0.800"] * 2  # 160 of 200 passed the filter
    assert cells["cas_ratio"] == ["not evaluated", "0.991"]
    assert cells["conditional_accuracy"] == ["not evaluated", "0.973"]
    assert page.count("<circle") == 2 * 2 + 2 * 1  # trend points: rates for both, evaluations for one


def test_a_version_behind_an_fsspec_url_links_to_its_url(tmp_path: Path) -> None:
    version = publish(f"memory://reports-{tmp_path.name}", "v1", "2026-11-26T03:00:00+00:00")
    page = write_report(version, {"cas_ratio": 0.5}, tmp_path / "r").read_text()
    assert f'href="{version.path}/data_docs/index.html"' in page and version.path.startswith("memory://")
    assert text_of(page, "id", "cas_ratio") == "0.500"
    assert text_of(page, "id", "frechet_distance") == "not evaluated"  # a partial evaluation
    assert len(list((tmp_path / "r").glob("class-*.png"))) == 30
    assert (tmp_path / "r" / "evaluation.json").exists()
    write_report(version, None, tmp_path / "r")  # written again unevaluated: no stale evaluation is kept
    assert not (tmp_path / "r" / "evaluation.json").exists()


def test_build_reports_keeps_each_versions_evaluation_across_runs(tmp_path: Path) -> None:
    root, out = str(tmp_path / "published"), tmp_path / "reports"
    first = publish(root, "v1", "2026-11-25T03:00:00+00:00")
    build_reports(root, NAME, {**EVALUATION, "cas_ratio": 0.9}, out, first.path)  # the version handed on
    newer = publish(root, "v2", "2026-11-26T03:00:00+00:00", seed=2)
    build_reports(root, NAME, None, out)  # v2 reported, not evaluated; v1 left as it was
    page = (out / NAME / "index.html").read_text()
    assert re.findall(r'data-field="cas_ratio"[^>]*>([^<]*)<', page) == ["0.900", "not evaluated"]
    index = build_reports(root, NAME, {**EVALUATION, "version": "v2"}, out)
    assert re.findall(r'data-field="cas_ratio"[^>]*>([^<]*)<', index.read_text()) == ["0.900", "0.991"]
    assert [v.version for v in list_versions(root, NAME)] == ["v1", "v2"] and first.version == "v1"
    with pytest.raises(DataError, match="version v9 is not published"):
        build_reports(root, NAME, {"version": "v9"}, out)
    with pytest.raises(DataError, match="the evaluation is of version v2, not of v1"):
        build_reports(root, NAME, {**EVALUATION, "version": "v2"}, out, first.path)
    with pytest.raises(DataError, match="names no version"):
        build_reports(root, NAME, dict(EVALUATION), out)  # never "the newest folder"
    assert newer.version == "v2"
    with pytest.raises(DataError, match="no published versions"):
        build_reports(str(tmp_path / "empty"), NAME, None, out)


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


def test_the_pages_render_in_chromium(published, reports: Path, tmp_path: Path) -> None:
    _, _, new = published
    driver = _chromium()
    from selenium.webdriver.common.by import By  # selenium is there once _chromium() did not skip

    try:
        driver.get((reports / NAME / "index.html").as_uri())
        driver.find_element(By.LINK_TEXT, new.version).click()  # the index links to the report
        assert driver.current_url == (report_dir(reports, NAME, new.version) / "index.html").as_uri()
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"
        )
        assert len(images) == 30 and all(width > 0 for _, width in images), images
        shown = {
            "cas_ratio": "0.991",
            "conditional_accuracy_published": "0.973",
            "gate_memorization_rate": "0.002",
            "total_accepted": str(sum(SAMPLED - rejected_of(c) for c in range(10))),
        }
        for key, text in shown.items():
            element = driver.find_element(By.ID, key)
            assert element.is_displayed() and element.text == text, key
        card = driver.find_element(By.CSS_SELECTOR, '[data-metric="cas_ratio"]')
        assert card.is_displayed() and card.text == "0.991"
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, height)
        assert driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
