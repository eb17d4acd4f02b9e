"""The report's charts: matplotlib figures rendered offline to inline SVG (no JavaScript, no download).

    histograms_svg(...)   accepted vs rejected score histograms, one panel per group, shared bins
    bars_svg(...)         per-class bars, one or more series side by side
    trend_svg(...)        one headline metric across versions, its floor or ceiling, flagged versions in red

Every figure is an explicit `matplotlib.figure.Figure` on an Agg canvas: no pyplot, no global state and no
rcParams changed, so charts can be drawn from Prefect's worker threads. Text is drawn as paths (no fonts
needed to view it). The numbers a chart shows ride on its root `<svg>` element as `data-*` attributes
(JSON), so tests and scripts read them back without parsing the drawing. matplotlib's group ids
(`figure_1`, `axes_1`, ...), which would repeat from chart to chart on one page, are dropped.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from html import escape

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLORS = {
    "accepted": "#2f9e44",
    "rejected": "#e8590c",
    "bar": "#1971c2",
    "real": "#868e96",
    "point": "#1971c2",
    "flagged": "#e03131",
    "bound": "#e03131",
    "threshold": "#212529",
}
SERIES_COLORS = ["#1971c2", "#868e96", "#7048e8", "#2f9e44"]
_GROUP_ID = re.compile(r'<g id="[^"]*"')
_NAMESPACES = re.compile(r' xmlns(:xlink)?="[^"]*"')


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=72, layout="constrained")
    FigureCanvasAgg(fig)  # explicit canvas: nothing goes through pyplot's global figure manager
    return fig


def _finite(value: object) -> float | None:
    """A float, or None for None, NaN and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _svg(fig: Figure, chart_id: str, title: str, data: Mapping[str, object]) -> str:
    """The figure as one `<svg>` element to inline in HTML, with id, role, label and `data-*` numbers."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = _GROUP_ID.sub("<g", _NAMESPACES.sub("", text))
    attributes = {"id": chart_id, "class": "chart", "role": "img", "aria-label": title}
    attributes.update({f"data-{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in data.items()})
    head = "".join(f' {k}="{escape(str(v))}"' for k, v in attributes.items())
    return "<svg" + head + text[len("<svg") :].rstrip() + "\n"


def _style(ax, labelsize: float = 7.0) -> None:
    ax.tick_params(labelsize=labelsize, length=2, pad=1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def histograms_svg(
    panels: Mapping[str, Mapping[str, Sequence[int]]],
    edges: Sequence[float],
    chart_id: str,
    title: str,
    threshold: float | None = None,
    columns: int = 5,
    prefix: str = "",
) -> str:
    """Overlaid accepted/rejected histograms, one panel per group (e.g. per class), on shared bin `edges`.

    `panels`: group -> series ("accepted", "rejected") -> counts per bin. `threshold` draws the filter's
    bound as a dashed line; panel titles are `prefix` + group. data-edges, data-counts ({group: {series: counts}}) and data-threshold.
    """
    n = max(len(panels), 1)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig = _figure(max(3.6, 1.9 * cols + 0.4), 1.35 * rows + 0.25)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    lo, hi = float(edges[0]), float(edges[-1])
    widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    for ax, (group, series) in zip(axes.flat, panels.items(), strict=False):
        for name, counts in series.items():
            ax.bar(edges[:-1], counts, width=widths, align="edge", color=COLORS.get(name), alpha=0.65, lw=0)
        if threshold is not None and lo <= threshold <= hi:
            ax.axvline(threshold, color=COLORS["threshold"], ls="--", lw=0.8)
        ax.set_title(f"{prefix}{group}", fontsize=8, pad=2)
        _style(ax)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=8)
    data = {"edges": [round(float(e), 6) for e in edges], "counts": panels, "threshold": threshold}
    return _svg(fig, chart_id, title, data)


def bars_svg(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    chart_id: str,
    title: str,
    ylim: tuple[float, float] | None = None,
) -> str:
    """Vertical bars per label (class), the series side by side; None or NaN leaves a gap.

    data-labels and data-values ({series: values}).
    """
    clean = {k: [_finite(v) for v in vs] for k, vs in series.items()}
    fig = _figure(max(3.2, 0.32 * len(labels) * max(len(clean), 1) + 0.8), 1.7)
    ax = fig.add_subplot()
    width = 0.8 / max(len(clean), 1)
    for i, (name, values) in enumerate(clean.items()):
        xs = [j + (i - (len(clean) - 1) / 2) * width for j in range(len(labels))]
        heights = [math.nan if v is None else v for v in values]
        ax.bar(xs, heights, width=width, color=SERIES_COLORS[i % len(SERIES_COLORS)], label=name, lw=0)
    ax.set_xticks(range(len(labels)), labels)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if len(clean) > 1:
        ax.legend(fontsize=6, frameon=False, loc="lower right")
    ax.set_title(title, fontsize=8, pad=2)
    _style(ax)
    return _svg(fig, chart_id, title, {"labels": list(labels), "values": clean})


def trend_svg(
    versions: Sequence[str],
    values: Sequence[float | None],
    chart_id: str,
    title: str,
    bound: float | None = None,
    kind: str | None = None,
    flagged: Sequence[bool] = (),
    ticks: Sequence[str] | None = None,
    bounds: Sequence[float | None] = (),
    limits: tuple[float, float] | None = None,
) -> str:
    """One metric across versions (oldest first): points joined by a line, a gap where a version has no
    value; the monitor's floor or ceiling (`kind`) as a dashed line, `bound` named on it; `flagged` versions
    as red points. `bounds`: the bound each version was graded against (None: none), a dashed segment across
    each version's column instead of one line at `bound`, so a version flagged under an earlier, stricter
    floor sits under its own.
    `ticks`: the x labels (e.g. the versions' dates; default the version names), first and last only when
    there are many. `limits`: the metric's range; the axis never runs further than a hair beyond it.

    data-versions, data-values, data-flagged, data-bound, data-bounds and data-kind.
    """
    clean = [_finite(v) for v in values]
    marks = [bool(f) for f in flagged] or [False] * len(clean)
    fig = _figure(3.1, 1.55)
    ax = fig.add_subplot()
    xs = list(range(len(clean)))
    ax.plot(xs, [math.nan if v is None else v for v in clean], color=COLORS["point"], lw=1.0)
    for flag in (False, True):
        pts = [(x, v) for x, v, f in zip(xs, clean, marks, strict=True) if v is not None and f == flag]
        if pts:
            px, py = zip(*pts, strict=True)
            color = COLORS["flagged" if flag else "point"]
            ax.scatter(px, py, s=22 if flag else 10, color=color, zorder=3, marker="o")
    steps = [_finite(b) for b in bounds]
    if any(b is not None for b in steps):  # a dashed segment across each version's column, at its bound
        for x, b in zip(xs, steps, strict=True):
            if b is not None:
                ax.hlines(b, x - 0.5, x + 0.5, color=COLORS["bound"], ls="--", lw=0.9)
    elif bound is not None:
        ax.axhline(bound, color=COLORS["bound"], ls="--", lw=0.9)
    if bound is not None:
        ax.annotate(
            f"{kind or 'bound'} {bound:g}",
            (1.0, bound),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=6,
            color=COLORS["bound"],
        )
    ax.set_xlim(-0.5, max(len(clean), 1) - 0.5)
    labels = list(ticks if ticks is not None else versions)
    if len(labels) <= 6:
        ax.set_xticks(xs, labels, fontsize=5)
    elif labels:
        ax.set_xticks([0, len(xs) - 1], [labels[0], labels[-1]], fontsize=5)
    finite = [v for v in clean if v is not None] + [b for b in [bound, *steps] if b is not None]
    if finite and max(finite) == min(finite):
        pad = abs(finite[0]) * 0.05 or 0.05
        ax.set_ylim(finite[0] - pad, finite[0] + pad)
    if limits is not None and finite:
        low, high = ax.get_ylim()
        hair = 0.04 * (high - low)  # room for a marker drawn at the range's end
        ax.set_ylim(max(low, limits[0] - hair), min(high, limits[1] + hair))
    ax.set_title(title, fontsize=8, pad=2)
    _style(ax, 6)
    data = {
        "versions": list(versions),
        "values": clean,
        "flagged": marks,
        "bound": bound,
        "bounds": steps,
        "kind": kind,
    }
    return _svg(fig, chart_id, title, data)
