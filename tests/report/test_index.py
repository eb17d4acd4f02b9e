"""The data-quality report's index across versions, reports kept across runs and behind fsspec URLs, and
every page rendered in headless Chromium (the versions and documents of tests/report/fixtures.py)."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import fsspec
import pytest

from diffusion.data.shards import list_versions
from diffusion.errors import DataError
from diffusion.quality.headline import METRICS
from diffusion.quality.report import build_reports
from tests.report.fixtures import (
    METRIC_VALUES,
    NAME,
    OLD_FLAT,
    PER_CLASS,
    SAMPLED,
    graded,
    publish,
    rejected_of,
    svg_data,
    text_of,
)


def test_index_lists_versions_with_flags_and_a_drift_chart_per_metric(site) -> None:
    v1, v2, v3 = site["versions"]
    page = Path(site["index"]).read_text()
    assert site["index"] == str(site["out"] / "index.html")
    assert re.findall(r'<tr data-version="([^"]+)"', page) == [v1.version, v2.version, v3.version]
    for v in (v1, v2, v3):
        assert f'href="{v.version}/index.html"' in page
    cells = {
        f: [html.unescape(x) for x in re.findall(rf'data-field="{f}"[^>]*>([^<]*)<', page)]
        for f in [
            "created_at",
            "published",
            "acceptance_rate",
            "cas_ratio",
            "dcr_share",
            "flagged",
            "memorization_rate",
        ]
    }
    assert text_of(page, "id", "version-count").startswith("3 versions, oldest first")
    assert cells["memorization_rate"] == ["0.002"] * 3  # the gate's, in every manifest, shown once
    assert "gate_memorization_rate" not in page
    assert cells["published"] == [str(10 * PER_CLASS)] * 3
    assert cells["acceptance_rate"] == ["0.800"] * 3  # 160 of 200 passed the filter
    assert cells["cas_ratio"] == ["not evaluated", "0.900", "0.991"]
    assert cells["dcr_share"] == ["not evaluated", "not evaluated", "0.650"]
    assert cells["flagged"][0] == "not evaluated" and cells["flagged"][1] == "ok"
    assert cells["flagged"][2].endswith("flagged: recall, dcr_share")
    assert re.search(rf'<tr data-version="{v3.version}" data-flagged="true" class="flagged">', page)
    assert text_of(page, "id", "flagged-count") == "1" and text_of(page, "id", "graded-count") == "2"
    held = [k for k in METRICS if METRIC_VALUES.get(k) is not None or k in OLD_FLAT]
    assert re.findall(r'<svg id="trend-([\w]+)"', page) == ["acceptance_rate", *held]
    dcr = svg_data(page, "trend-dcr_share")
    assert dcr["values"] == [None, None, 0.65] and dcr["flagged"] == [False, False, True]
    assert dcr["bound"] == 0.6 and dcr["kind"] == "ceiling"
    titles = dict(re.findall(r'<svg id="trend-(\w+)"[^>]*aria-label="([^"]*)"', page))
    assert titles["dcr_share"] == "DCR share, 0.5 = no memorisation"  # not "lower is better": 0.5 is
    assert titles["cas_ratio"] == "CAS ratio, higher is better"
    cas = svg_data(page, "trend-cas_ratio")
    assert cas["values"] == [None, 0.9, 0.991] and cas["bound"] == 0.97 and not any(cas["flagged"])
    assert cas["bounds"] == [None, None, 0.97]  # each version's own: the old flat document had none
    assert "<script" not in page


def test_a_version_flagged_under_an_earlier_floor_keeps_that_floor_on_its_chart(tmp_path: Path) -> None:
    root, out = str(tmp_path / "published"), str(tmp_path / "reports")
    flag = {"metric": "cas_ratio", "value": 0.98, "bound": 0.99, "kind": "floor"}
    strict = {"monitor": {"floors": {"cas_ratio": 0.99}}, "flags": [flag], "flagged": True}
    eased = {"monitor": {"floors": {"cas_ratio": 0.95}}}
    for i, (version, monitor) in enumerate([("v1", strict), ("v2", eased)]):
        publish(root, version, f"2026-11-2{i + 5}T03:00:00+00:00", seed=i)
        build_reports(root, NAME, out, evaluation=graded({"cas_ratio": 0.98}, version=version, **monitor))
    cas = svg_data(Path(out, "index.html").read_text(), "trend-cas_ratio")
    assert cas["bounds"] == [0.99, 0.95] and cas["bound"] == 0.95 and cas["flagged"] == [True, False]
    within = text_of(Path(out, "v2", "index.html").read_text(), "id", "monitor-verdict")
    assert within == "within every bound of the drift monitor (1 checked)"
    assert 'id="monitor-verdict"' not in Path(out, "v1", "index.html").read_text()  # flagged: the banner says


def test_build_reports_keeps_documents_across_runs_and_checks_versions(tmp_path: Path) -> None:
    root, out = str(tmp_path / "published"), str(tmp_path / "reports")
    first = publish(root, "v1", "2026-11-25T03:00:00+00:00")
    build_reports(root, NAME, out, version=first.path, evaluation=graded({**OLD_FLAT, "cas_ratio": 0.8}))
    publish(root, "v2", "2026-11-26T03:00:00+00:00", seed=2)
    index = build_reports(root, NAME, out)  # every page again; v1's document read back from `out`
    assert re.findall(r'data-field="cas_ratio"[^>]*>([^<]*)<', Path(index).read_text()) == [
        "0.800",
        "not evaluated",
    ]
    assert text_of((tmp_path / "reports/v2/index.html").read_text(), "id", "trajectory-status").startswith(
        "not drawn: the report was built without"
    )
    index = build_reports(root, NAME, out, evaluation=graded(OLD_FLAT, version="v2"))
    assert re.findall(r'data-field="cas_ratio"[^>]*>([^<]*)<', Path(index).read_text()) == ["0.800", "0.900"]
    assert [v.version for v in list_versions(root, NAME)] == ["v1", "v2"]
    with pytest.raises(DataError, match="version v9 is not published"):
        build_reports(root, NAME, out, evaluation=graded({}, version="v9"))
    with pytest.raises(DataError, match="the evaluation is of version v2, not of v1"):
        build_reports(root, NAME, out, version=first.path, evaluation=graded(OLD_FLAT, version="v2"))
    with pytest.raises(DataError, match="names no version"):
        build_reports(root, NAME, out, evaluation=graded(OLD_FLAT))  # never "the newest folder"
    with pytest.raises(DataError, match="no published versions"):
        build_reports(str(tmp_path / "empty"), NAME, out)


def test_versions_and_reports_behind_fsspec_urls(tmp_path: Path) -> None:
    root, out = f"memory://versions-{tmp_path.name}", f"memory://reports-{tmp_path.name}/{NAME}/_quality"
    version = publish(root, "v1", "2026-11-26T03:00:00+00:00")
    index = build_reports(
        root, NAME, out, version=version.path, evaluation=graded({**OLD_FLAT, "cas_ratio": 0.5})
    )
    assert index == f"{out}/index.html"
    assert text_of(fsspec.filesystem("memory").cat_file(index).decode(), "id", "version-count").startswith(
        "1 version, oldest first"
    )
    assert [v.version for v in list_versions(root, NAME)] == ["v1"]  # _quality is no version
    fs = fsspec.filesystem("memory")
    page = fs.cat_file(f"{out}/v1/index.html").decode()
    assert f'href="{version.path}/data_docs/index.html"' in page and version.path.startswith("memory://")
    assert text_of(page, "id", "cas_ratio") == "0.500"
    assert text_of(page, "id", "coverage") == "not evaluated"  # a partial evaluation
    assert len(fs.glob(f"{out}/v1/class-*.png")) == 30
    assert json.loads(fs.cat_file(f"{out}/v1/evaluation.json"))["metrics"]["cas_ratio"] == 0.5
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
            "memorization_rate": "0.002",
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


def test_pages_of_versions_no_longer_published_are_removed(tmp_path: Path) -> None:
    """A version gone from the versions folder loses its page (dead links, in no index) but keeps its
    evaluation document; the pages of published versions, pages of versions published elsewhere or of no
    known version, and whatever is not a page stay untouched."""
    root, out = str(tmp_path / "published"), tmp_path / "reports"
    gone = publish(root, "v1", "2026-11-25T03:00:00+00:00")
    kept = publish(root, "v2", "2026-11-26T03:00:00+00:00", seed=2)
    build_reports(root, NAME, str(out), version=gone.path, evaluation=graded(OLD_FLAT, path=gone.path))
    other = {"version": "w1", "path": str(tmp_path / "other-root" / NAME / "w1")}
    for rel, text in [
        ("old/index.html", "x"),  # a page without a document: of no known version
        ("old/label-issues/0.png", "x"),
        ("notes/index.html", "x"),
        ("notes/todo.md", "x"),
        ("w1/index.html", "x"),  # a page of a version published under another root
        ("w1/evaluation.json", json.dumps(other)),
    ]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    elsewhere = tmp_path / "elsewhere"  # a page-like folder outside, linked in
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text("x")
    (out / "linked").symlink_to(elsewhere)
    shutil.rmtree(gone.path)

    index = Path(build_reports(root, NAME, str(out), version=kept.path)).read_text()
    assert [p.name for p in (out / "v1").iterdir()] == ["evaluation.json"]
    assert (out / "old" / "index.html").is_file() and (out / "w1" / "index.html").is_file()
    assert (out / "v2" / "index.html").is_file() and len(list((out / "v2").glob("class-*.png"))) == 30
    assert (out / "notes" / "todo.md").is_file() and (elsewhere / "index.html").is_file()  # no page: kept
    assert re.findall(r'<tr data-version="([^"]+)"', index) == ["v2"] and 'href="v1/' not in index
