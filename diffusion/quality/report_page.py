"""One published version's report page: its evaluation document (`report_view`), its digits
(`report_digits`), its manifest's counts, settings and provenance, and "how these digits were drawn".

    page = write_page(version, document, out_dir, model=load_model(folder), page_dir=None)

    <out_dir>/index.html                 the page: one HTML file, inline SVG charts, no JavaScript
    <out_dir>/*.png                      per-class digit grids, the sampler trajectory, label-issue digits

The page is a Jinja2 template (`templates/version.html.j2`, via `report_html`), its charts matplotlib figures
(`charts`). "How these digits were drawn" is a seeded draw through the version's sampler (`trajectory`), made
when a diffusion model is given and it is the one that drew the version. The page is written last, after the
images it shows; every number sits in an element with an `id` or `data-*` attribute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import ValidationError

from diffusion.checkpoint import CheckpointError, file_sha256, write_bytes_atomic
from diffusion.config import SamplerConfig
from diffusion.data.shards import PublishedVersion
from diffusion.errors import DataError, DigitsError
from diffusion.quality import charts, report_view
from diffusion.quality.report_digits import SCALE, grids, histograms, label_issues, read_split
from diffusion.quality.report_html import markup, render
from diffusion.quality.report_styles import styles_section
from diffusion.quality.trajectory import PAD, draw_trajectory, save_trajectory_grid
from diffusion.styles import STYLES, cell_digit, cell_name, cell_style, manifest_styles

TRAJECTORY_COLUMNS = 5
PAGE = "index.html"
COUNT_FIELDS = ["requested", "sampled", "accepted", "blocks", "batches", "acceptance_rate"]  # those present


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


def _shown_path(version: PublishedVersion) -> str:
    """Where the version lies, as the page prints it: relative to the working folder when it lies under it
    (a committed page names no machine's folders), else as it is."""
    local = _local_path(version.path)
    if local is None:
        return version.path
    relative = os.path.relpath(local)
    return version.path if relative.startswith("..") else relative


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
        [cell_name(int(c)) for c, _ in ordered],
        {"acceptance rate": [v.get("acceptance_rate") for _, v in ordered]},
        "acceptance-bars",
        "Acceptance rate per class",
        (0.0, 1.0),
    )
    rows = [{"class": cell_name(int(c)), "cells": {f: v.get(f) for f in fields}} for c, v in ordered]
    return {"fields": fields, "rows": rows, "totals": totals, "chart": markup(chart)}


@dataclass(frozen=True)
class _Model:
    """A loaded network for the trajectories (a diffusion model, or a student at one step count), and the
    checksum of the weights file it was loaded from (what manifests record as model.sha256)."""

    network: Any
    process: Any
    sha256: str
    device: Any


def drawn_steps(version: PublishedVersion) -> int | None:
    """The student's step count when the version was drawn by the `distilled` sampler, else None."""
    sampler = version.manifest.get("params", {}).get("sampler") or {}
    steps = sampler.get("steps")
    return steps if sampler.get("name") == "distilled" and isinstance(steps, int) else None


def load_model(
    folder: str | Path, device: str = "cpu", sha256: str | None = None, steps: int | None = None
) -> _Model:
    """The network of a `save_diffusion` folder (EMA weights), or of a student folder at `steps` (the
    version's; None draws nothing from a student: CheckpointError), on `device`, for `build_reports`.
    `sha256`: its weights file's checksum when the caller has just computed it (else it is computed here)."""
    from diffusion.device import resolve_device
    from diffusion.model.saved import load_diffusion
    from diffusion.model.student import is_student, load_student, weights_file

    resolved = resolve_device(device, "hardware.device")
    if is_student(folder):
        if steps is None:
            raise CheckpointError(f"{folder}: a student draws only versions of the distilled sampler")
        network, process = load_student(folder, steps, resolved)
    else:
        network, process = load_diffusion(folder, resolved)
        steps = None
    sha256 = sha256 or file_sha256(weights_file(folder, steps))
    return _Model(network, process, sha256, resolved)


def page_models(
    versions: list[PublishedVersion], folder: str | Path | None, device: str = "cpu"
) -> dict[str, _Model | None]:
    """The network each version's page draws "how these digits were drawn" with, by version name.

    `folder` given (a diffusion model or a student): that folder for every version, a student at each
    version's step count (`load_model`); `_drawing` still refuses it for a version another network drew.
    None: the folder each version's manifest names (`model.path`, as `digits generate` recorded it: the
    student's for the distilled sampler), where it is a folder here whose weights have the checksum the
    manifest records; each folder and step count loaded once. Otherwise None for that version (its page
    says why nothing is drawn)."""
    from diffusion.model.student import is_student, weights_file

    student = folder is not None and is_student(folder)
    checksums: dict[Path, str] = {}
    loaded: dict[tuple[str, int | None], _Model | None] = {}
    models: dict[str, _Model | None] = {}
    for v in versions:
        steps = drawn_steps(v)
        if folder is not None:
            key = (str(folder), steps if student else None)
            if key not in loaded:  # a student given for a version the teacher drew draws nothing
                drew = not (student and steps is None)
                loaded[key] = load_model(folder, device, steps=steps) if drew else None
            models[v.version] = loaded[key]
            continue
        recorded = v.manifest.get("model", {})
        path, expected = recorded.get("path"), recorded.get("sha256")
        weights = weights_file(path, steps) if isinstance(path, str) and "://" not in path else None
        models[v.version] = None
        if weights is None or not expected or not weights.is_file():
            continue
        if weights not in checksums:
            checksums[weights] = file_sha256(weights)
        if checksums[weights] != expected:  # retrained since: that folder did not draw this version
            continue
        if (path, steps) not in loaded:
            try:
                loaded[path, steps] = load_model(path, device, checksums[weights], steps)  # hashed above
            except DigitsError:  # a folder that is no checkpoint (any more): nothing drawn
                loaded[path, steps] = None
        models[v.version] = loaded[path, steps]
    return models


def _drawing(version: PublishedVersion, model: _Model | None) -> tuple[_Model, SamplerConfig, int] | str:
    """(the model, the version's sampler, its seed) for a fresh draw like the version's, or why not."""
    if model is None:
        return (
            "not drawn: the report was built without the network that drew this version (`digits report"
            " --model` its diffusion model's folder, or its student's for the distilled sampler)"
        )
    manifest = version.manifest
    expected = manifest.get("model", {}).get("sha256")
    if expected and expected != model.sha256:
        return (
            f"not drawn: the model given (sha256 {model.sha256[:12]}) is not the one that drew this version "
            f"(sha256 {expected[:12]})"
        )
    params = manifest.get("params", {})
    sampler = dict(params.get("sampler") or {})
    if sampler.get("name") != "ddim":  # read by ddim alone; older manifests may record it for any sampler
        sampler.pop("eta", None)
    try:
        cfg = SamplerConfig.model_validate(sampler)
    except ValidationError:
        return "not drawn: the manifest's sampler settings are not valid ones"
    return model, cfg, params.get("seed") if isinstance(params.get("seed"), int) else 0


def _style_of(version: PublishedVersion, drawing: tuple[_Model, SamplerConfig, int] | str) -> int | None:
    """The style code the trajectory's digits are drawn in: for a version guided on one condition (`guide:
    style` or `digit` needs a style), the style of its first requested (digit, style) cell; None (any style,
    as before) otherwise."""
    if isinstance(drawing, str) or drawing[1].guide == "all" or drawing[0].network.null_style is None:
        return None
    cells = sorted(int(c) for c in version.manifest.get("counts", {}))
    return cell_style(cells[0]) if cells else STYLES.index(manifest_styles(version.manifest)[0])


def _trajectory(
    drawing: tuple[_Model, SamplerConfig, int] | str, out_dir: Path, style: int | None = None
) -> tuple[dict | None, str]:
    """Draw and save `trajectory.png` with the version's sampler and seed (`_drawing`); what the page says
    of it, or None and why it was not drawn."""
    if isinstance(drawing, str):
        return None, drawing
    model, cfg, seed = drawing
    try:
        traj = draw_trajectory(
            model.network,
            model.process,
            cfg,
            seed,
            TRAJECTORY_COLUMNS,
            model.device,
            style=style,
        )
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
        ("guide", sampler.get("guide", "all")),
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
    doc = report_view.normalize(document)
    manifest = version.manifest
    train, unfiltered = read_split(version, "train"), read_split(version, "unfiltered")
    if train is None:
        raise DataError(f"{version.path}: the version has no train split")
    counts = manifest.get("counts", {})
    classes = sorted({*(cell_digit(int(c)) for c in counts), *train.column("label").to_pylist()})
    name = manifest.get("name", version.path.rstrip("/").rsplit("/", 2)[-2])
    link_dir = page_dir if page_dir is not None else str(out_dir)
    drawing = _drawing(version, model)
    trajectory, trajectory_status = _trajectory(drawing, out_dir, _style_of(version, drawing))
    context = {
        "title": f"{name} {version.version}: data quality",
        "name": name,
        "version": version.version,
        "path": _shown_path(version),
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
        "flags": report_view.flags(doc),
        "bounds_held": len(doc["floors"]) + len(doc["ceilings"]) if doc else 0,
        "cards": report_view.cards(doc),
        "metric_rows": report_view.metric_rows(doc, manifest.get("gate", {})),
        "per_class": report_view.per_class(doc),
        "confusion": report_view.confusion(doc),
        "cas_runs": report_view.cas_runs(doc),
        "label_issues": label_issues(doc, train, out_dir),
        "acceptance": _acceptance(counts),
        "trajectory": trajectory,
        "trajectory_status": trajectory_status,
        "styles": styles_section(version, document, out_dir, drawing, SCALE),
        "grids": grids(train, unfiltered, classes, out_dir),
        "histograms": histograms(
            unfiltered if unfiltered is not None else train,
            classes,
            manifest.get("params", {}).get("filter", {}),
        ),
        **_params(manifest),
    }
    page = out_dir / PAGE
    write_bytes_atomic(page, render("version.html.j2", **context).encode())
    return page


__all__ = ["PAGE", "load_model", "write_page"]
