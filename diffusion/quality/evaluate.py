"""Measure a published version with judges it was not filtered by, against held-out real digits.

The filtering classifier chose what was published, so its accuracy there is ~1 by construction. The metrics
of `evaluate_version` (all floats, in METRIC_NAMES order; diffusion/quality/headline.py names the headline
ones every consumer shows and watches):

    conditional_accuracy_published  the independent evaluator's accuracy on the published digits, each labelled
    conditional_accuracy_raw        with the digit it was asked for; raw: every digit the run sampled
    judge_accuracy_published        the filtering classifier's view of the same digits
    judge_accuracy_raw
    cas_accuracy                    Classification Accuracy Score (Ravuri & Vinyals 2019): a LeNet-5-style
                                    classifier (a third architecture) trained to convergence on the published
                                    digits only (early stopping on the real validation split), tested on the
                                    real test digits; diffusion/quality/cas.py states the recipe
    real_baseline_accuracy          the same trained on as many real training digits (class-balanced)
    cas_ratio                       mean over seeds of cas_accuracy / real_baseline_accuracy: 1 when
                                    synthetic replaces real
    augmentation_gain               points on real test gained by adding the published digits to every real
                                    training digit (same recipe)
    cas_epochs                      mean epochs the synthetic-only classifiers trained before they stopped
    frechet_distance                Frechet distance (Heusel et al. 2017) of the evaluator's features between
                                    the published digits and the real training digits
    frechet_distance_real           the same between the real test and the real training digits: the floor
                                    (it grows as samples shrink: 1,001 test digits vs the version's count)
    diversity_synthetic             mean feature distance between two digits of the same class, averaged over
    diversity_real                  classes (published; real training digits)
    precision, recall,              Naeem et al. 2020 (the `prdc` package, k = `prdc_k`) in the evaluator's
    density, coverage               features: the published digits against the real test digits
    precision_real, recall_real,    the same for a class-balanced draw of as many real training digits against
    density_real, coverage_real     the same real test digits; coverage_ratio = coverage / coverage_real
    coverage_ratio
    dcr_share                       share of published digits nearer (RMS pixels) a real training digit than
                                    a held-out real one (SDMetrics' DCR, the counts weighed by the sizes of
                                    the two references; ties half): 0.5 is no memorisation, 1 all copies
    dcr_share_real                  the same for the real validation digits: ~0.5
    memorization_rate               share of published digits within RMS `copy_distance` of a real training digit
                                    (the publish gate's, from the manifest)
    duplicate_rate                  share of published digits whose pixels repeat an earlier one's (the gate's)
    label_issue_rate                share of published digits cleanlab's confident learning calls mislabelled,
                                    from the evaluator's probabilities (their ids: `label_issues`)

diffusion/quality/measures.py defines PRDC, DCR and the label audit. The CAS metrics are means over
`EvaluateConfig.cas.seeds`, with 95% t-intervals over seeds in `intervals`. The draws PRDC compares (the
real reference, and the published digits when there are more of them than real training digits) are
seeded by REFERENCE_SEED, so a version's measures repeat. Images are (N, 1, 28, 28) in [-1, 1] and labels
(N,) int64 unless said otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffusion.config import EvaluateConfig
from diffusion.data.datasets import DigitsDataset
from diffusion.data.labelled import Labelled
from diffusion.data.shards import PublishedVersion
from diffusion.errors import DataError
from diffusion.judges.training import (
    NUM_CLASSES,
    accuracy,
    accuracy_report,
    confusion_rows,
    in_batches,
)
from diffusion.quality.cas import Digits, balanced_indices, cas
from diffusion.quality.fits import FitPool
from diffusion.quality.measures import dcr_shares, label_issues, prdc_with_reference

__all__ = [
    "METRIC_NAMES",
    "Digits",
    "EvaluationResult",
    "conditional_accuracy",
    "diversity",
    "evaluate_version",
    "feature_measures",
    "frechet_distance",
    "frechet_per_class",
]

METRIC_NAMES = (
    "conditional_accuracy_published",
    "conditional_accuracy_raw",
    "judge_accuracy_published",
    "judge_accuracy_raw",
    "cas_accuracy",
    "real_baseline_accuracy",
    "cas_ratio",
    "augmentation_gain",
    "cas_epochs",
    "frechet_distance",
    "frechet_distance_real",
    "diversity_synthetic",
    "diversity_real",
    "precision",
    "recall",
    "density",
    "coverage",
    "precision_real",
    "recall_real",
    "density_real",
    "coverage_real",
    "coverage_ratio",
    "dcr_share",
    "dcr_share_real",
    "memorization_rate",
    "duplicate_rate",
    "label_issue_rate",
)
REFERENCE_SEED = 0  # of the draws PRDC compares


# --------------------------------------------------------------------------- fidelity to the label
def conditional_accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """The model's accuracy (eval mode, on its device) on images labelled with the digit they were asked for."""
    return accuracy(model, Digits(images, labels))


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
    """metrics: the METRIC_NAMES floats, in that order. intervals: the 95% t-interval over CAS seeds of
    cas_accuracy, real_baseline_accuracy, cas_ratio and augmentation_gain ((nan, nan) with one seed).
    per_class: one row per published class {class, conditional_accuracy, frechet_distance,
    diversity_synthetic, diversity_real, label_issue_rate} (nan where a side has < 2 digits). confusion: the
    evaluator's {actual, predicted, count} rows on the published digits. cas_runs: per seed {seed,
    cas_accuracy, real_baseline_accuracy, cas_ratio, augmentation_gain, epochs}. label_issues: the `id`s of
    the published digits the label audit flags, in file order."""

    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    per_class: list[dict[str, Any]]
    confusion: list[dict[str, int]]
    cas_runs: list[dict[str, float]]
    label_issues: list[str]


def _mean(values: dict[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else math.nan


def _draw(labels: Tensor, n: int) -> Tensor:
    """Every row index when there are at most n, else a class-balanced draw of n (seeded by REFERENCE_SEED)."""
    if len(labels) <= n:
        return torch.arange(len(labels))
    return balanced_indices(labels, n, torch.Generator().manual_seed(REFERENCE_SEED))


def feature_measures(
    feats: dict[str, Tensor], labels: Tensor, train_labels: Tensor, k: int
) -> dict[str, float]:
    """The measures in the evaluator's feature space of one set of published digits against real ones:
    frechet_distance (and _real: real test against real training), and precision, recall, density and
    coverage against the real test digits, with the same of a class-balanced draw of as many real training
    digits (the _real measures, coverage_ratio). PRDC compares sets of one size: the larger of the
    published and real training sets is drawn down to the smaller, class-balanced (REFERENCE_SEED). A
    distance with fewer than 2 rows on a side is nan, and so is PRDC with at most k (`prdc`).

    feats: "synthetic" (N, D), "train" (M, D), "test" (T, D) features; labels (N,) and train_labels (M,)
    int64 the classes of the first two; k: PRDC's nearest neighbours.
    """
    size = min(len(labels), len(train_labels))

    def frechet(a: Tensor, b: Tensor) -> float:  # nan where a side has too few rows to fit a Gaussian
        return frechet_distance(a, b) if min(len(a), len(b)) >= 2 else math.nan

    return {
        "frechet_distance": frechet(feats["synthetic"], feats["train"]),
        "frechet_distance_real": frechet(feats["test"], feats["train"]),
        **prdc_with_reference(
            feats["synthetic"][_draw(labels, size)],
            feats["train"][_draw(train_labels, size)],
            feats["test"],
            k,
        ),
    }


def evaluate_version(
    version: PublishedVersion,
    published: DigitsDataset,
    raw: DigitsDataset,
    real_train: Labelled,
    real_val: Labelled,
    real_test: Labelled,
    evaluator_model: nn.Module,
    filter_classifier: nn.Module,
    cfg: EvaluateConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    pool: FitPool | None = None,
) -> EvaluationResult:
    """Every measure of one published version. Memorisation and duplicate rates are the publish gate's, read
    from the version's manifest (the gate computed them from the published bytes).

    Args:
        version: the published version (its manifest holds the gate's rates).
        published, raw: its train and unfiltered splits as read, each file checked against the manifest on
            the bytes read (`published_dataset(version)` and `published_dataset(version, "unfiltered")`).
        real_train, real_val, real_test: the prepared real splits (e.g. DigitsDataset). val: CAS's early
            stopping and the real-vs-real DCR; test: what CAS is tested on, PRDC's real set, DCR's holdout.
        evaluator_model: the independent evaluator (features, probabilities); moved to `device`.
        filter_classifier: the filtering judge (predictions only); moved to `device`.
        cfg: the CAS recipe and seeds, PRDC's k, the label audit's method.
        device, batch_size: where the networks run and how many images a forward pass holds (`hardware`).
        pool: where CAS's fits run (diffusion/quality/fits.py); None: a `FitPool` on `device` for this call.
    """
    gate = version.manifest.get("gate") or {}
    if not {"memorization_rate", "duplicate_rate"} <= set(gate):
        raise DataError(f"{version.path}: its manifest has no gate rates; publish the version again")
    if published.ids is None:
        raise DataError(f"{version.path}: its train split has no id column; publish the version again")
    device, ids = torch.device(device), published.ids
    evaluator, judge = evaluator_model.to(device).eval(), filter_classifier.to(device).eval()

    def features(data: Labelled) -> Tensor:
        return in_batches(evaluator.features, data.images, device, batch_size).cpu()

    probs = in_batches(evaluator.probabilities, published.images, device, batch_size).cpu()
    conditional = accuracy_report(probs.argmax(1), published.labels)
    feats = {
        name: features(d)
        for name, d in [("synthetic", published), ("train", real_train), ("test", real_test)]
    }
    frechet = frechet_per_class(feats["synthetic"], published.labels, feats["train"], real_train.labels)
    spread = {
        "synthetic": diversity(feats["synthetic"], published.labels),
        "real": diversity(feats["train"], real_train.labels),
    }
    dcr = dcr_shares(
        published.images, real_train.images, real_val.images, real_test.images, device, batch_size
    )
    flagged = torch.from_numpy(label_issues(published.labels, probs, cfg.label_issue_method))
    scores = cas(published, real_train, real_val, real_test, cfg.cas, device, pool=pool)
    metrics = {
        "conditional_accuracy_published": conditional.accuracy,
        "conditional_accuracy_raw": accuracy(evaluator, raw, batch_size),
        "judge_accuracy_published": accuracy(judge, published, batch_size),
        "judge_accuracy_raw": accuracy(judge, raw, batch_size),
        **scores.means,
        **feature_measures(feats, published.labels, real_train.labels, cfg.prdc_k),
        "diversity_synthetic": _mean(spread["synthetic"]),
        "diversity_real": _mean(spread["real"]),
        **dcr,
        "memorization_rate": float(gate["memorization_rate"]),
        "duplicate_rate": float(gate["duplicate_rate"]),
        "label_issue_rate": flagged.double().mean().item() if len(flagged) else math.nan,
    }
    per_class = [
        {
            "class": int(c),
            "conditional_accuracy": conditional.per_class[c],
            "frechet_distance": frechet.get(c, math.nan),
            "diversity_synthetic": spread["synthetic"].get(c, math.nan),
            "diversity_real": spread["real"].get(c, math.nan),
            "label_issue_rate": flagged[published.labels == int(c)].double().mean().item(),
        }
        for c in conditional.per_class
    ]
    return EvaluationResult(
        metrics={k: float(metrics[k]) for k in METRIC_NAMES},
        intervals=scores.intervals,
        per_class=per_class,
        confusion=confusion_rows(published.labels, probs.argmax(1)),
        cas_runs=scores.runs,
        label_issues=[ids[i] for i in torch.nonzero(flagged).flatten().tolist()],
    )
