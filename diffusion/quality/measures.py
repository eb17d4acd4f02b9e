"""Measures of a published version from outside the project: PRDC, DCR and a confident-learning label audit.

    precision, recall,      Naeem et al. 2020 ("Reliable fidelity and diversity metrics for generative
    density, coverage       models"), computed by their `prdc` package (k nearest neighbours) in the
                            evaluator's features: published digits against the real test digits.
                            precision/density: published digits lie where real digits do (fidelity);
                            recall/coverage: the real digits' variety is reached (diversity)
    *_real, coverage_ratio  the same four for as many real training digits against the same real test digits:
                            what real data scores at this size (the four depend on the set sizes and on k);
                            coverage_ratio = coverage / coverage_real
    dcr_share               distance to closest record after SDMetrics' DCROverfittingProtection
                            (https://docs.sdv.dev/sdmetrics/metrics/privacy-and-fairness-metrics/
                            dcroverfittingprotection): the share of published digits whose closest real
                            record is a training digit rather than a held-out one, ties counting half, each
                            side's count divided by its reference's size (below). 0.5: the generator is as
                            close to digits it never saw as to those it trained on; 1: every digit sits
                            nearest a training digit (copying). SDMetrics reports min(1, 2 (1 - share)); the
                            share is the plainer number
    dcr_share_real          the same for real digits neither reference holds (the validation split): ~0.5
    label_issue_rate        cleanlab's confident learning (Northcutt et al. 2021) on the evaluator's softmax
                            probabilities: the share of published digits whose label it calls wrong

DCR is measured in pixel space as the RMS distance of [0, 1] pixels, like the publish gate's copy_distance:
a copy is a pixel-level event, and the evaluator's features are not neutral between the two references
(it was trained on the training split, so its features could pull training digits closer than held-out
ones). The holdout is the real test split (M digits); the training reference is the whole training split
(N digits). With N = M the share is SDMetrics' exactly. With N > M the bigger set would win on size alone
(a digit independent of both is nearest a training digit with probability N / (N + M), 0.89 for 8,000 vs
1,001), so the share weighs the counts: c_T / N / (c_T / N + c_H / M), with c_T and c_H the published
digits nearest a training and a held-out digit; that is 0.5 for any digit drawn independently of the
real data, since the N + M real digits are exchangeable. The alternative, a random draw of M training
digits, is 0.5 there too but sees a copy only when the copied digit was drawn: a version of nothing but
copies would score 0.5 + 0.5 M / N (0.56), not 1.

The label audit needs out-of-sample probabilities; the evaluator never saw a synthetic digit, so its
probabilities on the published digits are out of sample as they are and no cross-validation is needed.
"""

from __future__ import annotations

import math
import threading

import cleanlab.filter
import numpy as np
import prdc as prdc_package
import torch
from torch import Tensor

PRDC_KEYS = ("precision", "recall", "density", "coverage")
# cleanlab's find_label_issues hands data to its helpers through module globals even with n_jobs=1, so two
# gradings in one process (Prefect threads) would read each other's: one call at a time
_CLEANLAB = threading.Lock()


# --------------------------------------------------------------------------- PRDC
def prdc(real_feats: Tensor | np.ndarray, fake_feats: Tensor | np.ndarray, k: int) -> dict[str, float]:
    """{precision, recall, density, coverage} of fake features (M, D) against real features (N, D) with k
    nearest neighbours (`prdc.compute_prdc`); nan for each when a side has k + 1 rows or fewer (the k-th
    neighbour of a row, itself excluded, needs k + 2 rows: prdc partitions at index k + 1)."""
    real, fake = (np.asarray(torch.as_tensor(f).detach().cpu().float()) for f in (real_feats, fake_feats))
    if min(len(real), len(fake)) <= k + 1:
        return dict.fromkeys(PRDC_KEYS, math.nan)
    scores = prdc_package.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {key: float(scores[key]) for key in PRDC_KEYS}


def prdc_with_reference(
    published_feats: Tensor, reference_feats: Tensor, real_feats: Tensor, k: int
) -> dict[str, float]:
    """PRDC of the published features and of the real reference's (as many real digits), both against
    `real_feats`: precision, recall, density, coverage, their *_real twins and coverage_ratio."""
    ours = prdc(real_feats, published_feats, k)
    real = prdc(real_feats, reference_feats, k)
    ratio = ours["coverage"] / real["coverage"] if real["coverage"] > 0 else math.nan
    return ours | {f"{key}_real": real[key] for key in PRDC_KEYS} | {"coverage_ratio": ratio}


# --------------------------------------------------------------------------- DCR
def _levels(images: Tensor, device: torch.device) -> Tensor:
    """Images (N, 1, 28, 28) in [-1, 1] -> (N, 784) float64 pixel levels 0-255 on `device`: integers, so
    squared distances through a matrix product are exact and equal distances tie exactly."""
    return ((images.to(device).flatten(1).double() + 1.0) * 127.5).round()


def nearest_rms(
    queries: Tensor, reference: Tensor, device: torch.device | str = "cpu", batch_size: int = 500
) -> Tensor:
    """For each query image, the RMS distance of [0, 1] pixels to its nearest reference image: (N,) on the CPU.

    queries (N, 1, 28, 28) and reference (M, 1, 28, 28) in [-1, 1]; torch.cdist on `device`, `batch_size`
    queries at a time, over integer pixel levels in float64 (exact).
    """
    device = torch.device(device)
    ref = _levels(reference, device)
    scale = 255.0 * math.sqrt(ref.shape[1])
    out = [
        torch.cdist(_levels(chunk, device), ref, compute_mode="use_mm_for_euclid_dist").amin(1).cpu()
        for chunk in queries.split(batch_size)
    ]
    return (torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)) / scale


def dcr_share(
    queries: Tensor,
    train_reference: Tensor,
    holdout: Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
) -> float:
    """The size-weighted share of `queries` whose nearest image (RMS pixels) lies in `train_reference` rather
    than in `holdout` (module docstring): c_T / N / (c_T / N + c_H / M), a tie counting half to each; with
    references of one size, the plain share strictly closer to the training reference. nan without queries."""
    to_train = nearest_rms(queries, train_reference, device, batch_size)
    to_holdout = nearest_rms(queries, holdout, device, batch_size)
    if len(to_train) == 0:
        return math.nan
    ties = 0.5 * (to_train == to_holdout).double().sum().item()
    per_train = ((to_train < to_holdout).double().sum().item() + ties) / len(train_reference)
    per_holdout = ((to_holdout < to_train).double().sum().item() + ties) / len(holdout)
    return per_train / (per_train + per_holdout)


def dcr_shares(
    published: Tensor,
    real_train: Tensor,
    real_val: Tensor,
    real_test: Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
) -> dict[str, float]:
    """dcr_share of the published images and dcr_share_real of the real validation images, both with every
    real training image as the training reference and real_test as the holdout."""
    return {
        "dcr_share": dcr_share(published, real_train, real_test, device, batch_size),
        "dcr_share_real": dcr_share(real_val, real_train, real_test, device, batch_size),
    }


# --------------------------------------------------------------------------- label audit
def label_issues(
    labels: Tensor | np.ndarray, pred_probs: Tensor | np.ndarray, method: str = "prune_by_noise_rate"
) -> np.ndarray:
    """cleanlab.filter.find_label_issues on labels (N,) and out-of-sample probabilities (N, 10): a boolean
    mask (N,), True where the label looks wrong. `method` is cleanlab's `filter_by`; one process (n_jobs=1:
    no multiprocessing from inside a Prefect thread) and one call at a time (cleanlab keeps module state).
    Fewer than two classes: nothing to confuse a label with, so no issue (cleanlab refuses them)."""
    y = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    probs = np.asarray(torch.as_tensor(pred_probs).detach().cpu().double())
    if len(np.unique(y)) < 2:
        return np.zeros(len(y), dtype=bool)
    probs = probs / probs.sum(1, keepdims=True)
    with _CLEANLAB:
        issues = cleanlab.filter.find_label_issues(y, probs, filter_by=method, n_jobs=1)
    return np.asarray(issues, dtype=bool)
