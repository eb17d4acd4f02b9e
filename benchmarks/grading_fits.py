"""CAS's converged fits one after another (as grading ran them until 2026-12-08) against side by side.

    python benchmarks/grading_fits.py --version data/generated/synthetic-digits/<version> \
        --out benchmarks/results/grading-fits-cpu.json
    python benchmarks/grading_fits.py --smoke --out /tmp/grading-fits.json    # rendered digits, a minute

`cas()` with the recipe of params.yaml (`evaluate.cas`: seeds, epochs, patience) on the published version's
digits against the prepared splits, as `digits evaluate` calls it, twice in one process, in this order:
1. `here`: `FitPool(device, in_process=True)`: each fit in this process, one after another, on torch's
   threads (what grading did before diffusion/quality/fits.py);
2. `side_by_side`: `FitPool(device)`: as many one-thread worker processes as torch has threads (what
   grading does now), its workers' start included.
JSON (--out): machine, cores, threads, date, command, and per way: wall seconds, each seed's row, the means;
then `speedup` (here's wall / side by side's) and `max_abs_difference` of the metrics' means, epochs left out
(the fits of two thread counts end with other weights: a difference of training noise, not of the recipe).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import header, load_recipe, smoke_splits, write_json  # noqa: E402
from diffusion.data.datasets import DigitsDataset, open_version, published_dataset  # noqa: E402
from diffusion.quality.cas import Digits, cas  # noqa: E402
from diffusion.quality.fits import FitPool  # noqa: E402


def timed_cas(synthetic: Any, splits: list[DigitsDataset], recipe: Any, pool: FitPool) -> dict[str, Any]:
    """cas() with `pool` (closed after): wall seconds (the pool's start and stop included), rows, means."""
    start = time.perf_counter()
    with pool:
        scores = cas(synthetic, *splits, recipe, pool=pool)
    return {
        "seconds": time.perf_counter() - start,
        "workers": pool.workers if pool.side_by_side else 1,
        "runs": scores.runs,
        "means": scores.means,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", help="a published version folder (not with --smoke)")
    parser.add_argument(
        "--prepared", type=Path, default=Path("data/prepared"), help="the real splits' folder"
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--smoke", action="store_true", help="rendered digits and two short fits per set")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.smoke and not args.version:
        parser.error("--version: give a published version folder (or --smoke)")

    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            prepared = smoke_splits(Path(scratch))
            recipe = load_recipe(args.params, "cpu", {"evaluate": {"cas": {"max_epochs": 2, "patience": 1}}})
            train = DigitsDataset(prepared / "train.parquet")
            synthetic = Digits(train.images[:300], train.labels[:300])
        else:
            prepared = args.prepared
            recipe = load_recipe(args.params, None)
            synthetic = published_dataset(open_version(args.version))
        splits = [DigitsDataset(prepared / f"{name}.parquet") for name in ("train", "val", "test")]
        device = torch.device(recipe.hardware.device)
        cfg = recipe.evaluate.cas
        here = timed_cas(synthetic, splits, cfg, FitPool(device, in_process=True))
        side = timed_cas(synthetic, splits, cfg, FitPool(device))

    doc = header(device, args.smoke, {"version": args.version, "cas": cfg.model_dump(mode="json")})
    doc |= {
        "here": here,
        "side_by_side": side,
        "speedup": here["seconds"] / side["seconds"],
        "max_abs_difference": max(
            abs(here["means"][k] - side["means"][k]) for k in here["means"] if k != "cas_epochs"
        ),
    }
    write_json(args.out, doc)
    print(
        f"{len(synthetic)} digits, seeds {list(cfg.seeds)}: here {here['seconds']:.1f} s, side by side"
        f" ({side['workers']} workers) {side['seconds']:.1f} s: {doc['speedup']:.2f}x;"
        f" CAS ratio {here['means']['cas_ratio']:.4f} vs {side['means']['cas_ratio']:.4f}"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
