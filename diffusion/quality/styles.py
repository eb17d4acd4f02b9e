"""Quality per style: does each style's published digit show its digit, look like its style, and train a
classifier as well as real digits of that style do?

    judge = fit_style_judge(real_train, real_val, settings)     # real digits only: image -> style
    report = style_quality(published, real_train, real_val, real_test, evaluator, judge, cfg, audit)

For every style s of the published rows, every headline metric of the version
(`diffusion.quality.headline`), measured on the style's published digits against the real digits of s:

    rows                       published digits of style s
    conditional_accuracy_published
                               share the independent evaluator reads as the digit they were asked for
    style_accuracy             share the style judge reads as style s
    real_style_accuracy        the style judge on real test digits of style s (its own reference)
    cas_accuracy / real_baseline_accuracy / cas_ratio / augmentation_gain (+ _interval), cas_size
                               `diffusion.quality.cas` trained on cas_size of the style's published digits vs
                               as many real training digits of the style (cas_size: the smaller of the two
                               counts; nan when it is under ten, the classes), tested on the style's real test
                               digits; the gain adds those digits to every real training digit of the style
    frechet_distance(_real), precision, recall, density, coverage (+ _real), coverage_ratio
                               `diffusion.quality.evaluate.feature_measures` in the evaluator's features,
                               against the style's real training and test digits
    dcr_share, dcr_share_real  against the style's real training digits, its real test digits the holdout
    memorization_rate, duplicate_rate
                               the publish gate's, among the style's rows (the manifest's `gate.per_style`;
                               NaN for a version published before the gate counted them per style)
    label_issue_rate           share of the style's digits the version's label audit flagged

`grade_styles` is what `evaluate` (and every graded run) adds as `per_style` when the real digits are of
several styles. The pictures of styles (grids, the interpolation between two) are the report's:
diffusion/quality/report_styles.py.

The style judge is the filtering classifier's CNN with one output per style (`diffusion.styles.STYLES`),
trained on the real training split and picked on the real val split: it never sees a synthetic digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffusion.config import EvaluateConfig, JudgeTraining
from diffusion.judges.classifier import DigitClassifier
from diffusion.judges.training import accuracy, fit_cross_entropy, in_batches, predict
from diffusion.quality.cas import Digits, balanced_subset, cas
from diffusion.quality.evaluate import feature_measures
from diffusion.quality.fits import FitPool
from diffusion.quality.measures import dcr_shares
from diffusion.styles import STYLES


@dataclass(frozen=True)
class Styled:
    """Digits with their styles: images float (N, 1, 28, 28) in [-1, 1], labels and styles int64 (N,)
    (`diffusion.data.datasets.DigitsDataset` fits)."""

    images: Tensor
    labels: Tensor
    styles: Tensor

    @classmethod
    def of(cls, data: Any) -> Styled:
        """The images, labels and styles of a `DigitsDataset` (or anything with those tensors)."""
        return cls(data.images, data.labels, data.styles)

    def of_style(self, code: int) -> Styled:
        return self.of_styles(torch.tensor([code]))

    def of_styles(self, codes: Tensor) -> Styled:
        """The rows whose style is one of `codes` (int64 (K,))."""
        keep = torch.isin(self.styles, codes)
        return Styled(self.images[keep], self.labels[keep], self.styles[keep])

    def by_style(self) -> Styled:
        """The same digits labelled by their style instead of their digit (what the style judge learns)."""
        return Styled(self.images, self.styles, self.styles)


@dataclass(frozen=True)
class PublishedAudit:
    """What the whole version's checks found that a style's share is read from: label_issues bool (N,), the
    label audit's flags aligned with the published rows; gate_per_style, the gate's near-copy and repeat
    rates by style name (the manifest's `gate.per_style`, or the version's own rates when it holds one
    style; {} for a version of several published before the gate counted per style)."""

    label_issues: Tensor
    gate_per_style: dict[str, dict[str, float]]


def fit_style_judge(
    train: Styled, val: Styled, settings: JudgeTraining, device: torch.device | str = "cpu"
) -> nn.Module:
    """The style judge (module docstring) fitted on real digits, best val epoch kept, in eval mode."""
    model, _ = fit_cross_entropy(
        lambda: DigitClassifier(num_classes=len(STYLES)),
        settings,
        0.0,
        train.by_style(),
        val=val.by_style(),
        desc="style judge",
        device=device,
    )
    return model


def style_quality(
    published: Styled,
    real_train: Styled,
    real_val: Styled,
    real_test: Styled,
    evaluator: nn.Module,
    judge: nn.Module,
    cfg: EvaluateConfig,
    audit: PublishedAudit,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    pool: FitPool | None = None,
) -> dict[str, dict[str, float | int | tuple[float, float]]]:
    """style name -> its measures (module docstring), for every style among the published rows."""
    device = torch.device(device)
    out = {}
    for code in sorted(set(published.styles.tolist())):
        mine = published.styles == code
        ours, train, val, test = (d.of_style(code) for d in (published, real_train, real_val, real_test))
        digits = predict(evaluator, ours.images).cpu()
        styles = predict(judge, ours.images).cpu()
        feats = {
            name: in_batches(evaluator.features, d.images, device, batch_size).cpu()
            for name, d in (("synthetic", ours), ("train", train), ("test", test))
        }
        size = min(len(ours.labels), len(train.labels))  # equal size: a style may have few real digits
        synthetic = (  # all of them in their published order (as the whole version's CAS reads them), or a draw
            Digits(ours.images, ours.labels)
            if size == len(ours.labels)
            else balanced_subset(ours, size, torch.Generator().manual_seed(0))
        )
        scores = cas(synthetic, train, val, test, cfg.cas, device, pool=pool)  # NaN under ten digits
        gate = audit.gate_per_style.get(STYLES[code], {})
        out[STYLES[code]] = {
            "rows": int(len(ours.labels)),
            "cas_size": size,
            "conditional_accuracy_published": (digits == ours.labels).float().mean().item(),
            "style_accuracy": (styles == code).float().mean().item(),
            "real_style_accuracy": accuracy(judge, test.by_style()),
            **scores.means,
            **{f"{k}_interval": v for k, v in scores.intervals.items()},
            **feature_measures(feats, ours.labels, train.labels, cfg.prdc_k),
            **dcr_shares(ours.images, train.images, val.images, test.images, device, batch_size),
            "memorization_rate": float(gate.get("memorization_rate", math.nan)),
            "duplicate_rate": float(gate.get("duplicate_rate", math.nan)),
            "label_issue_rate": audit.label_issues[mine].double().mean().item(),
        }
    return out


def grade_styles(
    published: Styled,
    real_train: Styled,
    real_val: Styled,
    real_test: Styled,
    evaluator: nn.Module,
    cfg: EvaluateConfig,
    audit: PublishedAudit,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    pool: FitPool | None = None,
) -> dict[str, Any] | None:
    """What `evaluate` reports per style of the published rows (`published`): {style name:
    measures (`style_quality`)}, the style judge fitted with `cfg.style_judge`; None when the real training
    digits are of one style (no style judge to fit: a version of one source is graded by the headline
    metrics alone). A published style without real digits in each of the three splits (a holdout for DCR,
    a validation split for CAS's stopping, test digits) is left out, with nothing to compare it with."""
    real_styles = set(real_train.styles.tolist())
    if len(real_styles) < 2:
        return None
    judge = fit_style_judge(real_train, real_val, cfg.style_judge, device)
    comparable = real_styles & set(real_val.styles.tolist()) & set(real_test.styles.tolist())
    known = torch.isin(published.styles, torch.tensor(sorted(comparable)))
    kept = Styled(published.images[known], published.labels[known], published.styles[known])
    audit = PublishedAudit(audit.label_issues[known], audit.gate_per_style)
    return style_quality(
        kept, real_train, real_val, real_test, evaluator, judge, cfg, audit, device, batch_size, pool
    )
