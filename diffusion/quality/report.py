"""The data-quality report of a published dataset version, and an index of every version.

    <reports_root>/<name>/index.html                  one row per version, oldest first, headline numbers
    <reports_root>/<name>/<version>/index.html        the version's report: one HTML file, no JavaScript
    <reports_root>/<name>/<version>/class-<c>-*.png   per-class digit grids (best, worst, rejected)
    <reports_root>/<name>/<version>/evaluation.json   the evaluation it was written with, for later indexes

A report shows the evaluation stage's headline numbers (or "not evaluated"), the publish gate's rates,
acceptance per class, per-class grids of the best and worst accepted digits by CLIP score and of rejected
ones, CLIP-score and classifier-probability histograms (accepted vs rejected), the run's params and
provenance, and links to the version's Data Docs and dataset card (relative for a local version, the
URL otherwise; nothing is copied). Versions are read through fsspec, so they may live at any URL.
Every number sits in an element with an `id` or `data-*` attribute; every file is written atomically,
each page last, after the images it shows.
"""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from diffusion.checkpoint import write_bytes_atomic, write_json_atomic
from diffusion.data.datasets import read_table
from diffusion.data.images import save_grid
from diffusion.data.schema import decode_png
from diffusion.data.shards import PublishedVersion, list_versions, version_files
from diffusion.errors import DataError
from diffusion.quality import report_html as h

HEADLINE_KEYS = tuple(
    k for _, key, _, other in h.EVALUATION_ROWS for k in (key, other) if k and "gate" not in k
)
SCORE_COLUMNS = ["label", "clip_score", "clip_margin", "classifier_prob", "classifier_pred", "accepted"]
GRID_SIZE = 8  # digits per grid
BINS = 20
EVALUATION_FILE = "evaluation.json"


def report_dir(reports_root: Path, name: str, version: str) -> Path:
    """Where the report of one version goes (what the index links to)."""
    return Path(reports_root) / name / version


def _local_path(url: str) -> str | None:
    """The local folder of a version path, or None when it lives behind another fsspec protocol."""
    fs, path = fsspec.core.url_to_fs(url)
    return path if isinstance(fs, LocalFileSystem) else None


def _link(version: PublishedVersion, rel: str, out_dir: Path) -> str:
    """A link from a page in `out_dir` to a file of the version: relative when local, else the URL."""
    local = _local_path(version.path)
    return os.path.relpath(f"{local}/{rel}", out_dir) if local is not None else f"{version.path}/{rel}"


def _read_split(version: PublishedVersion, split: str) -> pa.Table | None:
    """The image and score columns of one split, or None when the version has no such split."""
    files = version_files(version, split)
    return read_table(files, columns=["image", *SCORE_COLUMNS]) if files else None


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls (booleans as 0/1)."""
    return table.column(name).cast(pa.float64()).to_numpy()


def _grid(table: pa.Table, rows: np.ndarray, path: Path, what: str) -> str:
    """Save the digits at `rows` as a PNG grid in `path`; their <figure>, scores in data attributes."""
    if rows.size == 0:
        return f'<figure class="missing" data-grid="{what}" data-count="0">none</figure>'
    blobs = table.column("image").combine_chunks().field("bytes").take(pa.array(rows)).to_pylist()
    save_grid(np.stack([decode_png(b) for b in blobs]), path, ncols=4, scale=2)
    clip = _column(table, "clip_score")[rows]
    lo, hi = (float(np.nanmin(clip)), float(np.nanmax(clip))) if np.isfinite(clip).any() else (None, None)
    figure = h.attrs({"data_grid": what, "data_count": rows.size, "data_clip_min": lo, "data_clip_max": hi})
    return (
        f'<figure{figure}><img src="{escape(path.name)}" alt="{escape(what)}: {rows.size} digits">'
        f"<figcaption>{rows.size} digits, CLIP {h.fmt(lo, 1)} to {h.fmt(hi, 1)}</figcaption></figure>"
    )


def _grids_section(train: pa.Table, unfiltered: pa.Table | None, classes: list[int], out_dir: Path) -> str:
    """Per class: the best and worst accepted digits by CLIP score, and rejected ones over the score range."""
    labels, clip = train.column("label").to_numpy(), _column(train, "clip_score")
    if unfiltered is not None:
        u_labels, u_clip = unfiltered.column("label").to_numpy(), _column(unfiltered, "clip_score")
        u_rejected = _column(unfiltered, "accepted") == 0
    cells = [
        '<div class="head"></div><div class="head">best accepted</div>',
        '<div class="head">worst accepted</div><div class="head">rejected (spread over scores)</div>',
    ]
    for c in classes:
        of_class = np.flatnonzero(labels == c)
        ranked = of_class[np.argsort(-np.nan_to_num(clip[of_class], nan=-np.inf), kind="stable")]
        cells += [
            f'<div class="digit">{c}</div>',
            _grid(train, ranked[:GRID_SIZE], out_dir / f"class-{c}-best.png", f"best-{c}"),
            _grid(train, ranked[::-1][:GRID_SIZE], out_dir / f"class-{c}-worst.png", f"worst-{c}"),
        ]
        if unfiltered is None:
            cells.append('<figure class="missing">no unfiltered split</figure>')
            continue
        rejected = np.flatnonzero((u_labels == c) & u_rejected)
        rejected = rejected[np.argsort(np.nan_to_num(u_clip[rejected], nan=-np.inf), kind="stable")]
        spread = np.linspace(0, rejected.size - 1, min(GRID_SIZE, rejected.size)).round().astype(int)
        path = out_dir / f"class-{c}-rejected.png"
        cells.append(_grid(unfiltered, rejected[np.unique(spread)], path, f"rejected-{c}"))
    return f'<h2>Digits by CLIP score</h2><div class="grid" id="grids">{"".join(cells)}</div>'


def _histograms_section(scored: pa.Table, classes: list[int], filters: dict[str, Any]) -> str:
    """Per-class CLIP-score histograms and the classifier-probability one, accepted vs rejected."""
    labels, verdict = scored.column("label").to_numpy(), _column(scored, "accepted")  # 1, 0 or NaN
    clip, prob = _column(scored, "clip_score"), _column(scored, "classifier_prob")

    def split(values: np.ndarray, mask: np.ndarray, edges: np.ndarray) -> dict[str, list[int]]:
        ok = mask & np.isfinite(values)
        return {
            k: np.histogram(values[ok & sel], edges)[0].tolist()
            for k, sel in (("accepted", verdict == 1), ("rejected", verdict == 0))
        }

    charts = []
    if np.isfinite(clip).any():
        edges = np.histogram_bin_edges(clip[np.isfinite(clip)], BINS)
        charts += [
            h.svg_histogram(
                split(clip, labels == c, edges),
                edges.tolist(),
                f"hist-clip-{c}",
                f"class {c}",
                filters.get("min_clip_score"),
            )
            for c in classes
        ]
    prob_edges = np.linspace(0.0, 1.0, BINS + 1)
    prob_chart = h.svg_histogram(
        split(prob, np.ones(len(prob), bool), prob_edges),
        prob_edges.tolist(),
        "hist-classifier-prob",
        "all classes",
        filters.get("min_classifier_prob"),
        400,
    )
    return (
        f"<h2>Score histograms</h2>{h.legend(['accepted', 'rejected'])}<p class=sub>CLIP score per class "
        f"(shared bins, dashed: filter threshold)</p>"
        f"<div class=charts>{''.join(charts) or 'no CLIP scores'}</div>"
        f"<p class=sub>Filter classifier's probability of the intended digit</p>{prob_chart}"
    )


def write_report(version: PublishedVersion, evaluation: dict[str, Any] | None, out_dir: Path) -> Path:
    """Write the report of `version` into `out_dir` (index.html, its PNG grids and, when given,
    evaluation.json) and return the index.html path.

    `evaluation`: the evaluation stage's headline dict (HEADLINE_KEYS), None or partial when the version
    was not evaluated. `out_dir` is normally `report_dir(reports_root, name, version)`: the page links
    to `../index.html`, the index of all versions.
    """
    out_dir = Path(out_dir)
    manifest = version.manifest
    train, unfiltered = _read_split(version, "train"), _read_split(version, "unfiltered")
    if train is None:
        raise DataError(f"{version.path}: the version has no train split")
    counts = manifest.get("counts", {})
    classes = sorted({*map(int, counts), *train.column("label").to_pylist()})
    name = manifest.get("name", Path(version.path).parent.name)
    docs, card = _link(version, "data_docs/index.html", out_dir), _link(version, "README.md", out_dir)
    links = (
        f'<p><a id="data-docs" href="{escape(docs)}">Data Docs</a> · '
        f'<a id="dataset-card" href="{escape(card)}">dataset card</a> · '
        f'<a href="../index.html">all versions</a> · <span class="mono" id="version-path">'
        f"{escape(version.path)}</span></p>"
    )
    body = (
        f"<h1>{escape(name)} <span id=version>{escape(version.version)}</span></h1>"
        f'<p class="sub">created {h.cell(manifest.get("created_at"), tag="span", id="headline_created_at")}, '
        f"run {escape(str(manifest.get('run_id')))}, "
        f"{h.cell(train.num_rows, tag='span', id='published_rows')} digits published</p>{links}"
        + h.evaluation_section(evaluation, manifest.get("gate", {}))
        + h.acceptance_section(counts)
        + _grids_section(train, unfiltered, classes, out_dir)
        + _histograms_section(
            unfiltered if unfiltered is not None else train,
            classes,
            manifest.get("params", {}).get("filter", {}),
        )
        + h.params_section(manifest)
    )
    if evaluation is not None:
        write_json_atomic(out_dir / EVALUATION_FILE, evaluation)
    else:  # the kept evaluation always matches what the page says
        (out_dir / EVALUATION_FILE).unlink(missing_ok=True)
    index = out_dir / "index.html"
    write_bytes_atomic(index, h.page(f"{name} {version.version}: data quality", body).encode())
    return index


def _index_row(version: PublishedVersion, evaluation: dict[str, Any]) -> dict[str, Any]:
    """The index's numbers of one version."""
    counts = version.manifest.get("counts", {}).values()
    sampled = sum(c.get("sampled", 0) for c in counts)
    published = sum(
        f["rows"] for f in version.manifest.get("files", []) if f["path"].startswith("data/train-")
    )
    return {
        "created_at": version.manifest.get("created_at"),
        "published": published,
        "acceptance_rate": sum(c.get("accepted", 0) for c in counts) / sampled if sampled else None,
        "conditional_accuracy": evaluation.get("conditional_accuracy_published"),
        "cas_ratio": evaluation.get("cas_ratio"),
        "frechet_distance": evaluation.get("frechet_distance"),
        "memorization_rate": version.manifest.get("gate", {}).get("memorization_rate"),
    }


def write_index(
    versions: list[PublishedVersion], evaluations: dict[str, dict[str, Any]], reports_root: Path, name: str
) -> Path:
    """Write `<reports_root>/<name>/index.html`: one row per version (oldest first, by created_at) linking to
    its report, with its headline numbers and a trend chart; `evaluations` maps version -> headline dict."""
    ordered = sorted(versions, key=lambda v: (v.manifest.get("created_at", ""), v.version))
    table_rows = {v.version: _index_row(v, evaluations.get(v.version) or {}) for v in ordered}
    evaluated = {"conditional_accuracy", "cas_ratio", "frechet_distance"}
    rows = [
        f'<tr data-version="{escape(v)}"><td><a href="{escape(v)}/index.html">{escape(v)}</a></td>'
        + "".join(
            h.cell(x, h.MISSING if f in evaluated else "n/a", data_version=v, data_field=f)
            for f, x in r.items()
        )
        + "</tr>"
        for v, r in table_rows.items()
    ]
    headers = [
        "version",
        "created",
        "published",
        "acceptance rate",
        "evaluator accuracy",
        "CAS ratio",
        "Fréchet distance",
        "memorisation (gate)",
    ]
    trend = {
        label: [r[f] for r in table_rows.values()]
        for label, f in [
            ("acceptance rate", "acceptance_rate"),
            ("conditional accuracy", "conditional_accuracy"),
            ("CAS ratio", "cas_ratio"),
            ("memorisation (gate)", "memorization_rate"),
        ]
    }
    body = (
        f'<h1>{escape(name)}: data quality of every version</h1><p class="sub" id="version-count" '
        f'data-value="{len(ordered)}">{len(ordered)} versions, oldest first</p>'
        + h.table(headers, rows, "versions")
        + "<h2>Drift</h2>"
        + h.legend(list(trend))
        + h.svg_trend(list(table_rows), trend, "trend")
    )
    index = Path(reports_root) / name / "index.html"
    write_bytes_atomic(index, h.page(f"{name}: data quality", body).encode())
    return index


def read_evaluations(reports_root: Path, name: str) -> dict[str, dict[str, Any]]:
    """The evaluations kept beside earlier reports: version -> headline dict."""
    found = sorted((Path(reports_root) / name).glob(f"*/{EVALUATION_FILE}"))
    return {p.parent.name: json.loads(p.read_text()) for p in found}


def build_reports(
    root: str,
    name: str,
    evaluation: dict[str, Any] | None,
    reports_root: Path,
    version: str | None = None,
) -> Path:
    """Report every published version of `name` under `root` that has no report yet, and the evaluated one
    again; then write the index and return its path.

    `version` (a version folder, as the generate stage handed it on) names the version `evaluation` belongs
    to; without it, the evaluation's "version" key does. The evaluations of earlier runs are read back from
    their reports' evaluation.json. Raises DataError when they disagree or the version is not published.
    """
    versions = list_versions(root, name)
    if not versions:
        raise DataError(f"{root}/{name}: no published versions")
    named = version.rstrip("/").rsplit("/", 1)[-1] if version else None
    evaluated = named or (evaluation or {}).get("version")
    if evaluation is not None and evaluated is None:
        raise DataError("the evaluation names no version: pass --version")
    if named and evaluation and evaluation.get("version", named) != named:
        raise DataError(f"the evaluation is of version {evaluation['version']}, not of {named}")
    if evaluated is not None and evaluated not in {v.version for v in versions}:
        raise DataError(f"version {evaluated} is not published under {root}/{name}")
    kept = read_evaluations(reports_root, name)
    for v in versions:
        out = report_dir(reports_root, name, v.version)
        if v.version == evaluated or not (out / "index.html").exists():
            write_report(v, evaluation if v.version == evaluated else kept.get(v.version), out)
    return write_index(versions, read_evaluations(reports_root, name), reports_root, name)
