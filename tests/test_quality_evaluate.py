"""Evaluating a published version: Frechet distance, diversity, CAS to convergence, and the whole result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion.config import CasConfig, ClassifierConfig, EvaluateConfig, EvaluatorConfig
from diffusion.data.datasets import DigitsDataset, published_dataset, to_model_range
from diffusion.data.schema import digits_table
from diffusion.data.shards import publish_version
from diffusion.errors import DataError
from diffusion.judges.classifier import train_classifier
from diffusion.judges.evaluator import train_evaluator
from diffusion.quality.cas import (
    Digits,
    balanced_subset,
    cas,
    t_interval,
    train_to_convergence,
)
from diffusion.quality.evaluate import (
    METRIC_NAMES,
    conditional_accuracy,
    diversity,
    evaluate_version,
    frechet_distance,
    frechet_per_class,
)
from diffusion.quality.headline import METRICS
from tests.judges_fixtures import digits_split, one_thread, real_splits, render_digits  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ClassifierConfig(channels=(8, 16), hidden=32, train={"epochs": 3, "batch_size": 32, "lr": 3e-3})
QUICK = CasConfig(batch_size=16, lr=3e-3, max_epochs=8, patience=2, seeds=(0,))  # seconds on rendered digits


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DigitsDataset]:
    """Rendered digits standing in for the real splits."""
    return real_splits(tmp_path_factory.mktemp("real"), 400, 100, 200)


def gaussian(n: int, dim: int, seed: int) -> torch.Tensor:
    """(n, dim) correlated Gaussian features."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) @ torch.randn(
        dim, dim, generator=g, dtype=torch.float64
    )


# --------------------------------------------------------------------------- feature statistics
def test_frechet_distance_is_zero_for_identical_features_and_grows_with_a_shift() -> None:
    a = gaussian(300, 8, 0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifts = [frechet_distance(a, a + t) for t in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([8 * 0.25, 8 * 1.0, 8 * 4.0])  # ||t||^2: the covariances are equal
    assert frechet_distance(a, a.float()) == pytest.approx(0.0, abs=1e-4)  # any float type, tensors or arrays
    assert frechet_distance(a.numpy(), a.numpy() + 1.0) == pytest.approx(8.0)


def test_frechet_distance_matches_the_closed_form_of_gaussians() -> None:
    """b = s a + t has mean s mu + t and covariance s^2 S, so the distance is ||(s-1) mu + t||^2 + (1-s)^2 tr S."""
    a, s, t = gaussian(200, 6, 1), 1.7, torch.linspace(-1, 1, 6, dtype=torch.float64)
    b = s * a + t
    mu, cov = a.mean(0), torch.cov(a.T)
    expected = ((s - 1) * mu + t).square().sum() + (1 - s) ** 2 * torch.trace(cov)
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-9)
    # two unrelated Gaussians: the same as the formula with scipy's general matrix square root
    linalg = pytest.importorskip("scipy.linalg")
    c = gaussian(150, 6, 2) + 0.3
    ca, cc = np.cov(a.numpy(), rowvar=False), np.cov(c.numpy(), rowvar=False)
    diff = a.numpy().mean(0) - c.numpy().mean(0)
    reference = diff @ diff + np.trace(ca + cc) - 2 * np.trace(linalg.sqrtm(ca @ cc).real)
    assert frechet_distance(a, c) == pytest.approx(reference, rel=1e-6)


def test_frechet_per_class_and_diversity() -> None:
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [7.0, 7.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    assert diversity(feats, labels) == {"0": pytest.approx(5.0), "1": 0.0}  # class 2 has one digit
    a, b = gaussian(100, 3, 3), gaussian(100, 3, 4)
    la, lb = torch.arange(100) % 2, torch.arange(100) % 2
    per_class = frechet_per_class(a, la, b + 2.0 * lb[:, None], lb)
    assert set(per_class) == {"0", "1"} and per_class["1"] > per_class["0"] + 10


# --------------------------------------------------------------------------- training on the data
def test_balanced_subset_shares_out_what_a_short_class_leaves() -> None:
    labels = torch.cat([torch.full((3,), 1), torch.arange(500) % 10])
    labels = labels[labels != 1][:450].tolist() + [1, 1, 1]
    data = Digits(torch.zeros(len(labels), 1, 28, 28), torch.tensor(labels))
    pick = balanced_subset(data, 100, torch.Generator().manual_seed(0))
    counts = torch.bincount(pick.labels, minlength=10)
    others = counts[torch.arange(10) != 1]
    assert counts.sum() == 100 and counts[1] == 3 and others.max() - others.min() <= 1
    assert len(balanced_subset(data, 10_000, torch.Generator().manual_seed(0))) == len(labels)


def test_cas_ranks_real_digits_above_noise(real, tmp_path: Path) -> None:
    good = digits_split(tmp_path, "good", 200, 5)
    noise = Digits(
        torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1, good.labels
    )
    scores = {
        name: cas(d, real["train"], real["val"], real["test"], QUICK, gain=False).runs[0]
        for name, d in [("good", good), ("noise", noise)]
    }
    assert scores["good"]["cas_accuracy"] > scores["noise"]["cas_accuracy"] + 0.3
    assert scores["noise"]["cas_accuracy"] < 0.3  # about chance
    assert scores["good"]["real_baseline_accuracy"] == scores["noise"]["real_baseline_accuracy"]
    assert scores["good"]["cas_ratio"] == pytest.approx(
        scores["good"]["cas_accuracy"] / scores["good"]["real_baseline_accuracy"]
    )
    assert "augmentation_gain" not in scores["good"]


def test_train_to_convergence_keeps_the_best_epoch_and_is_seeded(real, tmp_path: Path) -> None:
    good = digits_split(tmp_path, "good", 200, 5)
    before = torch.random.get_rng_state()
    a, b = (train_to_convergence(good, real["val"], QUICK, seed=7) for _ in range(2))
    c = train_to_convergence(good, real["val"], QUICK, seed=8)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is neither read nor advanced
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())
    assert a.history == b.history and a.history != c.history
    assert a.val_accuracy == max(a.history) == a.history[a.best_epoch - 1] > 0.5
    assert a.epochs == len(a.history) <= QUICK.max_epochs and not a.model.training
    assert a.epochs == QUICK.max_epochs or a.epochs - a.best_epoch == QUICK.patience


def test_train_to_convergence_stops_when_validation_stops_improving(real) -> None:
    """A learning rate too small to change a prediction: validation accuracy never beats epoch 1's, so
    training stops after epoch 1 + patience, long before max_epochs."""
    frozen = QUICK.model_copy(update={"lr": 1e-12, "weight_decay": 0.0, "max_epochs": 40, "patience": 3})
    fit = train_to_convergence(real["val"], real["val"], frozen, seed=0)
    assert (fit.epochs, fit.best_epoch) == (4, 1) and len(set(fit.history)) == 1


def test_t_interval() -> None:
    lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, t(0.975, 2) = 4.3027
    assert (lo + hi) / 2 == pytest.approx(2.0) and hi - 2.0 == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    assert t_interval([0.5, 0.5]) == (0.5, 0.5)
    assert all(np.isnan(t_interval([0.9])))


def test_cas_over_seeds_means_intervals_and_gain(real, tmp_path: Path) -> None:
    good = digits_split(tmp_path, "good", 200, 5)
    cfg = QUICK.model_copy(update={"seeds": (0, 1, 2), "max_epochs": 2, "patience": 1})
    scores = cas(good, real["train"], real["val"], real["test"], cfg)
    assert [r["seed"] for r in scores.runs] == [0, 1, 2]
    assert set(scores.intervals) == {
        "cas_accuracy",
        "real_baseline_accuracy",
        "cas_ratio",
        "augmentation_gain",
    }
    for key, (lo, hi) in scores.intervals.items():
        assert lo <= scores.means[key] <= hi
        assert scores.means[key] == pytest.approx(np.mean([r[key] for r in scores.runs]))
    assert scores.means["cas_epochs"] == np.mean([r["epochs"] for r in scores.runs])
    assert all(-100 <= r["augmentation_gain"] <= 100 and 1 <= r["epochs"] <= 2 for r in scores.runs)
    again = cas(good, real["train"], real["val"], real["test"], cfg.model_copy(update={"seeds": (1,)}))
    assert again.runs == [scores.runs[1]]  # a seed's run does not depend on the other seeds


def test_cas_of_fewer_digits_than_classes_is_not_measured(real, tmp_path: Path) -> None:
    """Nine digits cannot stand for ten classes: no fit, every metric NaN, not a chance-level ratio of 1."""
    few = digits_split(tmp_path, "few", 9, 5)
    scores = cas(few, real["train"], real["val"], real["test"], QUICK)
    assert scores.runs == [] and set(scores.intervals) == {
        "cas_accuracy",
        "real_baseline_accuracy",
        "cas_ratio",
        "augmentation_gain",
    }
    assert all(np.isnan(v) for v in scores.means.values()) and "cas_epochs" in scores.means
    assert "augmentation_gain" not in cas(few, *real.values(), QUICK, gain=False).means
    ten = cas(digits_split(tmp_path, "ten", 10, 5), *real.values(), QUICK, gain=False)
    assert np.isfinite(ten.means["cas_ratio"])


# --------------------------------------------------------------------------- one version
def test_evaluate_version_reports_every_headline_metric(real, tmp_path: Path) -> None:
    fresh, fresh_labels = render_digits(60, seed=7)
    train_images = ((real["train"].images[:10, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    images = np.concatenate([fresh, train_images, fresh[:1]])  # 10 copies of training digits, 1 duplicate
    labels = np.concatenate([fresh_labels, real["train"].labels[:10].numpy(), fresh_labels[:1]])
    noise = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    raw_images, raw_labels = np.concatenate([images, noise]), np.concatenate([labels, np.arange(30) % 10])
    splits = {
        "train": digits_table([f"p{i}" for i in range(71)], images, labels, "synthetic"),
        "unfiltered": digits_table([f"u{i}" for i in range(101)], raw_images, raw_labels, "synthetic"),
    }
    gate = {"memorization_rate": 10 / 71, "duplicate_rate": 1 / 71}  # what the publish gate measured
    version = publish_version(str(tmp_path), "tiny", "v1", splits, 25, "card", {"gate": gate})
    evaluator_cfg = EvaluatorConfig(widths=(8, 16, 32), train={"epochs": 4, "batch_size": 32, "lr": 5e-3})
    evaluator = train_evaluator(evaluator_cfg, real["train"], real["val"], real["test"], progress=False).model
    judge = train_classifier(TINY, real["train"], real["val"], real["test"], progress=False).model
    cfg = EvaluateConfig(cas=QUICK.model_copy(update={"seeds": (0, 1), "max_epochs": 3, "patience": 1}))
    splits_ = (real["train"], real["val"], real["test"])
    read = (published_dataset(version), published_dataset(version, "unfiltered"))
    result = evaluate_version(version, *read, *splits_, evaluator, judge, cfg, batch_size=64)
    m = result.metrics
    assert tuple(m) == METRIC_NAMES and all(isinstance(v, float) and np.isfinite(v) for v in m.values())
    assert set(METRICS) <= set(m)  # every headline metric, under the name every consumer reads
    published = Digits(to_model_range(images), torch.from_numpy(labels))
    assert m["conditional_accuracy_published"] == conditional_accuracy(
        evaluator, published.images, published.labels
    )
    assert m["conditional_accuracy_raw"] < m["conditional_accuracy_published"]  # noise was sampled too
    assert m["judge_accuracy_raw"] < m["judge_accuracy_published"]
    assert m["memorization_rate"] == 10 / 71 and m["duplicate_rate"] == 1 / 71  # the gate's, not again
    with pytest.raises(DataError, match="no gate rates"):
        evaluate_version(
            publish_version(str(tmp_path), "tiny", "v2", splits, 25, "card", {}),
            *(*read, *splits_, evaluator, judge, cfg),
        )
    assert m["cas_ratio"] == pytest.approx(np.mean([r["cas_ratio"] for r in result.cas_runs]))
    assert [r["seed"] for r in result.cas_runs] == [0, 1]
    assert set(result.intervals) == {
        "cas_accuracy",
        "real_baseline_accuracy",
        "cas_ratio",
        "augmentation_gain",
    }
    assert all(lo <= m[k] <= hi for k, (lo, hi) in result.intervals.items())
    assert 1 <= m["cas_epochs"] <= 3
    assert min(m["frechet_distance_real"], m["diversity_synthetic"], m["diversity_real"]) > 0
    for key in ("precision", "recall", "coverage", "dcr_share", "dcr_share_real", "label_issue_rate"):
        assert 0 <= m[key] <= 1
    assert m["coverage_ratio"] == pytest.approx(m["coverage"] / m["coverage_real"])
    assert set(result.label_issues) <= {f"p{i}" for i in range(71)}
    assert m["label_issue_rate"] == len(result.label_issues) / 71
    assert [row["class"] for row in result.per_class] == list(range(10))
    assert len(result.confusion) == 100 and sum(r["count"] for r in result.confusion) == 71
