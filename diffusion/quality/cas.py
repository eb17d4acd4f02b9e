"""Classification Accuracy Score (Ravuri & Vinyals 2019) trained to convergence, and the augmentation gain.

The recipe, one fit (`train_to_convergence`):

    network     LeNet-5-style CNN (diffusion/judges/lenet.py; LeCun et al. 1998): neither the filtering
                judge's architecture nor the evaluator's, so neither grades digits it chose or resembles
    optimizer   Adam(lr, weight_decay) from `CasConfig`, constant learning rate, cross-entropy, no label
                smoothing, no augmentation (the data is what is measured); `batch_size` digits per step,
                a fresh shuffle every epoch (the ragged last batch is kept)
    stopping    after every epoch, accuracy on the REAL validation split; training stops once it has not
                improved (strictly) for `patience` epochs, or after `max_epochs`; the best-validation epoch's
                weights are kept and tested once on the REAL test split
    randomness  one explicit CPU `torch.Generator` per fit, seeded by the training seed: weight init and
                batch order (nothing reads torch's global RNG: this runs inside Prefect's worker threads);
                the same seed gives the same weights on the CPU (GPU kernels need not be bitwise repeatable)
    threads     on the CPU each fit runs on ONE torch thread, several side by side in worker processes
                (diffusion/quality/fits.py): the same weights whatever the machine's core count

Per seed (`cas_runs`), four fits with that seed, all tested on the real test split:

    cas_accuracy            trained on the synthetic digits only
    real_baseline_accuracy  trained on a class-balanced draw (seeded by the same seed) of as many real training
                            digits, capped at all of them
    cas_ratio               cas_accuracy / real_baseline_accuracy: 1 when synthetic digits replace real ones
    augmentation_gain       points (100 x accuracy) gained by training on every real training digit plus the
                            synthetic ones instead of the real training digits alone
    epochs                  epochs the synthetic-only fit ran before it stopped

Over seeds (`cas`): each metric's mean (cas_ratio is the mean of the per-seed ratios) and a 95% Student-t
interval over seeds, mean +- t(0.975, n-1) s / sqrt(n) with s the sample standard deviation (scipy.stats.t).
It holds the training noise only: the test split is the same for every seed, so the test-sampling noise
(about +-1.4 points on 1,001 digits) is not in it. One seed has no interval: (nan, nan).

Images are (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor

from diffusion.config import CasConfig
from diffusion.data.labelled import Labelled
from diffusion.errors import DataError
from diffusion.judges.lenet import LeNet5, new_lenet
from diffusion.judges.training import NUM_CLASSES, accuracy
from diffusion.quality.fits import FitPool

INTERVAL_KEYS = ("cas_accuracy", "real_baseline_accuracy", "cas_ratio", "augmentation_gain")


@dataclass(frozen=True)
class Digits:
    """Digits in memory: images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


def balanced_indices(labels: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """min(n, N) row indices into `labels` (N,) drawn by `generator`, as evenly across classes as they allow.

    Classes are dealt in turns, one random digit of each per turn (a random class order breaks the tie of
    the last turn), so a class that runs out leaves its share to the others.
    """
    perm = torch.randperm(len(labels), generator=generator)
    y = labels[perm]
    rank = torch.zeros_like(y)
    for c in range(NUM_CLASSES):
        mask = y == c
        rank[mask] = torch.arange(int(mask.sum()))
    position = torch.argsort(torch.randperm(NUM_CLASSES, generator=generator))  # class -> place in a turn
    return perm[torch.argsort(rank * NUM_CLASSES + position[y], stable=True)[:n]]


def balanced_subset(data: Labelled, n: int, generator: torch.Generator) -> Digits:
    """min(n, N) digits of `data` drawn by `generator`, as evenly across classes as the data allows."""
    pick = balanced_indices(data.labels, n, generator)
    return Digits(data.images[pick], data.labels[pick])


# --------------------------------------------------------------------------- one fit
@dataclass
class ConvergedFit:
    """A fit of the recipe: the best-validation weights (eval mode), the epochs run, the best epoch, and the
    validation accuracy after every epoch."""

    model: LeNet5
    epochs: int
    best_epoch: int
    val_accuracy: float
    history: list[float] = field(default_factory=list)


def train_to_convergence(
    train: Labelled, real_val: Labelled, cfg: CasConfig, seed: int, device: torch.device | str = "cpu"
) -> ConvergedFit:
    """Fit a LeNet5 on `train` by the module's recipe until real validation accuracy stops improving."""
    if len(train.labels) == 0:
        raise DataError("CAS needs at least one training digit (the training set is empty)")
    if len(real_val.labels) == 0:
        raise DataError("CAS stops on real validation accuracy, but the real validation split is empty")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    model = new_lenet(generator, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x, y = train.images.to(device), train.labels.to(device)
    val = Digits(real_val.images.to(device), real_val.labels)
    best, best_epoch, best_state, history = -math.inf, 0, {}, []
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        for idx in torch.randperm(len(y), generator=generator).to(device).split(cfg.batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append(score := accuracy(model, val))
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best_state)
    return ConvergedFit(model.eval(), len(history), best_epoch, best, history)


def converged_test_accuracy(
    train: Labelled,
    real_val: Labelled,
    real_test: Labelled,
    cfg: CasConfig,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Real-test accuracy of the recipe's classifier trained on `train` (`train_to_convergence`), and the
    epochs it ran: one seed of CAS, and of `digits train-on`."""
    fit = train_to_convergence(train, real_val, cfg, seed, device)
    return accuracy(fit.model, real_test), fit.epochs


# --------------------------------------------------------------------------- one seed, all seeds
def _seed_sets(
    synthetic: Labelled, real_train: Labelled, both: Labelled | None, seed: int
) -> dict[str, Labelled]:
    """The training sets of one seed's fits (module docstring), by the name of the fit."""
    real = balanced_subset(real_train, len(synthetic.labels), torch.Generator().manual_seed(seed))
    sets = {"synthetic": synthetic, "real": real}
    return sets | ({"with_synthetic": both, "alone": real_train} if both is not None else {})


def _seed_scores(seed: int, fits: dict[str, Future[tuple[float, int]]]) -> dict[str, float]:
    """One seed's row of metrics (module docstring) from the results of its fits."""
    (synthetic_score, epochs), (real_score, _) = fits["synthetic"].result(), fits["real"].result()
    run = {
        "seed": seed,
        "cas_accuracy": synthetic_score,
        "real_baseline_accuracy": real_score,
        "cas_ratio": synthetic_score / real_score if real_score > 0 else math.nan,  # nothing to compare with
    }
    if "alone" in fits:
        gain = fits["with_synthetic"].result()[0] - fits["alone"].result()[0]
        run["augmentation_gain"] = 100.0 * gain
    return run | {"epochs": epochs}


def cas_runs(
    synthetic: Labelled,
    real_train: Labelled,
    real_val: Labelled,
    real_test: Labelled,
    cfg: CasConfig,
    seeds: tuple[int, ...],
    pool: FitPool,
    gain: bool = True,
) -> list[dict[str, float]]:
    """One row of {seed, cas_accuracy, real_baseline_accuracy, cas_ratio, augmentation_gain, epochs} per
    seed (module docstring), every fit run by `pool` (diffusion/quality/fits.py: side by side on the CPU,
    one torch thread each); gain=False skips the two largest fits and leaves augmentation_gain out."""
    both = None
    if gain:
        both = Digits(
            torch.cat([real_train.images, synthetic.images]), torch.cat([real_train.labels, synthetic.labels])
        )
    jobs = [
        (seed, name, data)
        for seed in seeds
        for name, data in _seed_sets(synthetic, real_train, both, seed).items()
    ]
    jobs.sort(key=lambda job: -len(job[2].labels))  # the largest first, so that the workers end together
    fits: dict[int, dict[str, Future[tuple[float, int]]]] = {seed: {} for seed in seeds}
    for seed, name, data in jobs:
        fits[seed][name] = pool.submit(data, real_val, real_test, cfg, seed)
    return [_seed_scores(seed, fits[seed]) for seed in seeds]


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The Student-t interval of the mean of `values`: mean +- t((1+confidence)/2, n-1) s / sqrt(n); (nan,
    nan) for fewer than two values."""
    if len(values) < 2:
        return (math.nan, math.nan)
    a = np.asarray(values, dtype=np.float64)
    mean, half = a.mean(), stats.t.ppf((1 + confidence) / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return (float(mean - half), float(mean + half))


@dataclass(frozen=True)
class CasScores:
    """runs: `cas_runs`' rows, one per seed. means: the mean of each of their metrics over seeds, and
    cas_epochs (the synthetic-only fits' mean epochs). intervals: the 95% t-interval of each INTERVAL_KEYS
    metric present."""

    runs: list[dict[str, float]]
    means: dict[str, float]
    intervals: dict[str, tuple[float, float]]


def cas(
    synthetic: Labelled,
    real_train: Labelled,
    real_val: Labelled,
    real_test: Labelled,
    cfg: CasConfig,
    device: torch.device | str = "cpu",
    gain: bool = True,
    pool: FitPool | None = None,
) -> CasScores:
    """`cas_runs` for every seed of `cfg.seeds`, with the means and 95% intervals over them. `pool`: where
    the fits run, on the pool's device (a caller grading several sets keeps one); None: a `FitPool` on
    `device` for this call.

    Fewer synthetic digits than classes stand for no classifier: both fits of a seed would guess, and their
    ratio of two chance-level accuracies (about 1.0) would read as a perfect score. Then nothing is fitted
    and every metric and interval is NaN ("not measured", which any monitor bound on it flags).
    """
    if len(synthetic.labels) < NUM_CLASSES:
        nan = (math.nan, math.nan)
        keys = INTERVAL_KEYS if gain else INTERVAL_KEYS[:3]
        return CasScores([], dict.fromkeys((*keys, "cas_epochs"), math.nan), dict.fromkeys(keys, nan))
    with contextlib.nullcontext(pool) if pool is not None else FitPool(device) as fits:
        runs = cas_runs(synthetic, real_train, real_val, real_test, cfg, cfg.seeds, fits, gain)
    keys = [k for k in INTERVAL_KEYS if k in runs[0]]
    means = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    means["cas_epochs"] = float(np.mean([r["epochs"] for r in runs]))
    intervals = {k: t_interval([r[k] for r in runs]) for k in keys}
    return CasScores(runs, means, intervals)
