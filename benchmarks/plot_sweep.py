"""Plot a guidance sweep (benchmarks/guidance_sweep.py's JSON) as an SVG: evaluator accuracy and CAS ratio
against guidance, one line per filter, CAS with its 95% interval.

    python benchmarks/plot_sweep.py benchmarks/results/guidance-sweep.json benchmarks/results/guidance-sweep.svg
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

COLOURS = {
    "none": "#888",
    "pred-match": "#1f77b4",
    "pred-match+clip-margin": "#2ca02c",
    "prob>=0.9": "#d62728",
}
W, H, PAD = 360, 260, 50


def y_frame(
    x0: float, title: str, lo: float, hi: float, width: int = W, height: int = H, fmt: str = ".3f"
) -> tuple[Callable[[float], float], list[str]]:
    """A panel's y scale (values clamped to [lo, hi]) and its SVG title and five labelled grid lines."""

    def sy(v: float) -> float:
        return PAD + (hi - min(max(v, lo), hi)) / (hi - lo) * (height - 2 * PAD)

    out = [f'<text x="{x0 + width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    for i in range(5):
        v = lo + i * (hi - lo) / 4
        out.append(f'<line x1="{x0 + PAD}" x2="{x0 + width - PAD}" y1="{sy(v)}" y2="{sy(v)}" stroke="#eee"/>')
        out.append(
            f'<text x="{x0 + PAD - 5}" y="{sy(v) + 4}" text-anchor="end" font-size="10">{v:{fmt}}</text>'
        )
    return sy, out


def panel(rows: list[dict], key: str, title: str, x0: int, lo: float, hi: float) -> list[str]:
    """One chart: guidance on x (log-spaced by rank), `key` on y in [lo, hi]."""
    ws = sorted({r["w"] for r in rows})
    sx = {w: x0 + PAD + i * (W - 2 * PAD) / max(len(ws) - 1, 1) for i, w in enumerate(ws)}
    sy, out = y_frame(x0, title, lo, hi)
    for w in ws:
        out.append(f'<text x="{sx[w]}" y="{H - PAD + 15}" text-anchor="middle" font-size="10">w={w:g}</text>')
    for name, colour in COLOURS.items():
        pts = sorted((r["w"], r) for r in rows if r["filter"] == name)
        if not pts:
            continue
        values = [(sx[w], sy(r[key][0] if isinstance(r[key], list) else r[key])) for w, r in pts]
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(f"{x},{y}" for x, y in values)}"/>'
        )
        for (_, r), (x, y) in zip(pts, values, strict=True):
            if isinstance(r[key], list):  # mean, half-width
                m, h = r[key]
                out.append(f'<line x1="{x}" x2="{x}" y1="{sy(m - h)}" y2="{sy(m + h)}" stroke="{colour}"/>')
            out.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>')
    return out


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    rows = []
    for r in json.loads(src.read_text())["rows"]:
        head, _, name = r["setting"].partition(" ")
        if head.startswith("w="):
            rows.append({**r, "w": float(head[2:]), "filter": name})
    parts = panel(rows, "evaluator_accuracy", "Evaluator accuracy on the kept digits", 0, 0.88, 1.0)
    parts += panel(rows, "cas_ratio", "CAS ratio (mean, 95% interval)", W, 0.95, 1.01)
    legend = [
        f'<text x="{60 + i * 170}" y="{H + 10}" font-size="11" fill="{c}">&#9632; {n}</text>'
        for i, (n, c) in enumerate(COLOURS.items())
    ]
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 20}" font-family="sans-serif">'
    )
    dst.write_text(svg + "".join(parts + legend) + "</svg>\n")


if __name__ == "__main__":
    main()
