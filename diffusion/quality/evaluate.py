"""Measure a published version with judges it was not filtered by, against held-out real digits.

The filtering classifier chose what was published, so its accuracy there is ~1 by construction. The headline
metrics of `evaluate_version` (all floats):

    conditional_accuracy_published  the independent evaluator's accuracy on the published digits, each labelled
    conditional_accuracy_raw        with the digit it was asked for; raw: every digit the run sampled
    judge_accuracy_published        the filtering classifier's view of the same digits
    judge_accuracy_raw
    cas_accuracy                    Classification Accuracy Score (Ravuri & Vinyals 2019): a classifier of the
                                    filtering judge's architecture trained on the published digits only for a
                                    fixed number of steps, tested on the real test digits
    real_baseline_accuracy          the same trained on as many real training digits (class-balanced)
    cas_ratio                       cas_accuracy / real_baseline_accuracy: 1 when synthetic replaces real
    augmentation_gain               points on real test gained by adding the published digits to every real
                                    training digit (same steps)
    frechet_distance                Frechet distance (Heusel et al. 2017) of the evaluator's features between
                                    the published digits and the real training digits
    frechet_distance_real           the same between the real test and the real training digits: the floor
                                    (it grows as samples shrink: 1,001 test digits vs the version's count)
    diversity_synthetic             mean feature distance between two digits of the same class, averaged over
    diversity_real                  classes (published; real training digits)
    memorization_rate               share of published digits within RMS `copy_distance` of a real training digit
                                    (the publish gate's, from the manifest)
    duplicate_rate                  share of published digits whose pixels repeat an earlier one's (the gate's)

The training metrics are means over `EvaluateConfig.cas_seeds`; images are (N, 1, 28, 28) in [-1, 1] and
labels (N,) int64 unless said otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffusion.config import ClassifierConfig, EvaluateConfig
from diffusion.data.datasets import load_arrays, to_model_range
from diffusion.data.shards import PublishedVersion, version_files
from diffusion.errors import DataError
from diffusion.judges.classifier import DigitClassifier
from diffusion.judges.training import (
    NUM_CLASSES,
    Labelled,
    accuracy,
    accuracy_report,
    confusion_rows,
    fit_cross_entropy,
    in_batches,
    predict,
)

HEADLINE = (
    "conditional_accuracy_published",
    "conditional_accuracy_raw",
    "judge_accuracy_published",
    "judge_accuracy_raw",
    "cas_accuracy",
    "real_baseline_accuracy",
    "cas_ratio",
    "augmentation_gain",
    "frechet_distance",
    "frechet_distance_real",
    "diversity_synthetic",
    "diversity_real",
    "memorization_rate",
    "duplicate_rate",
)
CAS_KEYS = ("cas_accuracy", "real_baseline_accuracy", "cas_ratio", "augmentation_gain")  # means over seeds


@dataclass(frozen=True)
class Digits:
    """Digits in memory: images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


# --------------------------------------------------------------------------- fidelity to the label
def conditional_accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """The model's accuracy (eval mode, on its device) on images labelled with the digit they were asked for."""
    return accuracy(model, Digits(images, labels))


# --------------------------------------------------------------------------- training on the data (CAS)
def train_on(
    images: Tensor, labels: Tensor, cfg: ClassifierConfig, steps: int, seed: int, device: str = "cpu"
) -> DigitClassifier:
    """A classifier of the filtering judge's architecture fitted for exactly `steps` optimizer steps.

    cfg's training settings (batch size, lr, weight decay, augmentation) and label smoothing; `seed` seeds
    init, shuffling and augmentation; no validation: the last step's weights, in eval mode on `device`.
    """
    settings = cfg.train.model_copy(update={"seed": seed})
    build = partial(DigitClassifier.from_config, cfg)
    model, _ = fit_cross_entropy(
        build, settings, cfg.label_smoothing, Digits(images, labels), steps=steps, device=device
    )
    return model


def test_accuracy(model: nn.Module, test: Labelled) -> float:
    """The model's accuracy on the real test digits."""
    return accuracy(model, test)


test_accuracy.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest


def balanced_subset(data: Labelled, n: int, generator: torch.Generator) -> Digits:
    """min(n, N) digits of `data` drawn by `generator`, as evenly across classes as the data allows.

    Classes are dealt in turns, one random digit of each per turn (a random class order breaks the tie of
    the last turn), so a class that runs out leaves its share to the others.
    """
    perm = torch.randperm(len(data.labels), generator=generator)
    y = data.labels[perm]
    rank = torch.zeros_like(y)
    for c in range(NUM_CLASSES):
        mask = y == c
        rank[mask] = torch.arange(int(mask.sum()))
    position = torch.argsort(torch.randperm(NUM_CLASSES, generator=generator))  # class -> place in a turn
    pick = perm[torch.argsort(rank * NUM_CLASSES + position[y], stable=True)[:n]]
    return Digits(data.images[pick], data.labels[pick])


def _accuracies(
    sets: tuple[Labelled, ...], real_test: Labelled, cfg: ClassifierConfig, steps: int, seed: int, device: str
) -> list[float]:
    """Real-test accuracy of the classifier trained on each of `sets`, with the same budget and seed."""
    return [test_accuracy(train_on(d.images, d.labels, cfg, steps, seed, device), real_test) for d in sets]


def cas(
    synthetic: Labelled,
    real_train: Labelled,
    real_test: Labelled,
    cfg: ClassifierConfig,
    steps: int,
    seed: int,
    device: str = "cpu",
) -> dict[str, float]:
    """Classification Accuracy Score with its real baseline, one training seed.

    Returns cas_accuracy (trained on `synthetic` only), real_baseline_accuracy (trained on a class-balanced
    draw of as many real training digits, capped at all of them) and cas_ratio, both tested on `real_test`.
    """
    real = balanced_subset(real_train, len(synthetic.labels), torch.Generator().manual_seed(seed))
    scores = _accuracies((synthetic, real), real_test, cfg, steps, seed, device)
    return {
        "cas_accuracy": scores[0],
        "real_baseline_accuracy": scores[1],
        "cas_ratio": scores[0] / scores[1],
    }


def augmentation_gain(
    synthetic: Labelled,
    real_train: Labelled,
    real_test: Labelled,
    cfg: ClassifierConfig,
    steps: int,
    seed: int,
    device: str = "cpu",
) -> float:
    """Points (100 x accuracy) on `real_test` gained by training on real_train + synthetic instead of real_train
    alone, with the same steps and seed."""
    both = Digits(
        torch.cat([real_train.images, synthetic.images]), torch.cat([real_train.labels, synthetic.labels])
    )
    scores = _accuracies((both, real_train), real_test, cfg, steps, seed, device)
    return 100.0 * (scores[0] - scores[1])


# --------------------------------------------------------------------------- feature statistics
def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root (D, D) of a symmetric positive semi-definite matrix (D, D)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(feats_a: Tensor | np.ndarray, feats_b: Tensor | np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of features (N, D) and (M, D), N, M >= 2.

    The Frechet distance of two Gaussians fitted to the features (Heusel et al. 2017), in float64 with the
    unbiased covariances. tr (S_a S_b)^(1/2) is computed as the sum of the square roots of the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2), which is symmetric and similar to S_a S_b: real and stable where the covariances
    are singular (few digits, many features), and equal to the trace of scipy.linalg.sqrtm(S_a @ S_b).
    """
    a, b = (np.asarray(torch.as_tensor(f).detach().cpu().double()) for f in (feats_a, feats_b))
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the Frechet distance needs >= 2 rows on each side, got {len(a)} and {len(b)}")
    cov_a, cov_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    root_a = _psd_sqrt(np.atleast_2d(cov_a))
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ np.atleast_2d(cov_b) @ root_a), 0.0, None)).sum()
    diff = a.mean(0) - b.mean(0)
    return max(0.0, float(diff @ diff + np.trace(np.atleast_2d(cov_a + cov_b)) - 2.0 * tr_sqrt))


def frechet_per_class(
    feats_a: Tensor, labels_a: Tensor, feats_b: Tensor, labels_b: Tensor
) -> dict[str, float]:
    """The Frechet distance within each class ("0"-"9") that has >= 2 rows on both sides."""
    return {
        str(c): frechet_distance(feats_a[labels_a == c], feats_b[labels_b == c])
        for c in range(NUM_CLASSES)
        if (labels_a == c).sum() >= 2 and (labels_b == c).sum() >= 2
    }


def diversity(feats: Tensor, labels: Tensor) -> dict[str, float]:
    """Mean Euclidean distance between the features (N, D) of two different digits of one class, per class
    ("0"-"9", the classes with >= 2 digits): low where a class collapses onto a few looks."""
    out = {}
    for c in range(NUM_CLASSES):
        f = feats[labels == c].double()
        if len(f) >= 2:
            out[str(c)] = (torch.cdist(f, f).sum() / (len(f) * (len(f) - 1))).item()
    return out


# --------------------------------------------------------------------------- one version
@dataclass(frozen=True)
class EvaluationResult:
    """metrics: the HEADLINE floats, in that order. per_class: one row per published class {class,
    conditional_accuracy, frechet_distance, diversity_synthetic, diversity_real} (nan where a side has < 2
    digits). confusion: the evaluator's {actual, predicted, count} rows on the published digits. cas_runs: per
    seed {seed, cas_accuracy, real_baseline_accuracy, cas_ratio, augmentation_gain}."""

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    confusion: list[dict[str, int]]
    cas_runs: list[dict[str, float]]


def _mean(values: dict[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else math.nan


def evaluate_version(
    version: PublishedVersion,
    real_train: Labelled,
    real_test: Labelled,
    evaluator_model: nn.Module,
    filter_classifier: nn.Module,
    cfg: EvaluateConfig,
    classifier_cfg: ClassifierConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
) -> EvaluationResult:
    """Every measure of one published version. Memorisation and duplicate rates are the publish gate's, read
    from the version's manifest (the gate computed them from the published bytes).

    Args:
        version: the published version (its manifest lists the files of its train and unfiltered splits).
        real_train, real_test: the prepared real splits (e.g. DigitsDataset).
        evaluator_model: the independent evaluator (features and predictions); moved to `device`.
        filter_classifier: the filtering judge (predictions only); moved to `device`.
        cfg: the CAS budget (steps, batch size) and seeds.
        classifier_cfg: the filtering classifier's section: the architecture and the other training settings
            of the CAS classifiers.
        device, batch_size: where the networks run and how many images a forward pass holds (`hardware`).
    """
    gate = version.manifest.get("gate") or {}
    if not {"memorization_rate", "duplicate_rate"} <= set(gate):
        raise DataError(f"{version.path}: its manifest has no gate rates; publish the version again")
    device = torch.device(device)
    published_uint8, published_labels = load_arrays(version_files(version))
    raw_uint8, raw_labels = load_arrays(version_files(version, "unfiltered"))
    published = Digits(to_model_range(published_uint8), torch.from_numpy(published_labels))
    raw = Digits(to_model_range(raw_uint8), torch.from_numpy(raw_labels))
    evaluator, judge = evaluator_model.to(device).eval(), filter_classifier.to(device).eval()

    def features(data: Labelled) -> Tensor:
        return in_batches(evaluator.features, data.images, device, batch_size).cpu()

    predicted = predict(evaluator, published.images, batch_size).cpu()
    conditional = accuracy_report(predicted, published.labels)
    feats = {
        name: features(d)
        for name, d in [("synthetic", published), ("train", real_train), ("test", real_test)]
    }
    frechet = frechet_per_class(feats["synthetic"], published.labels, feats["train"], real_train.labels)
    spread = {
        "synthetic": diversity(feats["synthetic"], published.labels),
        "real": diversity(feats["train"], real_train.labels),
    }
    cas_cfg = classifier_cfg.model_copy(
        update={"train": classifier_cfg.train.model_copy(update={"batch_size": cfg.cas_batch_size})}
    )
    runs = []
    for seed in cfg.cas_seeds:
        args = (published, real_train, real_test, cas_cfg, cfg.cas_steps, seed, str(device))
        runs.append({"seed": seed, **cas(*args), "augmentation_gain": augmentation_gain(*args)})
    metrics = {
        "conditional_accuracy_published": conditional.accuracy,
        "conditional_accuracy_raw": accuracy(evaluator, raw, batch_size),
        "judge_accuracy_published": accuracy(judge, published, batch_size),
        "judge_accuracy_raw": accuracy(judge, raw, batch_size),
        **{k: float(np.mean([r[k] for r in runs])) for k in CAS_KEYS},
        "frechet_distance": frechet_distance(feats["synthetic"], feats["train"]),
        "frechet_distance_real": frechet_distance(feats["test"], feats["train"]),
        "diversity_synthetic": _mean(spread["synthetic"]),
        "diversity_real": _mean(spread["real"]),
        "memorization_rate": float(gate["memorization_rate"]),
        "duplicate_rate": float(gate["duplicate_rate"]),
    }
    per_class = [
        {
            "class": int(c),
            "conditional_accuracy": conditional.per_class[c],
            "frechet_distance": frechet.get(c, math.nan),
            "diversity_synthetic": spread["synthetic"].get(c, math.nan),
            "diversity_real": spread["real"].get(c, math.nan),
        }
        for c in conditional.per_class
    ]
    return EvaluationResult(metrics, per_class, confusion_rows(published.labels, predicted), runs)
