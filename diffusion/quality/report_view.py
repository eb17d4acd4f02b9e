"""A version's evaluation document as the report shows it: normalised, then cut into what the templates
render (flag list, headline cards, evaluation table, per-class table and charts, confusion, CAS runs).

    doc = normalize(document)            every section present, metrics as numbers or None
    metric_rows(doc, gate)               the evaluation table, one row per metric, beside its comparison
    monitor_bound(doc, key)              the floor or ceiling the monitor checked `key` against, and which
    with_gate(metrics, manifest["gate"]) the metrics with the publish gate's rates read from the manifest

A document is the one JSON file `diffusion.quality.grading` writes (an old flat one, metrics at the top
level, reads as unflagged metrics). Every function takes the normalised document or None (not evaluated).
"""

from __future__ import annotations

import math
from typing import Any

from diffusion.data.evaluations import FLAT_NAMES
from diffusion.quality import charts
from diffusion.quality.headline import METRICS
from diffusion.quality.report_html import MISSING, markup

# (label, key, comparison label, comparison key) of the evaluation table.
EVALUATION_ROWS: list[tuple[str, str, str, str | None]] = [
    ("Evaluator accuracy (published)", "conditional_accuracy_published", "unfiltered", "conditional_accuracy_raw"),
    ("Filter classifier accuracy (published)", "judge_accuracy_published", "unfiltered", "judge_accuracy_raw"),
    ("Train on synthetic, test on real", "cas_accuracy", "train on real", "real_baseline_accuracy"),
    ("CAS ratio", "cas_ratio", "", None),
    ("Augmentation gain", "augmentation_gain", "", None),
    ("Fréchet distance to real", "frechet_distance", "real vs real", "frechet_distance_real"),
    ("Diversity (synthetic)", "diversity_synthetic", "real", "diversity_real"),
    ("Near-copy rate (publish gate, manifest.json)", "memorization_rate", "", None),
    ("Duplicate rate (publish gate, manifest.json)", "duplicate_rate", "", None),
]  # fmt: skip
# Measured once, by the publish gate; the evaluation copies them from the manifest (`evaluate_version`), so
# the pages show the manifest's number, once, evaluated or not.
GATE_METRICS = ("memorization_rate", "duplicate_rate")
PROMINENT = {"cas_ratio": "CAS ratio", "conditional_accuracy_published": "Evaluator accuracy"}


def _number(value: Any) -> float | int | None:
    """A metric as shown: numbers as they are, NaN, infinities and anything else as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def normalize(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """An evaluation document with every section present (empty when absent), metrics as numbers or None.

    A document without "metrics" is an old flat one: its numeric top-level values are the metrics, flagged
    only by a true `flagged` (as `digits evaluate --metrics` writes it).
    """
    if doc is None:
        return None
    if isinstance(doc.get("metrics"), dict):
        metrics = {k: _number(v) for k, v in doc["metrics"].items()}
        flags = [f for f in doc.get("flags") or [] if isinstance(f, dict) and "metric" in f]
        flagged = bool(doc.get("flagged"))
    else:
        metrics = {k: _number(v) for k, v in doc.items() if k not in FLAT_NAMES}
        metrics = {k: v for k, v in metrics.items() if v is not None or doc[k] is None}
        flags, flagged = [], bool(doc.get("flagged"))
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


def with_gate(metrics: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """A version's metrics with the GATE_METRICS taken from its manifest's `gate` (where they are measured;
    the document's are copies), the document's kept where the manifest has none."""
    measured = {k: _number(gate.get(k)) for k in GATE_METRICS}
    return {**metrics, **{k: v for k, v in measured.items() if v is not None}}


def monitor_bound(doc: dict[str, Any], key: str) -> tuple[float | None, str | None]:
    """The monitor's floor or ceiling on `key` that the document was checked against, and which."""
    if key in doc["floors"]:
        return doc["floors"][key], "floor"
    if key in doc["ceilings"]:
        return doc["ceilings"][key], "ceiling"
    return None, None


def _label(key: str) -> str:
    metric = METRICS.get(key)
    return metric.label if metric else key.replace("_", " ")


def flags(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The document's flags, each with its metric's label and its value as shown."""
    return [
        {**f, "label": _label(f["metric"]), "value": _number(f.get("value"))}
        for f in (doc["flags"] if doc else [])
    ]


def cards(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The headline cards at the top of the page: the PROMINENT metrics, flagged or not."""
    metrics = doc["metrics"] if doc else {}
    flagged = {f["metric"] for f in doc["flags"]} if doc else set()
    return [
        {
            "key": key,
            "label": label,
            "value": metrics.get(key),
            "missing": "n/a" if key in metrics else MISSING,
            "flagged": key in flagged,
        }
        for key, label in PROMINENT.items()
    ]


def metric_rows(doc: dict[str, Any] | None, gate: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation table: the known pairs first, then every other headline metric, then anything else
    the document holds. Keys with no value read "not evaluated" (absent) or "n/a" (not measured)."""
    metrics = doc["metrics"] if doc else {}
    values = with_gate(metrics, gate)
    flagged = {f["metric"] for f in doc["flags"]} if doc else set()
    pairs = {key: (label, other_label, other) for label, key, other_label, other in EVALUATION_ROWS}
    for key in METRICS:  # a measure with a real-against-real reference (PRDC, DCR) shows it beside it
        if key not in pairs and f"{key}_real" in metrics:
            pairs[key] = (_label(key), "real vs real", f"{key}_real")
    compared = {other for *_, other in pairs.values() if other}
    keys = [key for _, key, _, _ in EVALUATION_ROWS]
    keys += [k for k in METRICS if k not in keys]
    keys += sorted(k for k in metrics if k not in keys and k not in compared)
    intervals = doc["intervals"] if doc else {}

    def missing(key: str | None) -> str:
        if key is None:
            return "n/a"
        if key in GATE_METRICS:
            return "not recorded"  # an old manifest without the gate's rates, and no document
        return "n/a" if key in values else MISSING

    rows = []
    for key in keys:
        label, other_label, other = pairs.get(key, (_label(key), "", None))
        bound, kind = monitor_bound(doc, key) if doc else (None, None)
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


def per_class(doc: dict[str, Any] | None) -> dict[str, Any] | None:
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


def confusion(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    cells = [c for c in (doc["confusion"] if doc else []) if isinstance(c, dict)]
    if not cells:
        return None
    counts = {(int(c["actual"]), int(c["predicted"])): int(c.get("count") or 0) for c in cells}
    classes = sorted({a for a, _ in counts} | {p for _, p in counts})
    return {"classes": classes, "counts": counts, "peak": max([1, *counts.values()])}


def cas_runs(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    runs = [r for r in (doc["cas_runs"] if doc else []) if isinstance(r, dict)]
    if not runs:
        return None
    fields = list(dict.fromkeys(k for r in runs for k in r))
    return {"fields": fields, "rows": [{f: _number(r.get(f)) for f in fields} for r in runs]}


__all__ = [
    "EVALUATION_ROWS",
    "GATE_METRICS",
    "PROMINENT",
    "cards",
    "cas_runs",
    "confusion",
    "flags",
    "metric_rows",
    "monitor_bound",
    "normalize",
    "per_class",
    "with_gate",
]
