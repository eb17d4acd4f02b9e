"""The data-quality report of every published version of a dataset, and their index: which pages to
(re)write, the index over all versions, and where it all goes.

    build_reports(versions_root, name, out, version=None, evaluation=None, model=None, device="cpu")

    <out>/index.html                     one row per version (oldest first), a drift chart per headline metric
    <out>/<version>/evaluation.json      the version's evaluation document (`diffusion.quality.grading`)
    <out>/<version>/index.html, *.png    the version's page and its images (`report_page`)

The report folder outlives versions (DVC keeps `reports/`), so each build also removes the pages of versions
no longer published (`remove_stale_pages`), keeping their evaluation documents.

A version's numbers are its evaluation document, the one JSON file the page and the index both read
(`report_view`); the rest comes from the version's manifest and Parquet.

Versions and `out` are read and written through fsspec, so either may be a URL. A local `out` is written
in place, each file atomically; another is rendered into a local temporary folder and uploaded. Either
way each page goes last, after the images it shows, and the index after the pages. Every number sits in an
element with an `id` or `data-*` attribute.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from diffusion.checkpoint import write_bytes_atomic
from diffusion.data.evaluations import DOCUMENT, read_document, write_document
from diffusion.data.shards import PublishedVersion, list_versions, location, url_to_fs
from diffusion.errors import DataError
from diffusion.quality import charts
from diffusion.quality.headline import METRICS
from diffusion.quality.report_html import markup, render
from diffusion.quality.report_page import PAGE, load_model, page_models, write_page
from diffusion.quality.report_view import (
    EVALUATION_ROWS,
    GATE_METRICS,
    monitor_bound,
    normalize,
    with_gate,
)


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
        "evaluated": doc is not None,
        "flagged": bool(doc and doc["flagged"]),
        "flag_metrics": [f["metric"] for f in flags],
        "flag_text": "; ".join(
            f"{f['metric']} {_shown(f.get('value'))} {'below' if f.get('kind') == 'floor' else 'above'}"
            f" {_shown(f.get('bound'))}"
            for f in flags
        ),
        "metrics": with_gate(doc["metrics"] if doc else {}, version.manifest.get("gate") or {}),
    }


# What a chart's title says of a metric whose best value is not its lowest or highest.
TREND_NOTES = {"dcr_share": "0.5 = no memorisation"}


def _label(key: str) -> str:
    """A headline metric's name on the index; the publish gate's rates say so (no evaluation measures them)."""
    return METRICS[key].label + (" (publish gate)" if key in GATE_METRICS else "")


def _shown(value: object) -> str:
    """A flag's number as a tooltip shows it: four significant digits ("not measured" for none)."""
    return f"{value:.4g}" if isinstance(value, (int, float)) else "not measured"


def _trend_title(key: str) -> str:
    """A drift chart's title: the metric and which way is better, or what its values mean where neither
    end is (DCR share: 0.5 is no memorisation, below it is no better)."""
    note = TREND_NOTES.get(key, f"{METRICS[key].better} is better")
    return f"{_label(key)}, {note}"


def render_index(
    name: str, versions: list[PublishedVersion], documents: dict[str, dict | None], pages: set[str]
) -> str:
    """The index page: a row per version (oldest first) and a drift chart per headline metric the documents
    (the gate's rates: the manifests) hold, with the floor or ceiling each version was graded against (the
    newest one named) and the versions flagged on it in red."""
    ordered = sorted(versions, key=lambda v: (v.manifest.get("created_at", ""), v.version))
    docs = {v.version: normalize(documents.get(v.version)) for v in ordered}
    rows = [_index_row(v, docs[v.version], v.version in pages) for v in ordered]
    names = [r["version"] for r in rows]
    dates = [str(r["created_at"] or r["version"])[:10] for r in rows]
    held = [k for k in METRICS if any(r["metrics"].get(k) is not None for r in rows)]
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
        graded = [monitor_bound(d, key) if d else (None, None) for d in docs.values()]  # each version's own
        bound, kind = next((b for b in reversed(graded) if b[0] is not None), (None, None))
        trends.append(
            charts.trend_svg(
                names,
                [r["metrics"].get(key) for r in rows],
                f"trend-{key}",
                _trend_title(key),
                bound,
                kind,
                [key in r["flag_metrics"] for r in rows],
                dates,
                bounds=[b for b, _ in graded],
                limits=(METRICS[key].lo, METRICS[key].hi),
            )
        )
    return render(
        "index.html.j2",
        title=f"{name}: data quality",
        name=name,
        rows=rows,
        columns=[(k, _label(k)) for k in held],
        graded_count=sum(d is not None for d in docs.values()),
        flagged_count=sum(r["flagged"] for r in rows),
        charts=[markup(c) for c in trends],
    )


# ------------------------------------------------------------------------------------ building
def _version_named(
    versions: list[PublishedVersion], where: str, version: str | None, evaluation: dict | None
) -> str | None:
    """The version whose page is asked for: the folder `version` names, else the evaluation's "version"."""
    if version:
        (protocol, folder), root = location(version), location(where)
        if (protocol, folder.rsplit("/", 1)[0] or "/") != root:
            raise DataError(f"{version}: not a version of {where}; name one of its folders")
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
    there, if any ("not evaluated" without). `model`: a diffusion model's or a student's folder for "how
    these digits were drawn" (drawn only for versions that network drew), loaded once on `device`; None: the
    folder each version's manifest names, where it is here unchanged (`page_models`). Last, the pages of
    versions no longer published are removed (`remove_stale_pages`).

    Raises DataError when there is no version, the version is not published or lies under another root, the
    evaluation names another, or `evaluation` is no full evaluation document (`check_document`).
    """
    versions = list_versions(versions_root, name)
    if not versions:
        raise DataError(f"{versions_root}/{name}: no published versions")
    target = _version_named(versions, f"{str(versions_root).rstrip('/')}/{name}", version, evaluation)
    out = str(out).rstrip("/")
    fs, base = url_to_fs(out)
    base = base.rstrip("/")
    if evaluation is not None:
        write_document(out, {**evaluation, "version": target})
    documents = {v.version: read_document(out, v.version) for v in versions}
    pages = {v.version for v in versions if fs.exists(f"{base}/{v.version}/{PAGE}")}
    todo = [v for v in versions if target is None or v.version == target or v.version not in pages]
    models = page_models(todo, model, device)
    local = isinstance(fs, LocalFileSystem)
    with _staging(fs, base) as stage:
        for v in todo:
            page_dir = str(Path(base) / v.version) if local else None
            write_page(v, documents[v.version], stage / v.version, models[v.version], page_dir)
            if not local:
                _upload(fs, stage / v.version, f"{base}/{v.version}")
            pages.add(v.version)
    index = _write_index(fs, base, out, render_index(name, versions, documents, pages).encode())
    published = {v.version for v in list_versions(versions_root, name)}  # again: a run may have published
    remove_stale_pages(fs, base, published, f"{versions_root.rstrip('/')}/{name}")
    return index


def _write_index(fs: fsspec.AbstractFileSystem, base: str, out: str, html: bytes) -> str:
    """Write the index into the report folder (atomically on a local disk); its path or URL."""
    if isinstance(fs, LocalFileSystem):
        write_bytes_atomic(Path(base) / PAGE, html)
        return str(Path(base) / PAGE)
    fs.pipe_file(f"{base}/{PAGE}", html)
    return f"{out}/{PAGE}"


# ------------------------------------------------------------------------------------ stale pages
def _links_out(fs: fsspec.AbstractFileSystem, base: str, paths: list[str]) -> bool:
    """Whether any of `paths` is, on a local disk, reached through a link to outside the report folder."""
    if not isinstance(fs, LocalFileSystem):
        return False
    top = Path(base).resolve()
    return not all(Path(p).resolve().is_relative_to(top) for p in paths)


def _page_files(fs: fsspec.AbstractFileSystem, base: str, folder: str) -> list[str] | None:
    """The files of `folder` when it is a report page folder as `write_page` leaves it (index.html at its
    top, else only PNGs and the evaluation document, none through a link out); None otherwise."""
    files = fs.find(folder)
    rel = [f[len(folder) + 1 :] for f in files if f.startswith(f"{folder}/")]
    if len(rel) != len(files) or PAGE not in rel:
        return None
    if not all(r in (PAGE, DOCUMENT) or r.endswith(".png") for r in rel):
        return None
    return None if _links_out(fs, base, [folder, *files]) else files


def _remove_empty_folders(fs: fsspec.AbstractFileSystem, folder: str) -> None:
    """Remove the folders under `folder`, and `folder` itself, that removing the page's files left empty."""
    found = fs.find(folder, withdirs=True, detail=True)
    inner = [d for d, info in found.items() if info.get("type") == "directory"]
    for d in sorted(inner, key=lambda d: d.count("/"), reverse=True) + [folder]:
        if fs.exists(d) and not fs.ls(d):
            fs.rmdir(d)


def _graded_under(fs: fsspec.AbstractFileSystem, folder: str, dataset: str) -> bool:
    """Whether the page folder's evaluation document names a version inside `dataset` (the folder of this
    build's versions): a page of a version published elsewhere (another output root sharing this report
    folder), or of no known version (no document), is not this build's to remove."""
    try:
        doc = json.loads(fs.cat_file(f"{folder}/{DOCUMENT}"))
        path = str(doc["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if "://" in path or "://" in dataset:
        return path.startswith(f"{dataset}/")
    return Path(path).resolve().is_relative_to(Path(dataset).resolve())


def remove_stale_pages(
    fs: fsspec.AbstractFileSystem, base: str, published: set[str], dataset: str
) -> list[str]:
    """Remove from the report folder `base` the pages of versions of `dataset` (`<versions_root>/<name>`)
    that are no longer published there, and return their names.

    The report folder outlives its versions (DVC's `persist: true`; a version deleted, or republished under
    a new name), and a page of a version that is gone links to Data Docs and a card that are gone too, from
    no index. Only a folder directly in `base` that is not a published version, holds nothing but a page
    (`_page_files`) and whose evaluation document names a version of `dataset` (`_graded_under`) is
    touched, and that document stays: the record of a grading, costly to remake, from which the page comes
    back should the version (e.g. at another DVC revision) come back.
    """
    removed = []
    for entry in fs.ls(base, detail=True):
        folder = entry["name"].rstrip("/")
        name = folder.rsplit("/", 1)[-1]
        if entry.get("type") != "directory" or name in published:
            continue
        files = _page_files(fs, base, folder)
        if files is None or not _graded_under(fs, folder, dataset):
            continue
        fs.rm([f for f in files if f != f"{folder}/{DOCUMENT}"])
        _remove_empty_folders(fs, folder)
        removed.append(name)
    return removed


__all__ = [
    "EVALUATION_ROWS",
    "build_reports",
    "load_model",
    "normalize",
    "remove_stale_pages",
    "render_index",
    "write_page",
]
