"""The data-quality report of every published version of a dataset, and their index: data + templates.

    build_reports(versions_root, name, out, version=None, evaluation=None, model=None, device="cpu")

    <out>/index.html                     one row per version (oldest first), a drift chart per headline metric
    <out>/<version>/evaluation.json      the version's evaluation document (`diffusion.quality.grading`)
    <out>/<version>/index.html           the version's page: one HTML file, inline SVG charts, no JavaScript
    <out>/<version>/*.png                per-class digit grids, the sampler trajectory, label-issue digits

A version's numbers are its evaluation document, the one JSON file the page and the index both read (an old
flat one, metrics at the top level, reads as unflagged metrics); the rest comes from the version's manifest
and Parquet. Pages are Jinja2 templates (`templates/`, via `report_html`), charts matplotlib figures
(`charts`), "how these digits were drawn" a seeded draw through the version's sampler (`trajectory`), when
a diffusion model is given and it is the one that drew the version.

Versions and `out` are read and written through fsspec, so either may be a URL. A local `out` is written
in place, each file atomically; another is rendered into a local temporary folder and uploaded. Either
way each page goes last, after the images it shows, and the index after the pages. Every number sits in an
element with an `id` or `data-*` attribute.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem
from pydantic import ValidationError

from diffusion.checkpoint import write_bytes_atomic
from diffusion.config import SamplerConfig
from diffusion.data.datasets import read_table
from diffusion.data.evaluations import read_document, write_document
from diffusion.data.images import save_grid
from diffusion.data.schema import decode_png
from diffusion.data.shards import PublishedVersion, list_versions, version_files
from diffusion.errors import DataError
from diffusion.quality import charts
from diffusion.quality.headline import METRICS
from diffusion.quality.report_html import MISSING, markup, render
from diffusion.quality.trajectory import PAD, draw_trajectory, save_trajectory_grid

SCORE_COLUMNS = ["label", "clip_score", "clip_margin", "classifier_prob", "classifier_pred", "accepted"]
GRID_SIZE = 8  # digits per grid
BINS = 20
LABEL_ISSUES_SHOWN = 32
TRAJECTORY_COLUMNS = 5
SCALE = 2  # PNG upscaling
PAGE = "index.html"
# (label, key, comparison label, comparison key) of the evaluation table; gate_* keys are the manifest's gate.
EVALUATION_ROWS: list[tuple[str, str, str, str | None]] = [
    ("Evaluator accuracy (published)", "conditional_accuracy_published", "unfiltered", "conditional_accuracy_raw"),
    ("Filter classifier accuracy (published)", "judge_accuracy_published", "unfiltered", "judge_accuracy_raw"),
    ("Train on synthetic, test on real", "cas_accuracy", "train on real", "real_baseline_accuracy"),
    ("CAS ratio", "cas_ratio", "", None),
    ("Augmentation gain", "augmentation_gain", "", None),
    ("Fréchet distance to real", "frechet_distance", "real vs real", "frechet_distance_real"),
    ("Diversity (synthetic)", "diversity_synthetic", "real", "diversity_real"),
    ("Near-copy rate (evaluation)", "memorization_rate", "gate", "gate_memorization_rate"),
    ("Duplicate rate (evaluation)", "duplicate_rate", "gate", "gate_duplicate_rate"),
]  # fmt: skip
PROMINENT = {"cas_ratio": "CAS ratio", "conditional_accuracy_published": "Evaluator accuracy"}
COUNT_FIELDS = ["requested", "sampled", "accepted", "blocks", "batches", "acceptance_rate"]  # those present


# ------------------------------------------------------------------------------------ the document
def _number(value: Any) -> float | int | None:
    """A metric as shown: numbers as they are, NaN, infinities and anything else as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def normalize(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """An evaluation document with every section present (empty when absent), metrics as numbers or None.

    A document without "metrics" is an old flat one: its numeric top-level values are the metrics, unflagged.
    """
    if doc is None:
        return None
    if isinstance(doc.get("metrics"), dict):
        metrics = {k: _number(v) for k, v in doc["metrics"].items()}
        flags = [f for f in doc.get("flags") or [] if isinstance(f, dict) and "metric" in f]
        flagged = bool(doc.get("flagged"))
    else:
        metrics = {k: _number(v) for k, v in doc.items() if k not in {"version", "name", "path"}}
        metrics = {k: v for k, v in metrics.items() if v is not None or doc[k] is None}
        flags, flagged = [], False
    monitor = doc.get("monitor") or {}
    return {
        "version": doc.get("version"),
        "evaluated_at": doc.get("evaluated_at"),
        "metrics": metrics,
        "intervals": {
            k: [_number(v[0]), _number(v[1])]
            for k, v in (doc.get("intervals") or {}).items()
            if isinstance(v, (list, tuple)) and len(v) == 2
        },
        "per_class": list(doc.get("per_class") or []),
        "confusion": list(doc.get("confusion") or []),
        "cas_runs": list(doc.get("cas_runs") or []),
        "label_issues": [str(i) for i in doc["label_issues"]]
        if doc.get("label_issues") is not None
        else None,
        "floors": dict(monitor.get("floors") or {}),
        "ceilings": dict(monitor.get("ceilings") or {}),
        "flags": flags,
        "flagged": flagged or bool(flags),
    }


def _bound(doc: dict[str, Any], key: str) -> tuple[float | None, str | None]:
    """The monitor's floor or ceiling on `key` that the document was checked against, and which."""
    if key in doc["floors"]:
        return doc["floors"][key], "floor"
    if key in doc["ceilings"]:
        return doc["ceilings"][key], "ceiling"
    return None, None


def _label(key: str) -> str:
    metric = METRICS.get(key)
    return metric.label if metric else key.replace("_", " ")


# ------------------------------------------------------------------------------------ the version's page
def _local_path(url: str) -> str | None:
    """The local folder of a path, or None when it lives behind another fsspec protocol."""
    fs, path = fsspec.core.url_to_fs(url)
    return path if isinstance(fs, LocalFileSystem) else None


def _link(version: PublishedVersion, rel: str, page_dir: str | None) -> str:
    """A link from a page in `page_dir` (None: not local) to a file of the version: relative when both are
    local, else the version's URL."""
    local = _local_path(version.path)
    if local is not None and page_dir is not None:
        return os.path.relpath(f"{local}/{rel}", page_dir)
    return f"{version.path}/{rel}"


def _read_split(version: PublishedVersion, split: str) -> pa.Table | None:
    """The id, image and score columns of one split, or None when the version has no such split."""
    files = version_files(version, split)
    return read_table(files, columns=["id", "image", *SCORE_COLUMNS]) if files else None


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls (booleans as 0/1)."""
    return table.column(name).cast(pa.float64()).to_numpy()


def _images(table: pa.Table, rows: np.ndarray | list[int]) -> np.ndarray:
    blobs = table.column("image").combine_chunks().field("bytes").take(pa.array(rows, pa.int64())).to_pylist()
    return np.stack([decode_png(b) for b in blobs])


def _grid(table: pa.Table, rows: np.ndarray, out_dir: Path, kind: str, c: int) -> dict[str, Any]:
    """Save the digits at `rows` as the PNG grid `class-<c>-<kind>.png`; what the page says of it."""
    what, src = f"{kind}-{c}", f"class-{c}-{kind}.png"
    if rows.size == 0:
        return {"what": what, "count": 0}
    save_grid(_images(table, rows), out_dir / src, ncols=4, scale=SCALE)
    clip = _column(table, "clip_score")[rows]
    lo, hi = (float(np.nanmin(clip)), float(np.nanmax(clip))) if np.isfinite(clip).any() else (None, None)
    return {"what": what, "count": int(rows.size), "src": src, "clip_min": lo, "clip_max": hi}


def _grids(train: pa.Table, unfiltered: pa.Table | None, classes: list[int], out_dir: Path) -> list[dict]:
    """Per class: the best and worst accepted digits by CLIP score, and rejected ones over the score range."""
    labels, clip = train.column("label").to_numpy(), _column(train, "clip_score")
    if unfiltered is not None:
        u_labels, u_clip = unfiltered.column("label").to_numpy(), _column(unfiltered, "clip_score")
        u_rejected = _column(unfiltered, "accepted") == 0
    rows = []
    for c in classes:
        of_class = np.flatnonzero(labels == c)
        ranked = of_class[np.argsort(-np.nan_to_num(clip[of_class], nan=-np.inf), kind="stable")]
        cells: list[dict | None] = [
            _grid(train, ranked[:GRID_SIZE], out_dir, "best", c),
            _grid(train, ranked[::-1][:GRID_SIZE], out_dir, "worst", c),
        ]
        if unfiltered is None:
            cells.append(None)
        else:
            rejected = np.flatnonzero((u_labels == c) & u_rejected)
            rejected = rejected[np.argsort(np.nan_to_num(u_clip[rejected], nan=-np.inf), kind="stable")]
            spread = np.linspace(0, rejected.size - 1, min(GRID_SIZE, rejected.size)).round().astype(int)
            cells.append(_grid(unfiltered, rejected[np.unique(spread)], out_dir, "rejected", c))
        rows.append({"class": c, "cells": cells})
    return rows


def _histograms(scored: pa.Table, classes: list[int], filters: dict[str, Any]) -> dict[str, Any]:
    """The CLIP-score histograms per class (shared bins) and the classifier-probability one, accepted vs
    rejected, with the filter's thresholds."""
    labels, verdict = scored.column("label").to_numpy(), _column(scored, "accepted")  # 1, 0 or NaN
    clip, prob = _column(scored, "clip_score"), _column(scored, "classifier_prob")

    def split(values: np.ndarray, mask: np.ndarray, edges: np.ndarray) -> dict[str, list[int]]:
        ok = mask & np.isfinite(values)
        return {
            k: np.histogram(values[ok & sel], edges)[0].tolist()
            for k, sel in (("accepted", verdict == 1), ("rejected", verdict == 0))
        }

    clip_chart = None
    if np.isfinite(clip).any():
        edges = np.histogram_bin_edges(clip[np.isfinite(clip)], BINS)
        panels = {str(c): split(clip, labels == c, edges) for c in classes}
        title = "CLIP score per class"
        clip_chart = charts.histograms_svg(
            panels, edges.tolist(), "hist-clip", title, filters.get("min_clip_score"), prefix="class "
        )
    prob_edges = np.linspace(0.0, 1.0, BINS + 1)
    prob_chart = charts.histograms_svg(
        {"all classes": split(prob, np.ones(len(prob), bool), prob_edges)},
        prob_edges.tolist(),
        "hist-classifier-prob",
        "Filter classifier's probability of the intended digit",
        filters.get("min_classifier_prob"),
    )
    return {"clip": markup(clip_chart) if clip_chart else None, "prob": markup(prob_chart)}


def _acceptance(counts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest's per-class counts, their totals and a bar chart of the acceptance rate."""
    ordered = sorted(counts.items(), key=lambda kv: int(kv[0]))
    summed = [
        f for f in COUNT_FIELDS[:-1] if f in {"sampled", "accepted"} or any(f in v for v in counts.values())
    ]
    fields = [*summed, "acceptance_rate"]
    totals: dict[str, Any] = {f: sum(v.get(f) or 0 for v in counts.values()) for f in summed}
    totals["acceptance_rate"] = totals["accepted"] / totals["sampled"] if totals["sampled"] else None
    chart = charts.bars_svg(
        [c for c, _ in ordered],
        {"acceptance rate": [v.get("acceptance_rate") for _, v in ordered]},
        "acceptance-bars",
        "Acceptance rate per class",
        (0.0, 1.0),
    )
    rows = [{"class": c, "cells": {f: v.get(f) for f in fields}} for c, v in ordered]
    return {"fields": fields, "rows": rows, "totals": totals, "chart": markup(chart)}


def _metric_rows(doc: dict[str, Any] | None, gate: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation table: the known pairs first, then every other headline metric, then anything else
    the document holds. Keys with no value read "not evaluated" (absent) or "n/a" (not measured)."""
    metrics = doc["metrics"] if doc else {}
    values = {**metrics, **{f"gate_{k}": v for k, v in gate.items()}}
    flagged = {f["metric"] for f in doc["flags"]} if doc else set()
    compared = {other for *_, other in EVALUATION_ROWS if other}
    keys = [key for _, key, _, _ in EVALUATION_ROWS]
    keys += [k for k in METRICS if k not in keys]
    keys += sorted(k for k in metrics if k not in keys and k not in compared)
    pairs = {key: (label, other_label, other) for label, key, other_label, other in EVALUATION_ROWS}
    intervals = doc["intervals"] if doc else {}

    def missing(key: str | None) -> str:
        if key is None or key.startswith("gate_"):
            return "n/a"
        return "n/a" if key in values else MISSING

    rows = []
    for key in keys:
        label, other_label, other = pairs.get(key, (_label(key), "", None))
        bound, kind = _bound(doc, key) if doc else (None, None)
        metric = METRICS.get(key)
        rows.append(
            {
                "key": key,
                "label": label,
                "about": metric.about if metric else "",
                "value": values.get(key),
                "missing": missing(key),
                "interval": intervals.get(key),
                "bound": bound,
                "kind": kind,
                "flagged": key in flagged,
                "other_label": other_label,
                "other_key": other,
                "other_value": values.get(other) if other else None,
                "other_missing": missing(other),
                "other_interval": intervals.get(other) if other else None,
            }
        )
    return rows


def _per_class(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """The document's per-class table and a bar chart per measure (synthetic beside real when both)."""
    entries = [e for e in (doc["per_class"] if doc else []) if isinstance(e, dict) and "class" in e]
    if not entries:
        return None
    entries.sort(key=lambda e: int(e["class"]))
    fields = [f for f in entries[0] if f != "class"]
    rows = [{"class": int(e["class"]), "cells": {f: _number(e.get(f)) for f in fields}} for e in entries]
    labels = [str(r["class"]) for r in rows]
    made = []
    for f in fields:
        if f.endswith("_real") and f"{f[: -len('_real')]}_synthetic" in fields:
            continue  # drawn beside its synthetic counterpart
        series = {f.replace("_", " "): [r["cells"][f] for r in rows]}
        real = f"{f[: -len('_synthetic')]}_real" if f.endswith("_synthetic") else None
        if real in fields:
            series = {"synthetic": series.popitem()[1], "real": [r["cells"][real] for r in rows]}
        ylim = (0.0, 1.0) if "accuracy" in f else None
        title = f.replace("_synthetic", "").replace("_", " ") + " per class"
        made.append(markup(charts.bars_svg(labels, series, f"per-class-{f}", title, ylim)))
    return {"fields": fields, "rows": rows, "charts": made}


def _confusion(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    cells = [c for c in (doc["confusion"] if doc else []) if isinstance(c, dict)]
    if not cells:
        return None
    counts = {(int(c["actual"]), int(c["predicted"])): int(c.get("count") or 0) for c in cells}
    classes = sorted({a for a, _ in counts} | {p for _, p in counts})
    return {"classes": classes, "counts": counts, "peak": max([1, *counts.values()])}


def _cas_runs(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    runs = [r for r in (doc["cas_runs"] if doc else []) if isinstance(r, dict)]
    if not runs:
        return None
    fields = list(dict.fromkeys(k for r in runs for k in r))
    return {"fields": fields, "rows": [{f: _number(r.get(f)) for f in fields} for r in runs]}


def _label_issues(doc: dict[str, Any] | None, train: pa.Table, out_dir: Path) -> dict[str, Any] | None:
    """The first LABEL_ISSUES_SHOWN flagged digits (in the document's order) saved as `label-issues/<k>.png`,
    with the label they were published under, read from the train split by id."""
    if doc is None or doc["label_issues"] is None:
        return None
    ids = doc["label_issues"]
    found = train.filter(pc.is_in(train.column("id"), value_set=pa.array(ids, pa.string())))
    where = {row_id: i for i, row_id in enumerate(found.column("id").to_pylist())}
    present = [i for i in ids if i in where]
    shown = present[:LABEL_ISSUES_SHOWN]
    issues = []
    if shown:
        images = _images(found, [where[i] for i in shown])
        labels = found.column("label").to_pylist()
        for k, (row_id, image) in enumerate(zip(shown, images, strict=True)):
            src = f"label-issues/{k}.png"
            save_grid(image[None], out_dir / src, ncols=1, scale=SCALE)
            width = (image.shape[1] + 2 * PAD) * SCALE
            issues.append({"id": row_id, "label": labels[where[row_id]], "src": src, "width": width})
    return {"count": len(ids), "shown": issues, "not_found": len(ids) - len(present)}


@dataclass(frozen=True)
class _Model:
    """A loaded diffusion model for the trajectories, and the checksum of its EMA weights (what manifests
    record as model.sha256)."""

    network: Any
    process: Any
    sha256: str
    device: Any


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_model(folder: str | Path, device: str = "cpu") -> _Model:
    """The diffusion model of a `save_diffusion` folder (EMA weights) on `device`, for `build_reports`."""
    from diffusion.device import resolve_device
    from diffusion.model.saved import load_diffusion

    resolved = resolve_device(device, "hardware.device")
    network, process = load_diffusion(folder, resolved)
    return _Model(network, process, _sha256(Path(folder) / "ema.safetensors"), resolved)


def _trajectory(version: PublishedVersion, model: _Model | None, out_dir: Path) -> tuple[dict | None, str]:
    """Draw and save `trajectory.png` with the version's sampler and seed; what the page says of it, or
    None and why it was not drawn."""
    if model is None:
        return None, "not drawn: the report was built without the diffusion model"
    manifest = version.manifest
    expected = manifest.get("model", {}).get("sha256")
    if expected and expected != model.sha256:
        return None, (
            f"not drawn: the model given (sha256 {model.sha256[:12]}) is not the one that drew this version "
            f"(sha256 {expected[:12]})"
        )
    params = manifest.get("params", {})
    try:
        cfg = SamplerConfig.model_validate(params.get("sampler") or {})
    except ValidationError:
        return None, "not drawn: the manifest's sampler settings are not valid ones"
    seed = params.get("seed") if isinstance(params.get("seed"), int) else 0
    try:
        traj = draw_trajectory(model.network, model.process, cfg, seed, TRAJECTORY_COLUMNS, model.device)
    except ValueError as err:
        return None, f"not drawn: {err}"
    save_trajectory_grid(traj, out_dir / "trajectory.png", scale=SCALE)
    h, w = traj.x_t.shape[-2:]
    return {
        "src": "trajectory.png",
        "sampler": cfg.name,
        "guidance": cfg.guidance,
        "seed": seed,
        "total": traj.total,
        "steps": traj.steps,
        "timesteps": traj.timesteps,
        "classes": traj.classes,
        "columns": [{"step": s, "timestep": t} for s, t in zip(traj.steps, traj.timesteps, strict=True)],
        "cell": (w + PAD) * SCALE,
        "pad": PAD * SCALE,
        "width": (2 * len(traj.steps) * (w + PAD) + PAD) * SCALE,
        "height": (len(traj.classes) * (h + PAD) + PAD) * SCALE,
    }, ""


def _params(manifest: dict[str, Any]) -> dict[str, list[tuple[str, Any]]]:
    params, model = manifest.get("params", {}), manifest.get("model", {})
    sampler = params.get("sampler", {})
    settings = [
        ("sampler", sampler.get("name")),
        ("steps", sampler.get("steps")),
        ("guidance", sampler.get("guidance")),
        ("eta", sampler.get("eta")),
        ("best_of_n", params.get("best_of_n")),
        ("seed", params.get("seed")),
        *((f"filter.{k}", v) for k, v in sorted(params.get("filter", {}).items())),
    ]
    provenance = [
        ("run_id", manifest.get("run_id")),
        ("created_at", manifest.get("created_at")),
        ("model_sha256", model.get("sha256")),
        ("model_git_revision", model.get("git_revision")),
        ("git_revision", manifest.get("git_revision")),
        *((f"judge.{k}", v) for k, v in sorted(manifest.get("judges", {}).items())),
    ]
    packages = sorted(manifest.get("packages", {}).items())
    return {"settings": settings, "provenance": provenance, "packages": packages}


def write_page(
    version: PublishedVersion,
    document: dict[str, Any] | None,
    out_dir: str | Path,
    model: _Model | None = None,
    page_dir: str | None = None,
) -> Path:
    """Write the page of `version` into the local folder `out_dir`: its images, then index.html (returned).

    `document`: its evaluation document (None: not evaluated). `page_dir`: where the page will finally live
    when that is another local folder (links to the version are relative to it); None when it is `out_dir`.
    `model`: the diffusion model for "how these digits were drawn" (`load_model`), or None.
    """
    out_dir = Path(out_dir)
    doc = normalize(document)
    manifest = version.manifest
    train, unfiltered = _read_split(version, "train"), _read_split(version, "unfiltered")
    if train is None:
        raise DataError(f"{version.path}: the version has no train split")
    counts = manifest.get("counts", {})
    classes = sorted({*map(int, counts), *train.column("label").to_pylist()})
    name = manifest.get("name", version.path.rstrip("/").rsplit("/", 2)[-2])
    link_dir = page_dir if page_dir is not None else str(out_dir)
    flags = [
        {**f, "label": _label(f["metric"]), "value": _number(f.get("value"))}
        for f in (doc["flags"] if doc else [])
    ]
    flagged_metrics = {f["metric"] for f in flags}
    metrics = doc["metrics"] if doc else {}
    trajectory, trajectory_status = _trajectory(version, model, out_dir)
    context = {
        "title": f"{name} {version.version}: data quality",
        "name": name,
        "version": version.version,
        "path": version.path,
        "created_at": manifest.get("created_at"),
        "run_id": manifest.get("run_id"),
        "published": train.num_rows,
        "links": {
            "docs": _link(version, "data_docs/index.html", link_dir),
            "card": _link(version, "README.md", link_dir),
        },
        "evaluated": doc is not None,
        "evaluated_at": doc["evaluated_at"] if doc else None,
        "flagged": bool(doc and doc["flagged"]),
        "flags": flags,
        "cards": [
            {
                "key": key,
                "label": label,
                "value": metrics.get(key),
                "missing": "n/a" if key in metrics else MISSING,
                "flagged": key in flagged_metrics,
            }
            for key, label in PROMINENT.items()
        ],
        "metric_rows": _metric_rows(doc, manifest.get("gate", {})),
        "per_class": _per_class(doc),
        "confusion": _confusion(doc),
        "cas_runs": _cas_runs(doc),
        "label_issues": _label_issues(doc, train, out_dir),
        "acceptance": _acceptance(counts),
        "trajectory": trajectory,
        "trajectory_status": trajectory_status,
        "grids": _grids(train, unfiltered, classes, out_dir),
        "histograms": _histograms(
            unfiltered if unfiltered is not None else train,
            classes,
            manifest.get("params", {}).get("filter", {}),
        ),
        **_params(manifest),
    }
    page = out_dir / PAGE
    write_bytes_atomic(page, render("version.html.j2", **context).encode())
    return page


# ------------------------------------------------------------------------------------ the index
def _index_row(version: PublishedVersion, doc: dict[str, Any] | None, has_page: bool) -> dict[str, Any]:
    counts = version.manifest.get("counts", {}).values()
    sampled = sum(c.get("sampled", 0) for c in counts)
    published = sum(
        f["rows"] for f in version.manifest.get("files", []) if f["path"].startswith("data/train-")
    )
    flags = doc["flags"] if doc else []
    return {
        "version": version.version,
        "has_page": has_page,
        "created_at": version.manifest.get("created_at"),
        "published": published,
        "acceptance_rate": sum(c.get("accepted", 0) for c in counts) / sampled if sampled else None,
        "gate_memorization_rate": version.manifest.get("gate", {}).get("memorization_rate"),
        "evaluated": doc is not None,
        "flagged": bool(doc and doc["flagged"]),
        "flag_metrics": [f["metric"] for f in flags],
        "flag_text": "; ".join(
            f"{f['metric']} {f.get('value')} {'below' if f.get('kind') == 'floor' else 'above'} {f.get('bound')}"
            for f in flags
        ),
        "metrics": doc["metrics"] if doc else {},
    }


def render_index(
    name: str, versions: list[PublishedVersion], documents: dict[str, dict | None], pages: set[str]
) -> str:
    """The index page: a row per version (oldest first) and a drift chart per headline metric the documents
    hold, with the newest document's floor or ceiling on it and the versions flagged on it in red."""
    ordered = sorted(versions, key=lambda v: (v.manifest.get("created_at", ""), v.version))
    docs = {v.version: normalize(documents.get(v.version)) for v in ordered}
    rows = [_index_row(v, docs[v.version], v.version in pages) for v in ordered]
    names = [r["version"] for r in rows]
    dates = [str(r["created_at"] or r["version"])[:10] for r in rows]
    held = [k for k in METRICS if any(d and _number(d["metrics"].get(k)) is not None for d in docs.values())]
    trends = [
        charts.trend_svg(
            names,
            [r["acceptance_rate"] for r in rows],
            "trend-acceptance_rate",
            "acceptance rate (filter)",
            ticks=dates,
        )
    ]
    for key in held:
        bound, kind = None, None
        for d in reversed([d for d in docs.values() if d]):
            bound, kind = _bound(d, key)
            if bound is not None:
                break
        metric = METRICS[key]
        trends.append(
            charts.trend_svg(
                names,
                [r["metrics"].get(key) for r in rows],
                f"trend-{key}",
                f"{metric.label} ({metric.better} is better)",
                bound,
                kind,
                [key in r["flag_metrics"] for r in rows],
                dates,
            )
        )
    return render(
        "index.html.j2",
        title=f"{name}: data quality",
        name=name,
        rows=rows,
        columns=[(k, METRICS[k].label) for k in held],
        flagged_count=sum(r["flagged"] for r in rows),
        charts=[markup(c) for c in trends],
    )


# ------------------------------------------------------------------------------------ building
def _version_named(
    versions: list[PublishedVersion], where: str, version: str | None, evaluation: dict | None
) -> str | None:
    """The version whose page is asked for: the folder `version` names, else the evaluation's "version"."""
    named = version.rstrip("/").rsplit("/", 1)[-1] if version else None
    in_doc = (evaluation or {}).get("version")
    if named and in_doc and in_doc != named:
        raise DataError(f"the evaluation is of version {in_doc}, not of {named}")
    target = named or in_doc
    if evaluation is not None and target is None:
        raise DataError("the evaluation names no version: pass --version")
    if target is not None and target not in {v.version for v in versions}:
        raise DataError(f"version {target} is not published under {where}")
    return target


@contextmanager
def _staging(fs: fsspec.AbstractFileSystem, base: str) -> Iterator[Path]:
    """Where pages are rendered: `base` itself on a local disk, else a temporary folder to upload."""
    if isinstance(fs, LocalFileSystem):
        yield Path(base)
    else:
        with tempfile.TemporaryDirectory(prefix="report-") as tmp:
            yield Path(tmp)


def _upload(fs: fsspec.AbstractFileSystem, local: Path, remote: str) -> None:
    """Upload a rendered page folder: every image first, index.html last."""
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != PAGE)
    for folder in sorted({p.parent.relative_to(local).as_posix() for p in files} | {"."}):
        fs.makedirs(remote if folder == "." else f"{remote}/{folder}", exist_ok=True)
    if files:
        fs.put([str(p) for p in files], [f"{remote}/{p.relative_to(local).as_posix()}" for p in files])
    fs.put_file(str(local / PAGE), f"{remote}/{PAGE}")


def build_reports(
    versions_root: str,
    name: str,
    out: str,
    version: str | None = None,
    evaluation: dict[str, Any] | None = None,
    model: str | None = None,
    device: str = "cpu",
) -> str:
    """Write the report pages of dataset `name`'s versions (under `<versions_root>/<name>/`) into the report
    folder `out` and the index over all of them; return the index's path or URL.

    `version` (a version folder, local path or URL; else the evaluation's "version") names the version whose
    page is (re)written; then only it, and any version without a page yet, get one. Without either, every
    version's page is rewritten. `evaluation`: that version's evaluation document, written to
    `out/<version>/evaluation.json` first; otherwise each page and the index read the document already
    there, if any ("not evaluated" without). `model`: a diffusion checkpoint folder for "how these digits
    were drawn" (drawn only for versions that model drew), loaded once on `device`.

    Raises DataError when there is no version, the version is not published, or the evaluation names another.
    """
    versions = list_versions(versions_root, name)
    if not versions:
        raise DataError(f"{versions_root}/{name}: no published versions")
    target = _version_named(versions, f"{versions_root}/{name}", version, evaluation)
    out = str(out).rstrip("/")
    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    if evaluation is not None:
        write_document(out, {**evaluation, "version": target})
    documents = {v.version: read_document(out, v.version) for v in versions}
    pages = {v.version for v in versions if fs.exists(f"{base}/{v.version}/{PAGE}")}
    todo = [v for v in versions if target is None or v.version == target or v.version not in pages]
    loaded = load_model(model, device) if model is not None and todo else None
    local = isinstance(fs, LocalFileSystem)
    with _staging(fs, base) as stage:
        for v in todo:
            page_dir = str(Path(base) / v.version) if local else None
            write_page(v, documents[v.version], stage / v.version, loaded, page_dir)
            if not local:
                _upload(fs, stage / v.version, f"{base}/{v.version}")
            pages.add(v.version)
        html = render_index(name, versions, documents, pages).encode()
        if local:
            write_bytes_atomic(Path(base) / PAGE, html)
            return str(Path(base) / PAGE)
        fs.pipe_file(f"{base}/{PAGE}", html)
    return f"{out}/{PAGE}"


__all__ = ["build_reports", "load_model", "normalize", "render_index", "write_page"]
