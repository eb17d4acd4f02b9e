"""Judge guided samples: does the model draw the digit it was asked for?

`sample_judge_accuracy` is the classifier's accuracy on class-balanced guided samples of known
labels. It measures fidelity to the label only: over-guided look-alike digits also score high,
so it is read beside the diversity and train-on-synthetic measures, never alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion.config import SamplerConfig
from diffusion.judges.classifier import DigitClassifier, predict
from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.samplers import sample


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
) -> SampleJudgement:
    """Draw n class-balanced samples with `sampler` from a generator seeded `seed`; classify them."""
    labels = balanced_labels(n).to(device)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same images on any device
    start = time.perf_counter()
    images = sample(model, process, labels, sampler, generator, device, batch_size=batch_size)
    seconds = time.perf_counter() - start
    predictions = predict(classifier, images)
    correct = (predictions == labels).float()
    per_class = {str(c): correct[labels == c].mean().item() for c in range(10) if (labels == c).any()}
    return SampleJudgement(images, labels, predictions, correct.mean().item(), per_class, seconds)
