"""The commands of the pipeline's first half: prepare the real splits, train the judges and the
diffusion model, distil it, judge its samples. Each reads its params section and writes its outputs atomically."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffusion.checkpoint import write_csv_atomic, write_metrics
from diffusion.config import Params


def cmd_prepare(params: Params, args: argparse.Namespace) -> None:
    from diffusion.data.datasets import load_arrays
    from diffusion.data.images import save_grid
    from diffusion.data.prepare import prepare

    summary = prepare(params.data, Path(args.out))
    metrics = summary.metrics
    write_csv_atomic(args.classes, summary.class_rows)
    images, labels = load_arrays(Path(args.out) / "train.parquet")
    per_class = [images[labels == c][:10] for c in range(10)]
    save_grid(np.concatenate(per_class), args.grid, ncols=10)
    write_metrics(args.metrics, metrics)
    print(f"prepared {metrics['total']} digits from {metrics['source']} into {args.out}")


def cmd_train_classifier(params: Params, args: argparse.Namespace) -> None:
    from diffusion.judges.classifier import save_classifier, train_classifier

    _train_judge(
        "classifier", train_classifier, save_classifier, params.classifier, args, params.hardware.device
    )


def cmd_train_evaluator(params: Params, args: argparse.Namespace) -> None:
    from diffusion.judges.evaluator import save_evaluator, train_evaluator

    _train_judge("evaluator", train_evaluator, save_evaluator, params.evaluator, args, params.hardware.device)


def _train_judge(
    name: str, train: Callable, save: Callable, cfg: object, args: argparse.Namespace, device: str
) -> None:
    """Fit a cross-entropy judge on the three splits, then save it, its confusion plot and its metrics."""
    from diffusion.data.datasets import DigitsDataset

    splits = (DigitsDataset(getattr(args, split)) for split in ("train", "val", "test"))
    result = train(cfg, *splits, device=device)
    save(args.out, cfg, result.model, result.metrics)
    write_csv_atomic(args.confusion, result.confusion)
    write_metrics(args.metrics, result.metrics)
    print(f"{name} test accuracy {result.metrics['test_accuracy']:.4f}")


def cmd_train_clip(params: Params, args: argparse.Namespace) -> None:
    from diffusion.data.datasets import DigitsDataset
    from diffusion.judges.clip import train_clip

    splits = [DigitsDataset(getattr(args, name)) for name in ("train", "val", "test")]
    result = train_clip(params.clip, *splits, out_dir=Path(args.out), device=params.hardware.device)
    write_metrics(args.metrics, result.metrics)
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
        device=params.hardware.device,
        precision=params.hardware.resolved_precision(),
        style_weights=params.data.style_weights,
    )
    write_csv_atomic(args.loss_plot, result.history)
    print(f"diffusion: {result.metrics['steps']} steps, val loss {result.metrics['val_loss']:.4f}")


def cmd_distill_diffusion(params: Params, args: argparse.Namespace) -> None:
    from diffusion.checkpoint import file_sha256
    from diffusion.data.datasets import DigitsDataset
    from diffusion.model.distill import distill
    from diffusion.model.saved import load_diffusion

    teacher, process = load_diffusion(args.teacher, params.hardware.device)
    result = distill(
        teacher,
        process,
        params.distill,
        DigitsDataset(args.train),
        teacher_sha256=file_sha256(Path(args.teacher) / "ema.safetensors"),
        out_dir=Path(args.out),
        resume_dir=Path(args.resume_dir),
        device=params.hardware.device,
        precision=params.hardware.resolved_precision(),
    )
    write_csv_atomic(args.loss_plot, result.history)
    write_metrics(args.metrics, result.metrics)
    shown = ", ".join(map(str, params.distill.student_steps()))
    print(f"distilled students for {shown} steps into {args.out}")


def cmd_evaluate_diffusion(params: Params, args: argparse.Namespace) -> None:
    from diffusion.quality.samples import evaluate_diffusion

    metrics = evaluate_diffusion(
        params.diffusion, params.hardware, args.model, args.classifier, args.val, args.grid, args.strip
    )
    write_metrics(args.metrics, metrics)
    sampler = params.diffusion.sampler
    print(
        f"sample judge accuracy {metrics['sample_judge_accuracy']:.4f} ({sampler.name}, w={sampler.guidance})"
    )
