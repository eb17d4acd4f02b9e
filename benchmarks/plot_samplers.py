"""Plot a sampler benchmark (benchmarks/samplers.py's JSON) as an SVG: evaluator accuracy and Frechet distance
against network evaluations per image (log x), one line per guidance, each point labelled by sampler and steps.
Dotted grey lines mark the Frechet distance of as many real digits: the floor at each sample size.

    python benchmarks/plot_samplers.py benchmarks/results/samplers-cpu.json benchmarks/results/samplers-cpu.svg
"""

from __future__ import annotations

import json
import math
import sys
from html import escape
from pathlib import Path

if __package__ in (None, ""):  # run as a script: `benchmarks` is importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.plot_sweep import PAD, y_frame  # noqa: E402

COLOURS = ["#888", "#1f77b4", "#2ca02c", "#d62728", "#9467bd"]  # one per guidance, in increasing w
SHORT = {"ddpm": "DDPM", "ddim": "DDIM", "dpm-solver++": "DPM++"}
TICKS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
W, H = 420, 300


def panel(rows: list[dict], key: str, title: str, x0: int, lo: float, hi: float) -> list[str]:
    """One chart: evaluations per image on a log x axis, `key` on y in [lo, hi], one line per guidance."""
    evals = [r["evals_per_image"] for r in rows]
    left, right = math.log(min(evals) / 1.3), math.log(max(evals) * 1.3)

    def sx(v: float) -> float:
        return x0 + PAD + (math.log(v) - left) / (right - left) * (W - 2 * PAD)

    sy, out = y_frame(x0, title, lo, hi, W, H, fmt=".3g")
    for t in (t for t in TICKS if left <= math.log(t) <= right):
        out.append(f'<text x="{sx(t)}" y="{H - PAD + 15}" text-anchor="middle" font-size="10">{t}</text>')
    out.append(
        f'<text x="{x0 + W / 2}" y="{H - PAD + 32}" text-anchor="middle" font-size="11">'
        "network evaluations per image</text>"
    )
    if key == "frechet_distance":
        for images, floor in sorted({(r["images"], r["frechet_real_floor"]) for r in rows}):
            y = sy(floor)
            out.append(
                f'<line x1="{x0 + PAD}" x2="{x0 + W - PAD}" y1="{y}" y2="{y}" stroke="#aaa" stroke-dasharray="2,3"/>'
            )
            out.append(
                f'<text x="{x0 + W - PAD}" y="{y - 3}" text-anchor="end" font-size="9" fill="#888">'
                f"real, {images} digits</text>"
            )
    for colour, w in zip(COLOURS, sorted({r["guidance"] for r in rows}), strict=False):
        pts = sorted(
            (r for r in rows if r["guidance"] == w), key=lambda r: (r["evals_per_image"], r["sampler"])
        )
        xy = [(sx(r["evals_per_image"]), sy(r[key])) for r in pts]
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(f"{x},{y}" for x, y in xy)}"/>'
        )
        for r, (x, y) in zip(pts, xy, strict=True):
            out.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>')
            label = f"{SHORT.get(r['sampler'], r['sampler'])} {r['steps']}"
            dy = 11 if r["sampler"] == "dpm-solver++" else -4  # below, so it clears DDIM's at the same x
            out.append(f'<text x="{x + 4}" y="{y + dy}" font-size="8" fill="{colour}">{label}</text>')
    return out


def nice_top(value: float) -> float:
    """The smallest 4 x (1, 1.5, 2, 2.5, 3, 4 or 5 x 10^k) at or above `value`: four round grid steps."""
    step = value / 4
    scale = 10 ** math.floor(math.log10(step)) if step > 0 else 1.0
    return 4 * scale * next(m for m in (1, 1.5, 2, 2.5, 3, 4, 5, 10) if m * scale >= step)


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    doc = json.loads(src.read_text())
    rows = doc["rows"]
    accuracy = [r["evaluator_accuracy"] for r in rows]
    frechet = [r[k] for r in rows for k in ("frechet_distance", "frechet_real_floor")]
    acc_lo = 1.0 - nice_top(max(1.05 * (1.0 - min(accuracy)), 0.05))  # four round steps down from 1
    parts = panel(rows, "evaluator_accuracy", "Evaluator accuracy", 0, acc_lo, 1.0)
    parts += panel(
        rows,
        "frechet_distance",
        "Fréchet distance to the real test digits",
        W,
        0.0,
        nice_top(1.05 * max(frechet)),
    )
    guidance = sorted({r["guidance"] for r in rows})
    legend = [
        f'<text x="{60 + i * 90}" y="{H + 10}" font-size="11" fill="{c}">&#9632; w = {w:g}</text>'
        for i, (c, w) in enumerate(zip(COLOURS, guidance, strict=False))
    ]
    caption = escape(f"{doc['machine']}, {rows[0]['precision']}, {doc['date'][:10]}. {doc.get('note', '')}")
    legend.append(
        f'<text x="{2 * W - 10}" y="{H + 10}" text-anchor="end" font-size="9" fill="#666">{caption}</text>'
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 20}" font-family="sans-serif">'
    )
    dst.write_text(svg + "".join(parts + legend) + "</svg>\n")


if __name__ == "__main__":
    main()
