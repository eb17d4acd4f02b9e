"""Judge guided samples: does the model draw the digit it was asked for?

`sample_judge_accuracy` is the classifier's accuracy on class-balanced guided samples of known
labels. It measures fidelity to the label only: over-guided look-alike digits also score high,
so it is read beside the diversity and train-on-synthetic measures, never alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffusion.checkpoint import read_checkpoint_config
from diffusion.config import DiffusionConfig, HardwareConfig, SamplerConfig
from diffusion.data.datasets import DigitsDataset, to_uint8
from diffusion.data.images import save_grid
from diffusion.judges.classifier import DigitClassifier, load_classifier, predict
from diffusion.judges.training import accuracy_report
from diffusion.model.forward import forward_strip
from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.samplers import sample
from diffusion.model.saved import load_diffusion
from diffusion.precision import Precision


@dataclass(frozen=True)
class SampleJudgement:
    """images (N, 1, H, W) in [-1, 1]; labels and predictions (N,) int64; the accuracies; the wall time."""

    images: Tensor
    labels: Tensor
    predictions: Tensor
    accuracy: float
    per_class_accuracy: dict[str, float]
    seconds: float


def balanced_labels(n: int, num_classes: int = 10) -> Tensor:
    """(n,) int64 labels 0, 1, ..., 9, 0, 1, ...: as even a class balance as n allows."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def judge_guided_samples(
    model: Denoiser,
    process: GaussianDiffusion,
    classifier: DigitClassifier,
    sampler: SamplerConfig,
    n: int,
    seed: int,
    device: torch.device | str,
    batch_size: int,
    precision: Precision = "fp32",
) -> SampleJudgement:
    """Draw n class-balanced samples with `sampler` from a generator seeded `seed` (network batches of
    `batch_size`, the network in `precision`); classify them."""
    labels = balanced_labels(n).to(device)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same images on any device
    start = time.perf_counter()
    images = sample(model, process, labels, sampler, generator, device, batch_size, precision)
    seconds = time.perf_counter() - start
    predictions = predict(classifier, images)
    report = accuracy_report(predictions, labels)
    return SampleJudgement(images, labels, predictions, report.accuracy, report.per_class, seconds)


def evaluate_diffusion(
    cfg: DiffusionConfig,
    hardware: HardwareConfig,
    model_dir: str | Path,
    classifier_dir: str | Path,
    val_path: str | Path,
    grid_path: str | Path,
    strip_path: str | Path,
) -> dict[str, Any]:
    """The `evaluate_diffusion` stage: judge `cfg.eval.n_samples` guided samples, write the sample grid
    (rows = requested digits 0-9) and the forward-diffusion strip; return the metrics (training's too)."""
    device = torch.device(hardware.device)
    model, process = load_diffusion(model_dir, device)
    judged = judge_guided_samples(
        model,
        process,
        load_classifier(classifier_dir, device),
        cfg.sampler,
        n=cfg.eval.n_samples,
        seed=cfg.eval.seed,
        device=device,
        batch_size=hardware.network_batch,
        precision=hardware.resolved_precision(),
    )
    rows = [judged.images[judged.labels == c][: cfg.eval.grid_per_class] for c in range(10)]
    save_grid(to_uint8(torch.cat(rows)), grid_path, ncols=cfg.eval.grid_per_class)

    val = DigitsDataset(val_path)
    firsts = torch.stack([val.images[val.labels == c][0] for c in range(cfg.eval.strip_digits)])
    strip = forward_strip(
        process, firsts, cfg.eval.strip_columns, torch.Generator().manual_seed(cfg.eval.seed)
    )
    save_grid(strip, strip_path, ncols=cfg.eval.strip_columns)

    meta = read_checkpoint_config(model_dir, "diffusion")["meta"]
    # training's numbers (the DVC metrics file drops its mappings and lists: `write_metrics`)
    metrics = dict(meta)
    metrics.update(
        sample_judge_accuracy=judged.accuracy,
        sampled_images=int(judged.labels.numel()),
        sampling_images_per_second=judged.labels.numel() / max(judged.seconds, 1e-9),
    )
    return metrics
