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


def cmd_train_classifier(params: Params, args: argparse.Namespace) -> None:
    from diffusion.data.datasets import DigitsDataset
    from diffusion.judges.classifier import train_classifier

    splits = [DigitsDataset(getattr(args, name)) for name in ("train", "val", "test")]
    result = train_classifier(params.classifier, *splits, out_dir=Path(args.out))
    write_csv_atomic(args.confusion, result.confusion)
    write_json_atomic(args.metrics, result.metrics)
    print(f"classifier test accuracy {result.metrics['test_accuracy']:.4f}")


def cmd_train_clip(params: Params, args: argparse.Namespace) -> None:
    from diffusion.data.datasets import DigitsDataset
    from diffusion.judges.clip import train_clip

    splits = [DigitsDataset(getattr(args, name)) for name in ("train", "val", "test")]
    result = train_clip(params.clip, *splits, out_dir=Path(args.out))
    write_json_atomic(args.metrics, result.metrics)
    print(f"clip zero-shot accuracy {result.metrics['zero_shot_accuracy']:.4f}")


def cmd_train_diffusion(params: Params, args: argparse.Namespace) -> None:
    from diffusion.data.datasets import DigitsDataset
    from diffusion.model.train import train_diffusion

    result = train_diffusion(
        params.diffusion,
        DigitsDataset(args.train),
        DigitsDataset(args.val),
        out_dir=Path(args.out),
        resume_dir=Path(args.resume_dir),
    )
    write_csv_atomic(args.loss_plot, result.history)
    print(f"diffusion: {result.metrics['steps']} steps, val loss {result.metrics['val_loss']:.4f}")


def cmd_evaluate_diffusion(params: Params, args: argparse.Namespace) -> None:
    import torch

    from diffusion.checkpoint import read_checkpoint_config
    from diffusion.data.datasets import DigitsDataset, to_uint8
    from diffusion.data.images import save_grid
    from diffusion.judges.classifier import load_classifier
    from diffusion.model.forward import forward_strip
    from diffusion.model.train import load_diffusion
    from diffusion.quality.samples import judge_guided_samples

    cfg = params.diffusion
    device = torch.device(cfg.train.device)
    model, process, _ = load_diffusion(args.model, device)
    judged = judge_guided_samples(
        model,
        process,
        load_classifier(args.classifier, device),
        cfg.sampler,
        n=cfg.eval.n_samples,
        seed=cfg.eval.seed,
        device=device,
        batch_size=cfg.eval.batch_size,
    )
    # Rows of the grid are the requested digits 0-9, `grid_per_class` samples each.
    rows = [judged.images[judged.labels == c][: cfg.eval.grid_per_class] for c in range(10)]
    save_grid(to_uint8(torch.cat(rows)), args.grid, ncols=cfg.eval.grid_per_class)

    val = DigitsDataset(args.val)
    firsts = torch.stack([val.images[val.labels == c][0] for c in range(cfg.eval.strip_digits)])
    strip = forward_strip(
        process, firsts, cfg.eval.strip_columns, torch.Generator().manual_seed(cfg.eval.seed)
    )
    save_grid(strip, args.strip, ncols=cfg.eval.strip_columns)

    metrics = dict(read_checkpoint_config(args.model, "diffusion")["meta"])  # the training metrics
    metrics.update(
        sample_judge_accuracy=judged.accuracy,
        sample_judge_per_class=judged.per_class_accuracy,
        sampler=cfg.sampler.model_dump(),
        sampled_images=int(judged.labels.numel()),
        sampling_images_per_second=judged.labels.numel() / max(judged.seconds, 1e-9),
    )
    write_json_atomic(args.metrics, metrics)
    print(f"sample judge accuracy {judged.accuracy:.4f} ({cfg.sampler.name}, w={cfg.sampler.guidance})")


# --------------------------------------------------------------------------- wiring
STAGES: dict[str, tuple[Callable[[Params, argparse.Namespace], None], list[str], str]] = {
    "prepare": (cmd_prepare, ["out", "metrics", "grid"], "split a real source into Parquet files"),
    "train-classifier": (
        cmd_train_classifier,
        ["train", "val", "test", "out", "metrics", "confusion"],
        "train the downstream MNIST classifier judge",
    ),
    "train-clip": (
        cmd_train_clip,
        ["train", "val", "test", "out", "metrics"],
        "train the domain CLIP judge through open_clip",
    ),
    "train-diffusion": (
        cmd_train_diffusion,
        ["train", "val", "out", "resume_dir", "loss_plot"],
        "train (or resume) the class-conditional diffusion model",
    ),
    "evaluate-diffusion": (
        cmd_evaluate_diffusion,
        ["model", "classifier", "val", "metrics", "grid", "strip"],
        "judge guided samples; sample grid and forward-diffusion strip",
    ),
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
