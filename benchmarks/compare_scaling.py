"""Did a change move the data-scaling gap? Two `data_scaling.py` runs compared size by size, paired by seed.

Both runs must hold the same real line (the same real fits to the last digit: same seeds, sizes, recipe,
kernels and thread count), so their rows differ only in their synthetic digits. Then, at every size both
measured, the change of the gap is the change of synthetic accuracy: 100 x (after - before) for each seed
both hold, its mean and 95% Student-t interval (`benchmarks.common.paired_points`). Positive: the `after`
run's synthetic digits train better classifiers, its gap is narrower. An interval that holds 0 is a change
the seeds cannot tell from noise.

    python benchmarks/compare_scaling.py BEFORE.json AFTER.json [--out compare.json]

Exits 2 with one line when a file is missing or not a data-scaling run, or the real lines differ.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import paired_points, write_json  # noqa: E402


class CompareError(ValueError):
    """Two runs that cannot be compared: the one line says why."""


def _rows(doc: dict[str, Any], source: str) -> dict[int, list[dict[str, Any]]]:
    """{size: [{seed, accuracy}, ...]} of one line of a data_scaling.py document."""
    return {
        r["size"]: [{"seed": s, "accuracy": a} for s, a in zip(r["seeds"], r["per_seed"], strict=True)]
        for r in doc[source]
    }


def load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CompareError(f"{path}: not a readable JSON file ({err.__class__.__name__})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("real", "synthetic")):
        raise CompareError(f"{path}: not a data_scaling.py document (no 'real' and 'synthetic' rows)")
    return doc


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per size both runs measured: both gaps' means and the synthetic change paired by seed."""
    real_before, real_after = _rows(before, "real"), _rows(after, "real")
    if real_before != real_after:
        raise CompareError(
            "the two runs' real lines differ (seeds, sizes, recipe or thread count): their gaps differ by"
            " more than their synthetic digits"
        )
    syn_before, syn_after = _rows(before, "synthetic"), _rows(after, "synthetic")
    gaps = [{g["size"]: g["mean"] for g in doc.get("gap_points", [])} for doc in (before, after)]
    return [
        {
            "size": n,
            "gap_before": gaps[0].get(n),
            "gap_after": gaps[1].get(n),
            "narrower_by": paired_points(syn_before[n], syn_after[n]),
        }
        for n in sorted(set(syn_before) & set(syn_after) & set(real_before))
    ]


def _points(value: float | None, sign: str = "") -> str:
    return "n/a" if value is None else f"{value:{sign}.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        rows = compare(load(args.before), load(args.after))
    except CompareError as err:
        print(f"compare_scaling: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for r in rows:
        d = r["narrower_by"]
        lo, hi = d["interval"]
        shown = "[n/a]" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"  # fewer than two seeds
        print(
            f"{r['size']:>6}: gap {_points(r['gap_before'])} -> {_points(r['gap_after'])} points;"
            f" narrower by {_points(d['mean'], '+')} {shown} ({len(d['seeds'])} seeds)"
        )
    if args.out:
        write_json(args.out, {"before": str(args.before), "after": str(args.after), "sizes": rows})


if __name__ == "__main__":
    main()
