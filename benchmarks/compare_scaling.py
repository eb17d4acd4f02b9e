"""Did a change move the data-scaling gap? Two `data_scaling.py` runs compared size by size, paired by seed.

Both runs must hold the same real line (the same real fits to the last digit: same seeds, sizes, recipe,
kernels and thread count), so their rows differ only in their synthetic digits. Then, at every size both
measured, the change of the gap is the change of synthetic accuracy: 100 x (after - before) for each seed
both hold, its mean and 95% Student-t interval (`benchmarks.common.paired_points`). Positive: the `after`
run's synthetic digits train better classifiers, its gap is narrower. An interval that holds 0 is a change
the seeds cannot tell from noise.

    python benchmarks/compare_scaling.py BEFORE.json AFTER.json [--out compare.json]

Exits 2 with one line when a file is missing or not a data-scaling run, when the two share no size, or
when their real lines differ at a size they share.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import paired_points, write_json  # noqa: E402


class CompareError(ValueError):
    """Two runs that cannot be compared: the one line says why."""


@dataclass(frozen=True)
class Run:
    """One data_scaling.py document: per line ('real', 'synthetic'), {size: [{seed, accuracy}, ...]}, and
    the mean gap in points at each size of its `gap_points`."""

    path: Path
    real: dict[int, list[dict[str, Any]]]
    synthetic: dict[int, list[dict[str, Any]]]
    gaps: dict[int, float]


def load(path: Path) -> Run:
    """Read a data_scaling.py document; CompareError (one line naming the file) for anything else."""
    try:
        doc = json.loads(path.read_text())
        lines = {
            source: {
                int(r["size"]): [
                    {"seed": int(seed), "accuracy": float(acc)}
                    for seed, acc in zip(r["seeds"], r["per_seed"], strict=True)
                ]
                for r in doc[source]
            }
            for source in ("real", "synthetic")
        }
        gaps = {int(g["size"]): float(g["mean"]) for g in doc.get("gap_points", []) if g["mean"] is not None}
    except OSError as err:
        raise CompareError(f"{path}: cannot read it ({err.strerror or err})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise CompareError(
            f"{path}: not a data_scaling.py document ({err.__class__.__name__}: {err})"
        ) from None
    return Run(path, lines["real"], lines["synthetic"], gaps)


def compare(before: Run, after: Run) -> list[dict[str, Any]]:
    """One row per size both runs measured on both lines: both gaps' means and the synthetic change
    paired by seed. CompareError when they share no such size or their real fits differ there."""
    sizes = sorted(set(before.real) & set(after.real) & set(before.synthetic) & set(after.synthetic))
    if not sizes:
        raise CompareError(f"{before.path} and {after.path} measured no size in common on both lines")
    differ = [n for n in sizes if before.real[n] != after.real[n]]
    if differ:
        raise CompareError(
            f"the two runs' real lines differ at {', '.join(map(str, differ))} digits (seeds, recipe, test"
            " split or thread count): their gaps differ by more than their synthetic digits"
        )
    return [
        {
            "size": n,
            "gap_before": before.gaps.get(n),
            "gap_after": after.gaps.get(n),
            "narrower_by": paired_points(before.synthetic[n], after.synthetic[n]),
        }
        for n in sizes
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
