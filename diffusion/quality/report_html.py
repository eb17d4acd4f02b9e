"""HTML pieces of the data-quality report: the page, value cells, inline SVG charts and the sections
that come straight from the manifest and the evaluation dict.

Pure string building, no I/O and nothing of ours imported. Every number is written in an element
that carries an `id` or `data-*` attributes (e.g. `<td id="cas_ratio" data-value="0.9912">0.991</td>`),
so tests and scripts can read the page back. Charts are inline SVG: no JavaScript, no external resource.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

MISSING = "not evaluated"
# (label, key, comparison label, comparison key) of the evaluation table; gate_* keys are the manifest's gate.
EVALUATION_ROWS: list[tuple[str, str, str, str | None]] = [
    (
        "Evaluator accuracy (published)",
        "conditional_accuracy_published",
        "unfiltered",
        "conditional_accuracy_raw",
    ),
    (
        "Filter classifier accuracy (published)",
        "judge_accuracy_published",
        "unfiltered",
        "judge_accuracy_raw",
    ),
    ("Train on synthetic, test on real", "cas_accuracy", "train on real", "real_baseline_accuracy"),
    ("CAS ratio", "cas_ratio", "", None),
    ("Augmentation gain", "augmentation_gain", "", None),
    ("Fréchet distance to real", "frechet_distance", "real vs real", "frechet_distance_real"),
    ("Diversity (synthetic)", "diversity_synthetic", "real", "diversity_real"),
    ("Memorisation rate (evaluation)", "memorization_rate", "gate", "gate_memorization_rate"),
    ("Duplicate rate (evaluation)", "duplicate_rate", "gate", "gate_duplicate_rate"),
]
PROMINENT = {"cas_ratio": "CAS ratio", "conditional_accuracy_published": "Evaluator accuracy"}
COUNT_FIELDS = ["requested", "sampled", "accepted", "batches", "acceptance_rate"]
COLORS = {
    "accepted": "#2f9e44",
    "rejected": "#e8590c",
    "acceptance rate": "#1971c2",
    "conditional accuracy": "#7048e8",
    "CAS ratio": "#2f9e44",
    "memorisation (gate)": "#e03131",
}

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #212529; margin: 24px auto; max-width: 1180px; }
body { padding: 0 16px; } h1 { font-size: 22px; margin-bottom: 2px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #dee2e6; }
.sub { color: #6c757d; margin-top: 0; } a { color: #1971c2; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { padding: 3px 10px; text-align: left; border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.missing { color: #adb5bd; font-style: italic; }
code, .mono { font-family: ui-monospace, monospace; font-size: 12px; }
.cards { display: flex; gap: 14px; flex-wrap: wrap; margin: 14px 0; }
.card { border: 1px solid #dee2e6; border-radius: 8px; padding: 10px 16px; min-width: 170px; }
.card .label { color: #6c757d; font-size: 12px; } .card .value { font-size: 28px; font-weight: 600; }
.card.prominent { border-color: #1971c2; background: #e7f5ff; }
.grid { display: grid; grid-template-columns: 48px repeat(3, 1fr); gap: 6px 14px; align-items: start; }
.grid .head { font-weight: 600; color: #495057; }
.digit { font-size: 26px; font-weight: 600; text-align: center; }
figure { margin: 0; } figcaption { color: #6c757d; font-size: 12px; } img { image-rendering: pixelated; }
.charts { display: flex; flex-wrap: wrap; gap: 10px 18px; } .legend span { margin-right: 14px; }
#versions td:first-child, #versions td:nth-child(2) { white-space: nowrap; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
"""


def fmt(value: object, digits: int | None = 3) -> str:
    """A value as shown: floats with `digits` decimals (as written if None), others as is, None as "n/a"."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isfinite(value) and digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


def attrs(attributes: Mapping[str, object]) -> str:
    """` key="value"` pairs, escaped; `data_x` names become `data-x`; None values are left out."""
    return "".join(
        f' {k.replace("_", "-") if k.startswith("data_") else k}="{escape(str(v))}"'
        for k, v in attributes.items()
        if v is not None
    )


def cell(
    value: object,
    missing: str = "n/a",
    tag: str = "td",
    digits: int | None = 3,
    cls: str | None = None,
    **attributes: object,
) -> str:
    """One value in its element, the raw value in `data-value`: `<td id=.. data-value=..>0.991</td>`.

    None shows `missing` (class "missing"); numbers get class "num"; `cls` adds a class of the caller's.
    """
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    classes = " ".join(
        c for c in (cls, "num" if numeric else None, "missing" if value is None else None) if c
    )
    shown = {**attributes, "data_value": value, "class": classes or None}
    return f"<{tag}{attrs(shown)}>{escape(missing if value is None else fmt(value, digits))}</{tag}>"


def table(headers: Sequence[str], rows: Sequence[str], table_id: str | None = None) -> str:
    """A table of pre-rendered `<tr>` rows under plain headers."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table{attrs({'id': table_id})}><tr>{head}</tr>{''.join(rows)}</table>"


def legend(names: Sequence[str]) -> str:
    return (
        '<div class="legend">'
        + "".join(
            f'<span><i class="swatch" style="background:{COLORS[n]}"></i>{escape(n)}</span>' for n in names
        )
        + "</div>"
    )


def svg_histogram(
    series: Mapping[str, Sequence[int]],
    edges: Sequence[float],
    chart_id: str,
    title: str,
    marker: float | None = None,
    width: int = 250,
    height: int = 120,
) -> str:
    """Overlaid bar histograms (series name -> counts per bin) on shared bin `edges`.

    Each bar carries data-series, data-bin and data-count; `marker` draws the filter threshold.
    """
    left, bottom, top = 30, 18, 16
    plot_w, plot_h = width - left - 6, height - bottom - top
    peak = max([1, *(c for counts in series.values() for c in counts)])
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    bar_w = plot_w / max(len(edges) - 1, 1)
    parts = [f'<text x="{left}" y="11" font-size="11" font-weight="600">{escape(title)}</text>']
    for name, counts in series.items():
        for i, count in enumerate(counts):
            h = plot_h * count / peak
            parts.append(
                f'<rect x="{left + i * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{h:.1f}" fill="{COLORS[name]}" fill-opacity="0.65"'
                f"{attrs({'data_series': name, 'data_bin': i, 'data_count': count})}>"
                f"<title>{escape(name)}: {count} in [{edges[i]:.2f}, {edges[i + 1]:.2f})</title></rect>"
            )
    if marker is not None and lo <= marker <= hi:
        x = left + plot_w * (marker - lo) / span
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#212529" '
            f'stroke-dasharray="3,2" data-threshold="{marker}">'
            f"<title>filter threshold {marker}</title></line>"
        )
    parts += [
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#868e96"/>',
        f'<text x="{left}" y="{height - 4}" font-size="10">{lo:.2f}</text>',
        f'<text x="{left + plot_w}" y="{height - 4}" font-size="10" text-anchor="end">{hi:.2f}</text>',
        f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{peak}</text>',
    ]
    return f'<svg id="{escape(chart_id)}" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def svg_bars(values: Mapping[str, float], chart_id: str, vmax: float = 1.0, height: int = 150) -> str:
    """Vertical bars (label -> value in [0, vmax]) with their values above them."""
    left, bottom, top, bar = 8, 18, 16, 44
    plot_h = height - bottom - top
    parts = []
    for i, (label, value) in enumerate(values.items()):
        h = plot_h * min(max(value / vmax, 0.0), 1.0)
        x = left + i * bar
        parts += [
            f'<rect x="{x}" y="{top + plot_h - h:.1f}" width="{bar - 8}" height="{h:.1f}" '
            f'fill="{COLORS["acceptance rate"]}"{attrs({"data_label": label, "data_value": value})}/>',
            f'<text x="{x + (bar - 8) / 2}" y="{top + plot_h - h - 3:.1f}" font-size="10" '
            f'text-anchor="middle">{value:.2f}</text>',
            f'<text x="{x + (bar - 8) / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
            f"{escape(label)}</text>",
        ]
    width = left + bar * max(len(values), 1)
    return f'<svg id="{escape(chart_id)}" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def svg_trend(
    labels: Sequence[str], series: Mapping[str, Sequence[float | None]], chart_id: str, height: int = 170
) -> str:
    """Lines with points, one per series, over `labels` (versions, oldest first); None or NaN leaves a gap."""
    series = {k: [v if v is not None and math.isfinite(v) else None for v in vs] for k, vs in series.items()}
    left, bottom, top = 34, 20, 10
    step = max(6.0, min(90.0, 1000 / max(len(labels), 1)))  # a year of daily versions stays on screen
    plot_h = height - bottom - top
    peak = max([1.0, *(v for vs in series.values() for v in vs if v is not None)])
    width = round(left + step * max(len(labels), 1))

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    parts = [
        f'<line x1="{left}" x2="{width}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#868e96"/>',
        f'<text x="{left - 4}" y="{y(peak) + 4:.1f}" font-size="10" text-anchor="end">{peak:.2f}</text>',
        f'<text x="{left - 4}" y="{y(0):.1f}" font-size="10" text-anchor="end">0</text>',
    ]
    for name, values in series.items():
        segments: list[list[str]] = [[]]
        for i, v in enumerate(values):
            x = left + step * (i + 0.5)
            if v is None:
                segments.append([])
            else:
                segments[-1].append(f"{x:.1f},{y(v):.1f}")
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y(v):.1f}" r="3" fill="{COLORS[name]}"'
                    f"{attrs({'data_series': name, 'data_version': labels[i], 'data_value': v})}>"
                    f"<title>{escape(labels[i])} {escape(name)}: {v:.3f}</title></circle>"
                )
        parts += [
            f'<polyline points="{" ".join(s)}" fill="none" stroke="{COLORS[name]}" stroke-width="1.5"/>'
            for s in segments
            if len(s) > 1
        ]
    return f'<svg id="{escape(chart_id)}" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def evaluation_section(evaluation: dict[str, Any] | None, gate: dict[str, Any]) -> str:
    """Cards with the CAS ratio and evaluator accuracy, then every headline number beside its comparison.

    Cells are `id`-ed by their key (gate rates as `gate_<key>`); a missing one reads "not evaluated".
    """
    values = {**(evaluation or {}), **{f"gate_{k}": v for k, v in gate.items()}}

    def value(key: str | None) -> str:
        if key is None:
            return "<td></td>"
        return cell(values.get(key), "n/a" if key.startswith("gate_") else MISSING, id=key)

    cards = "".join(
        f'<div class="card prominent"><div class="label">{label}</div>'
        f"{cell(values.get(key), MISSING, 'div', cls='value', data_metric=key)}</div>"
        for key, label in PROMINENT.items()
    )
    rows = [
        f"<tr><td>{escape(label)}</td>{value(key)}<td>{escape(other_label)}</td>{value(other)}</tr>"
        for label, key, other_label, other in EVALUATION_ROWS
    ]
    status = "not evaluated: no evaluation of this version was given"
    note = "" if evaluation else f'<p class="missing" id="evaluation-status">{status}</p>'
    return f'<div class="cards">{cards}</div>{note}' + table(
        ["measure", "value", "", "compared with"], rows, "evaluation"
    )


def acceptance_section(counts: dict[str, dict[str, Any]]) -> str:
    """The manifest's per-class counts (cells `<field>-<class>`, totals `total_<field>`) and a bar chart."""
    ordered = sorted(counts.items(), key=lambda kv: int(kv[0]))
    rows = [
        f"<tr><td>{escape(c)}</td>" + "".join(cell(v.get(f), id=f"{f}-{c}") for f in COUNT_FIELDS) + "</tr>"
        for c, v in ordered
    ]
    total = {f: sum(v.get(f) or 0 for v in counts.values()) for f in COUNT_FIELDS[:-1]}
    rate = total["accepted"] / total["sampled"] if total["sampled"] else None
    cells = [cell(x, id=f"total_{f}") for f, x in total.items()]
    rows.append(f"<tr><th>all</th>{''.join(cells)}{cell(rate, id='total_acceptance_rate')}</tr>")
    bars = svg_bars({c: float(v.get("acceptance_rate") or 0.0) for c, v in ordered}, "acceptance-bars")
    return f"<h2>Acceptance per class</h2>{table(['class', *COUNT_FIELDS], rows, 'acceptance')}{bars}"


def params_section(manifest: dict[str, Any]) -> str:
    """Generation params (cells `param_<name>`), provenance (cells by field name) and package versions."""
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

    def rows(pairs: list[tuple[str, Any]], prefix: str, cls: str | None = None) -> list[str]:
        return [
            f"<tr><td>{escape(k)}</td>{cell(v, digits=None, cls=cls, id=prefix + k.replace('.', '_'))}</tr>"
            for k, v in pairs
        ]

    packages = [
        f"<tr><td>{escape(k)}</td>{cell(v, data_package=k)}</tr>"
        for k, v in sorted(manifest.get("packages", {}).items())
    ]
    return (
        f"<h2>Params</h2>{table(['param', 'value'], rows(settings, 'param_'), 'params')}"
        f"<h2>Provenance</h2>{table(['field', 'value'], rows(provenance, '', 'mono'), 'provenance')}"
        f"{table(['package', 'version'], packages, 'packages')}"
    )


def page(title: str, body: str) -> str:
    """A whole self-contained HTML document."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
