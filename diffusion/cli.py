"""`digits`: the thin entry points that `dvc.yaml` calls, one subcommand per stage.

Each subcommand validates the whole `params.yaml` first, takes its paths exactly as `dvc.yaml`
passes them, calls one library function and writes its outputs atomically. Any `DigitsError`
(bad params, data, checkpoint or model name) prints one line `error: ...` and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffusion.checkpoint import write_bytes_atomic, write_json_atomic
from diffusion.config import Params, load_params
from diffusion.errors import DigitsError


def write_csv_atomic(path: str | Path, rows: list[dict]) -> None:
    """Write rows (dicts with the same keys) as CSV, atomically: the format of DVC plots."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


# --------------------------------------------------------------------------- stages
def cmd_prepare(params: Params, args: argparse.Namespace) -> None:
    from diffusion.data.datasets import load_arrays
    from diffusion.data.images import save_grid
    from diffusion.data.prepare import prepare

    metrics = prepare(params.data, Path(args.out))
    images, labels = load_arrays(Path(args.out) / "train.parquet")
    per_class = [images[labels == c][:10] for c in range(10)]
    save_grid(np.concatenate(per_class), args.grid, ncols=10)
    write_json_atomic(args.metrics, metrics)
    print(f"prepared {metrics['total']} digits from {metrics['source']} into {args.out}")


# --------------------------------------------------------------------------- wiring
STAGES: dict[str, tuple[Callable[[Params, argparse.Namespace], None], list[str], str]] = {
    "prepare": (cmd_prepare, ["out", "metrics", "grid"], "split a real source into Parquet files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digits", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (_, paths, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
        for path in paths:
            p.add_argument(f"--{path.replace('_', '-')}", dest=path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
        STAGES[args.stage][0](params, args)
    except DigitsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
