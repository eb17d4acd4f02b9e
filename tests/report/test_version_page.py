"""The data-quality report's version page: real published versions (rendered digits, real Parquet, real
manifest) and evaluation documents in (tests/report/fixtures.py), the page rendered from the templates with
its PNGs and inline SVG charts out, read back by id."""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion.data.datasets import read_table
from diffusion.data.shards import version_files
from diffusion.quality.headline import METRICS
from diffusion.quality.report import EVALUATION_ROWS, load_model, write_page
from diffusion.quality.report_view import GATE_METRICS
from tests.report.fixtures import METRIC_VALUES, SAMPLED, SAMPLER, page_of, rejected_of, svg_data, text_of


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
    dcr_row = re.search(r'<tr data-metric-row="dcr_share".*?</tr>', page, re.S).group(0)
    assert "real vs real" in dcr_row and 'id="dcr_share_real"' in dcr_row  # beside it, not at the bottom
    assert page.count('id="dcr_share_real"') == 1
    assert text_of(page, "data-metric", "conditional_accuracy_published") == "0.973"
    assert text_of(page, "id", "duplicate_rate") == "0.000"
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


def test_the_gate_rates_are_shown_once_and_say_where_they_come_from(site) -> None:
    """The evaluation copies the near-copy and duplicate rates from the manifest: one number, one row."""
    page = page_of(site, 2)
    for key, value in [("memorization_rate", "0.002"), ("duplicate_rate", "0.000")]:
        row = re.search(rf'<tr data-metric-row="{key}".*?</tr>', page, re.S).group(0)
        assert "(publish gate, manifest.json)" in row and row.count(f">{value}<") == 1
    assert "gate_memorization_rate" not in page and "gate_duplicate_rate" not in page


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


def test_without_model_the_folder_the_manifest_names_draws_the_trajectory(
    model_dir: Path, tmp_path: Path
) -> None:
    """`digits report` without --model rebuilds every page: the manifest's model folder draws each one, when
    its EMA weights are the ones that drew that version; otherwise the page says why nothing is drawn."""
    import hashlib
    import shutil

    from diffusion.quality.report import build_reports
    from tests.report.fixtures import NAME, publish

    root, out = str(tmp_path / "published"), tmp_path / "reports"
    sha = hashlib.sha256((model_dir / "ema.safetensors").read_bytes()).hexdigest()
    moved = tmp_path / "retrained"
    shutil.copytree(model_dir, moved)
    kept = publish(root, "v1", "2026-11-24T03:00:00+00:00", model_sha256=sha, model_path=str(model_dir))
    stale = publish(root, "v2", "2026-11-25T03:00:00+00:00", model_sha256="ab" * 32, model_path=str(moved))
    gone = publish(root, "v3", "2026-11-26T03:00:00+00:00", model_sha256=sha, model_path=str(tmp_path / "x"))
    build_reports(root, NAME, str(out))
    page = (out / kept.version / "index.html").read_text()
    assert 'id="trajectory"' in page and (out / kept.version / "trajectory.png").is_file()
    for version in (stale, gone):
        status = text_of((out / version.version / "index.html").read_text(), "id", "trajectory-status")
        assert status.startswith("not drawn: the report was built without the network that drew")
        assert not (out / version.version / "trajectory.png").exists()


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
    assert {text_of(page, "id", k) for k in METRICS if k not in GATE_METRICS} == {"not evaluated"}
    assert text_of(page, "data-metric", "cas_ratio") == "not evaluated"
    assert text_of(page, "id", "memorization_rate") == "0.002"  # the gate always ran
    assert text_of(page, "id", "label-issue-status") == "not evaluated"
    assert not (site["out"] / site["versions"][0].version / "evaluation.json").exists()
    old = page_of(site, 1)
    assert text_of(old, "id", "cas_ratio") == "0.900" and text_of(old, "id", "recall") == "not evaluated"
    assert text_of(old, "data-metric", "conditional_accuracy_published") == "0.950"
