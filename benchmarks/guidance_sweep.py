"""Choose the shipped guidance and filter by CAS, not by judged accuracy.

For each sampler of `--samplers` (default DPM-Solver++ 20) and each guidance w, sample `--sample` digits
per class with the default model, score them with both judges, and build one dataset per filter: the first
`--keep` accepted digits of each class (fewer when a class runs short). Each dataset is graded by the
independent evaluator (never the filtering judge) and by CAS: the LeNet-5-style classifier of
diffusion/quality/cas.py trained only on it to convergence (the `evaluate.cas` recipe: early stopping on
the real val split), tested on the real test split, against the same trained on as many real training
digits (mean and 95% t-interval half-width over `--seeds`; null with one seed). A "mix" row takes half of
each class from w = 1 and half from w = 2 (first sampler). Rows of a sampler other than DPM-Solver++ 20
name it ("ddim50/eta1 w=1.5 none").

    python benchmarks/guidance_sweep.py --models data/models --out benchmarks/results/guidance-sweep.json
    python benchmarks/guidance_sweep.py ... --samplers dpm-solver++:20 dpm-solver++:50 ddim:50:1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))

from diffusion.config import SamplerConfig, load_params  # noqa: E402
from diffusion.data.datasets import DigitsDataset  # noqa: E402
from diffusion.judges.classifier import load_classifier  # noqa: E402
from diffusion.judges.clip import load_clip  # noqa: E402
from diffusion.judges.evaluator import load_evaluator  # noqa: E402
from diffusion.judges.scoring import Scorer, keep_mask  # noqa: E402
from diffusion.model.samplers import sample  # noqa: E402
from diffusion.model.saved import load_diffusion  # noqa: E402
from diffusion.quality.cas import Digits, cas, t_interval  # noqa: E402
from diffusion.quality.evaluate import conditional_accuracy  # noqa: E402

FILTERS = {
    "none": {},
    "pred-match": {"require_classifier_agrees": True},
    "pred-match+clip-margin": {"require_classifier_agrees": True, "min_clip_margin": 0.0},
    "prob>=0.5": {"require_classifier_agrees": True, "min_classifier_prob": 0.5},
    "prob>=0.8": {"require_classifier_agrees": True, "min_classifier_prob": 0.8},
    "prob>=0.8+clip-margin": {  # the shipped generate.filter
        "require_classifier_agrees": True,
        "min_classifier_prob": 0.8,
        "min_clip_margin": 0.0,
    },
    "prob>=0.9": {"require_classifier_agrees": True, "min_classifier_prob": 0.9},
}


def first_kept(images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, keep: int) -> Digits:
    """The first `keep` accepted digits of each class, in sampling order."""
    picked = torch.cat([torch.nonzero(mask & (labels == c)).flatten()[:keep] for c in range(10)])
    return Digits(images[picked], labels[picked])


def interval(values: Sequence[float]) -> list[float | None]:
    """[mean, half-width of the 95% Student-t interval over seeds] (`diffusion.quality.cas.t_interval`); the
    half-width is None for one seed."""
    lo, hi = t_interval(list(values))
    return [statistics.fmean(values), None if len(values) < 2 else (hi - lo) / 2]


def sampler_spec(text: str) -> SamplerConfig:
    """'name:steps[:eta]' -> a SamplerConfig (guidance set per row); argparse reports a bad spec."""
    name, steps, *eta = text.split(":")
    if name == "distilled":  # a student takes w as an input: benchmarks/distill_frontier.py measures it
        raise argparse.ArgumentTypeError(
            "the sweep guides a teacher; students: benchmarks/distill_frontier.py"
        )
    return SamplerConfig(name=name, steps=int(steps), eta=float(eta[0]) if eta else 0.0)


def tag(cfg: SamplerConfig) -> str:
    """A row's sampler prefix: empty for the shipped DPM-Solver++ 20."""
    if (cfg.name, cfg.steps) == ("dpm-solver++", 20):
        return ""
    return f"{cfg.name}{cfg.steps}" + (f"/eta{cfg.eta:g} " if cfg.name == "ddim" else " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("data/models"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--samplers", type=sampler_spec, nargs="+", default=[sampler_spec("dpm-solver++:20")])
    parser.add_argument("--sample", type=int, default=150, help="digits sampled per class and guidance")
    parser.add_argument("--keep", type=int, default=100, help="digits kept per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="bf16", help="of the sampler's network"
    )
    args = parser.parse_args()
    params = load_params()
    device = torch.device("cpu")
    model, process = load_diffusion(args.models / "diffusion", device)
    judge = load_classifier(args.models / "classifier", device)
    scorer = Scorer(load_clip("digit-clip", str(args.models / "clip"), device), judge)
    evaluator = load_evaluator(args.models / "evaluator", device)
    train, val, test = (
        DigitsDataset(args.prepared / f"{split}.parquet") for split in ("train", "val", "test")
    )
    recipe = params.evaluate.cas.model_copy(update={"seeds": tuple(args.seeds)})
    labels = torch.arange(10).repeat_interleave(args.sample)
    sampled: dict[str, tuple[torch.Tensor, object]] = {}
    rows = []
    for base in args.samplers:
        for w in args.guidance:
            start = time.perf_counter()
            cfg = base.model_copy(update={"guidance": w})
            generator = torch.Generator().manual_seed(1234)
            images = sample(model, process, labels, cfg, generator, device, 250, args.precision)
            sampled[f"{tag(cfg)}w={w:g}"] = (images, scorer(images, labels))
            print(
                f"{tag(cfg)}w={w}: sampled {len(labels)} in {time.perf_counter() - start:.0f} s", flush=True
            )
    sets: dict[str, Digits] = {}
    acceptance: dict[str, float] = {}
    for prefix, (images, scores) in sampled.items():
        for name, rule in FILTERS.items():
            mask = keep_mask(scores, labels, **{"require_classifier_agrees": False, **rule})
            sets[f"{prefix} {name}"] = first_kept(images, labels, mask, args.keep)
            acceptance[f"{prefix} {name}"] = mask.float().mean().item()
    first = tag(args.samplers[0])
    if f"{first}w=1" in sampled and f"{first}w=2" in sampled:
        half = args.keep // 2
        parts = [
            first_kept(sampled[f"{first}w={w}"][0], labels, torch.ones_like(labels, dtype=torch.bool), half)
            for w in (1, 2)
        ]
        sets[f"{first}mix w=1+2 none"] = Digits(
            torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts])
        )
        acceptance[f"{first}mix w=1+2 none"] = 1.0
    for name, data in sets.items():
        runs = cas(data, train, val, test, recipe, device, gain=False).runs
        row = {
            "setting": name,
            "kept": len(data.labels),
            "acceptance": acceptance[name],
            "evaluator_accuracy": conditional_accuracy(evaluator, data.images, data.labels),
            "judge_accuracy": conditional_accuracy(judge, data.images, data.labels),
            "cas_accuracy": interval([r["cas_accuracy"] for r in runs]),
            "real_baseline_accuracy": interval([r["real_baseline_accuracy"] for r in runs]),
            "cas_ratio": interval([r["cas_ratio"] for r in runs]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    from benchmarks.common import header  # here: benchmarks.samplers imports this module's `interval`

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                **header(device, False, {}),  # machine, cores, threads, torch, date, command
                "args": vars(args)
                | {"models": str(args.models), "prepared": str(args.prepared), "out": str(args.out)}
                | {"samplers": [cfg.model_dump(exclude={"guidance"}) for cfg in args.samplers]},
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
