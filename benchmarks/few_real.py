"""Where synthetic data should pay: few real digits (issue 15). The whole product on --per-class real digits
of each class, then classifiers trained with and without what it made.

1. data: a class-balanced draw of --per-class training digits per class from --prepared (`balanced_indices`,
   generator seeded by --draw-seed), written as <work>/real-small.parquet: the diffusion model's training
   set, so also the publish gate's memorisation reference;
2. judges on those digits only (val: the real val split): the filtering classifier and the domain CLIP,
   params' recipes (--judge-epochs replaces both epochs);
3. diffusion: params' diffusion section (--diffusion-steps replaces train.steps) on those digits, in
   hardware precision;
4. generate: `flows.generate.generate_dataset` in this process (Prefect's temporary server, threads runner,
   grading=None) for --multiple x as many digits (generate.per_class = multiple x per-class; params'
   generate section otherwise, our CLIP), published under <work>/published, staged in <work>/staging;
5. CAS: params' `evaluate.cas` recipe (LeNet-5, early stopping on real val, tested on real test) for every
   seed of --seeds on (a) real_small, (b) real_plus_synthetic, (c) synthetic: mean, 95% t-interval;
   `gain_points`: (b) - (a) and (c) - (a) in points, paired by seed, with their intervals.

JSON (--out, rewritten after every part): machine, cores, date, command, settings, `parts` (wall seconds of
each; `reused`: done by an earlier run), the judges' and diffusion model's metrics, the generation run's
figures, `arms`, `gain_points`. PNG (--plot): one bar per arm with its interval. Resumable: --work DIR
keeps every part (the checkpoint folders, the published version, each CAS fit in fits.json) and a rerun
reuses each one whose settings are unchanged; an interrupted diffusion training continues from its resume
state (train_diffusion's own), an interrupted generation from its staged blocks (the flow's own).

    python benchmarks/few_real.py --work data/cache/few-real --out benchmarks/results/few_real.json
    python benchmarks/few_real.py --smoke --out /tmp/few-real.json --plot /tmp/few-real.png     # < 1 min
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
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

ARMS = ("real_small", "real_plus_synthetic", "synthetic")
COLORS = {"real_small": "#868e96", "real_plus_synthetic": "#7048e8", "synthetic": "#1971c2"}


def smoke_sections() -> dict[str, dict[str, Any]]:
    """Tiny judges (tests/generate_fixtures.py's), U-Net (gpu_generate's), sampler and CAS; no filter."""
    from benchmarks.gpu_generate import SMOKE_UNET
    from tests.generate_fixtures import TINY_CLASSIFIER, TINY_CLIP

    clip = TINY_CLIP.model_copy(update={"model": "few-real-smoke-clip"}).model_dump(mode="json")
    return {
        "classifier": {**TINY_CLASSIFIER.model_dump(mode="json"), "train": {"batch_size": 32}},
        "clip": {**clip, "train": {"batch_size": 32}},
        "diffusion": {
            "unet": dict(SMOKE_UNET),
            "train": {"batch_size": 16, "warmup_steps": 0, "log_every": 1, "val_batches": 1},
        },
        "generate": {"sampler": {"name": "dpm-solver++", "steps": 4, "guidance": 1.5}, "seed_block": 10},
        "evaluate": {"cas": SMOKE_CAS},
    }


def write_small(prepared: Path, per_class: int, seed: int, out: Path) -> dict[str, Any]:
    """per_class x 10 training rows of `prepared`, class-balanced, to `out` (every column kept)."""
    import pyarrow.parquet as pq
    import torch

    from diffusion.checkpoint import atomic_path
    from diffusion.quality.cas import balanced_indices

    table = pq.read_table(prepared / "train.parquet")
    labels = torch.as_tensor(table.column("label").to_numpy()).long()
    pick = balanced_indices(labels, 10 * per_class, seeded(seed, per_class))
    with atomic_path(out) as tmp:
        pq.write_table(table.take(pick.sort().values.numpy()), tmp, compression="zstd")
    return {"rows": len(pick), "per_class": torch.bincount(labels[pick], minlength=10).tolist()}


def bars(ax: Any, names: list[str], rows: list[dict[str, Any]], fmt: str) -> None:
    """One bar per row at its mean (written under its name), its 95% interval as an error bar (none for one
    seed)."""
    means = [r["mean"] for r in rows]
    ends = [[m if v is None else v for v in r["interval"]] for m, r in zip(means, rows, strict=True)]
    err = list(zip(*[(m - lo, hi - m) for m, (lo, hi) in zip(means, ends, strict=True)], strict=True))
    ax.bar(range(len(rows)), means, yerr=err, capsize=6, color=[COLORS[n] for n in names])
    labels = [f"{n.replace('_', ' ')}\n{format(m, fmt)}" for n, m in zip(names, means, strict=True)]
    ax.set_xticks(range(len(rows)), labels, fontsize=8)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Left: real-test accuracy per arm (the y axis starts near the lowest interval); right: the gains."""
    fig = new_figure(9.0, 4.0)
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    arms = [a for a in ARMS if a in doc["arms"]]
    bars(left, arms, [doc["arms"][a] for a in arms], ".3f")
    low = min(min(doc["arms"][a]["mean"], doc["arms"][a]["interval"][0] or 1.0) for a in arms)
    left.set_ylim(max(0.0, low - 0.05), 1.0)
    left.set_ylabel("accuracy on real test digits (95% interval)")
    sizes = ", ".join(f"{a.replace('_', ' ')} {doc['arms'][a]['train_size']:,}" for a in arms)
    left.set_title(f"training digits: {sizes}", fontsize=8)
    gains = list(doc["gain_points"])
    bars(right, gains, [doc["gain_points"][g] for g in gains], "+.2f")
    right.axhline(0.0, color="#212529", linewidth=0.8)
    right.set_ylabel("points over real small alone (paired by seed)")
    setting = doc["settings"]
    right.set_title(
        f"{setting['per_class']} real digits per class, {len(setting['seeds'])} seeds", fontsize=8
    )
    fig.supxlabel(f"{doc['machine']}, {doc['date'][:10]}", fontsize=7, color="#666")
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=REPO / "data" / "prepared")
    parser.add_argument("--per-class", type=int, default=100, help="real training digits per class")
    parser.add_argument("--multiple", type=int, default=10, help="synthetic digits per real one")
    parser.add_argument("--draw-seed", type=int, default=0, help="of the real digits' draw")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="CAS training seeds")
    parser.add_argument("--judge-epochs", type=int, default=None, help="instead of params' (both judges)")
    parser.add_argument("--diffusion-steps", type=int, default=None, help="instead of params' train.steps")
    parser.add_argument("--max-memorization", type=float, default=None, help="instead of params' gate's")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--device", default=None, help="instead of params' hardware.device")
    parser.add_argument("--work", type=Path, default=None, help="parts kept here; a rerun reuses them")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "few_real.json")
    parser.add_argument("--plot", type=Path, default=REPO / "benchmarks" / "results" / "few_real.png")
    parser.add_argument("--smoke", action="store_true", help="rendered digits, tiny models, CPU, < 1 min")
    args = parser.parse_args()
    if args.smoke:
        args.per_class, args.multiple, args.seeds, args.device = 5, 2, [0, 1], "cpu"
        args.judge_epochs, args.diffusion_steps = 1, args.diffusion_steps or 3
    run(args)


def run(args: argparse.Namespace) -> None:
    import torch

    from benchmarks.samplers import synchronize
    from diffusion.config import ClipChoice, FilterConfig, TaskRunnerConfig
    from diffusion.data.datasets import DigitsDataset, open_version, published_dataset
    from diffusion.device import resolve_device
    from diffusion.judges.classifier import save_classifier, train_classifier
    from diffusion.judges.clip import train_clip
    from diffusion.model.train import train_diffusion
    from diffusion.quality.cas import Digits

    work = args.work or Path(tempfile.mkdtemp(prefix="few-real-"))
    if args.smoke and not (work / "prepared").is_dir():
        smoke_splits(work / "prepared")
    prepared = work / "prepared" if args.smoke else args.prepared
    params = load_recipe(args.params, args.device, smoke_sections() if args.smoke else None)
    hardware, device = params.hardware, resolve_device(params.hardware.device, "hardware.device")
    precision = hardware.resolved_precision()

    def epochs(section: Any) -> Any:
        n = args.judge_epochs or section.train.epochs
        return section.model_copy(update={"train": section.train.model_copy(update={"epochs": n})})

    cls_cfg, clip_cfg = epochs(params.classifier), epochs(params.clip)
    steps = args.diffusion_steps or params.diffusion.train.steps
    diff_cfg = params.diffusion.model_copy(
        update={"train": params.diffusion.train.model_copy(update={"steps": steps})}
    )
    cas_cfg = params.evaluate.cas.model_copy(update={"seeds": tuple(args.seeds)})
    quality = params.quality
    if args.max_memorization is not None:
        quality = quality.model_copy(update={"max_memorization": args.max_memorization})
    data = {"prepared": str(prepared.resolve()), "per_class": args.per_class, "draw_seed": args.draw_seed}
    settings = {
        **data,
        "multiple": args.multiple,
        "seeds": args.seeds,
        "device": str(device),
        "precision": precision,
        "classifier": cls_cfg.model_dump(mode="json"),
        "clip": clip_cfg.model_dump(mode="json"),
        "diffusion": diff_cfg.model_dump(mode="json"),
        "cas": cas_cfg.model_dump(mode="json", exclude={"seeds"}),
        "quality": quality.model_dump(mode="json"),
    }
    doc: dict[str, Any] = header(device, args.smoke, settings) | {"work": str(work), "parts": {}}
    ledger = Ledger(work / "fits.json")
    parts = Ledger(work / "parts.json")

    def part(name: str, what: Any, kept: Callable[[dict], Path], fn: Callable[[], dict]) -> dict[str, Any]:
        """Run `fn` timed, or reuse its record when an earlier run did it with the same `what` and what it
        made is still there (the path `kept(record)`); the record goes to the document (and parts.json) either way."""
        done = parts.get(name, what)
        if done is not None and kept(done).exists():
            record = {**done, "reused": True}
        else:
            synchronize(device)
            start = time.perf_counter()
            record = fn()
            synchronize(device)
            record = parts.put(name, what, {**record, "seconds": time.perf_counter() - start})
        doc["parts"][name] = {"seconds": record["seconds"], "reused": record.get("reused", False)}
        doc[name] = {k: v for k, v in record.items() if k not in ("seconds", "reused")}
        print(f"{name}: {record['seconds']:.1f} s{' (reused)' if record.get('reused') else ''}", flush=True)
        write_json(args.out, doc)
        return record

    # 1. the real digits
    small_path, draw = work / "real-small.parquet", (args.per_class, args.draw_seed)
    part("data", data, lambda _: small_path, lambda: write_small(prepared, *draw, small_path))
    small = DigitsDataset(small_path)
    val, test = DigitsDataset(prepared / "val.parquet"), DigitsDataset(prepared / "test.parquet")

    # 2. judges
    def classifier() -> dict[str, Any]:
        fit = train_classifier(cls_cfg, small, val, test, False, device)
        save_classifier(work / "classifier", cls_cfg, fit.model, fit.metrics)
        return {"test_accuracy": fit.metrics["test_accuracy"], "epochs": cls_cfg.train.epochs}

    def clip() -> dict[str, Any]:
        fit = train_clip(clip_cfg, small, val, test, work / "clip", False, device)
        return {"zero_shot_accuracy": fit.metrics["zero_shot_accuracy"], "epochs": clip_cfg.train.epochs}

    part("classifier", [data, settings["classifier"]], lambda _: work / "classifier", classifier)
    part("clip", [data, settings["clip"]], lambda _: work / "clip", clip)

    # 3. diffusion (an interrupted training continues from its resume state, kept apart per draw of digits:
    # train_diffusion matches a state by its configs only)
    resume = work / f"diffusion-resume-{hashlib.sha256(json.dumps(data).encode()).hexdigest()[:8]}"

    def diffusion() -> dict[str, Any]:
        return train_diffusion(
            diff_cfg, small, val, work / "diffusion", resume, False, device, precision
        ).metrics

    trained = [data, settings["diffusion"], precision]
    part("diffusion", trained, lambda _: work / "diffusion", diffusion)

    # 4. generate, in this process (an interrupted run continues from its staged blocks)
    update: dict[str, Any] = {
        "per_class": args.multiple * args.per_class,
        "clip": ClipChoice(model=clip_cfg.model, pretrained=str(work / "clip")),
        "output_root": str(work / "published"),
        "staging_dir": str(work / "staging"),
        "task_runner": TaskRunnerConfig(kind="threads", workers=params.generate.task_runner.workers),
    }
    if args.smoke:  # tiny barely-trained judges cannot meet the shipped filter
        update["filter"] = FilterConfig(
            min_clip_margin=None, min_classifier_prob=None, require_pred_match=False
        )
    gen = params.generate.model_copy(update=update)

    def generate() -> dict[str, Any]:
        from prefect.testing.utilities import prefect_test_harness

        from flows.generate import generate_dataset

        start = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=180):
            prefect_start = time.perf_counter() - start
            result = generate_dataset(
                cfg=gen,
                hardware=hardware,
                model=str(work / "diffusion"),
                classifier=str(work / "classifier"),
                train_data=str(small_path),
                quality=quality,
                logical_date=datetime.now(UTC),
                grading=None,
            )
        keys = ("accepted", "sampled", "acceptance_rate", "images_per_second", "task_seconds")
        return {"version": result.version.path, "prefect_start_seconds": prefect_start} | {
            k: result.metrics[k] for k in keys if k in result.metrics
        }

    what = [
        trained,
        *(settings[k] for k in ("classifier", "clip", "quality")),
        hardware.model_dump(mode="json"),
    ]
    what.append(gen.model_dump(mode="json"))
    made = part("generate", what, lambda r: Path(r["version"], "manifest.json"), generate)
    synthetic = published_dataset(open_version(made["version"]).path)

    # 5. the three training sets, every seed
    both = Digits(torch.cat([small.images, synthetic.images]), torch.cat([small.labels, synthetic.labels]))
    arms = {"real_small": small, "real_plus_synthetic": both, "synthetic": synthetic}
    fixed = [data, made["version"], settings["cas"], str(device)]
    rows: dict[str, list[dict[str, Any]]] = {}
    doc["arms"] = {}
    for name, train in arms.items():  # a part's seconds: its fits' (a reused fit's from the run that made it)
        rows[name] = fits(
            ledger, name, fixed, args.seeds, lambda s, t=train: cas_fit(t, val, test, cas_cfg, s, device)
        )
        doc["arms"][name] = {"train_size": len(train), **summary(rows[name])}
        reused = all(r.get("reused") for r in rows[name])
        doc["parts"][f"cas_{name}"] = {"seconds": sum(r["seconds"] for r in rows[name]), "reused": reused}
        write_json(args.out, doc)
    doc["gain_points"] = {a: paired_points(rows["real_small"], rows[a]) for a in ARMS[1:]}
    write_json(args.out, doc)
    plot(doc, args.plot)
    gain = doc["gain_points"]["real_plus_synthetic"]
    lo, hi = (math.nan if v is None else v for v in gain["interval"])
    print(f"gain of real + synthetic over real alone: {gain['mean']:+.2f} points [{lo:+.2f}, {hi:+.2f}]")
    print(f"wrote {args.out} and {args.plot}", flush=True)


if __name__ == "__main__":
    main()
