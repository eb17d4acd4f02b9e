"""Quality per style: does each style's published digit show its digit, look like its style, and train a
classifier as well as real digits of that style do?

    judge = fit_style_judge(real_train, real_val, settings)     # real digits only: image -> style
    report = style_quality(published, real_train, real_val, real_test, evaluator, judge, cas_cfg)

For every style s of the published rows:
    rows                       published digits of style s
    conditional_accuracy       share the independent evaluator reads as the digit they were asked for
    style_accuracy             share the style judge reads as style s
    real_style_accuracy        the style judge on real test digits of style s (its own reference)
    cas_accuracy / real_baseline_accuracy / cas_ratio (+ _interval), cas_size
                               `diffusion.quality.cas` trained on cas_size of the style's published digits vs
                               as many real training digits of the style (cas_size: the smaller of the two
                               counts), both tested on the style's real test digits

`grade_styles` is what `evaluate` (and every graded run) adds as `per_style` when the real digits are of
several styles. The pictures of styles (grids, the interpolation between two) are the report's:
diffusion/quality/report_styles.py.

The style judge is the filtering classifier's CNN with one output per style (`diffusion.styles.STYLES`),
trained on the real training split and picked on the real val split: it never sees a synthetic digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffusion.config import CasConfig, EvaluateConfig, JudgeTraining
from diffusion.judges.classifier import DigitClassifier
from diffusion.judges.training import accuracy, fit_cross_entropy, predict
from diffusion.quality.cas import balanced_subset, cas
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
    cas_cfg: CasConfig,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, float | int | tuple[float, float]]]:
    """style name -> its measures (module docstring), for every style among the published rows."""
    out = {}
    for code in sorted(set(published.styles.tolist())):
        ours, test = published.of_style(code), real_test.of_style(code)
        digits = predict(evaluator, ours.images).cpu()
        styles = predict(judge, ours.images).cpu()
        train = real_train.of_style(code)
        size = min(len(ours.labels), len(train.labels))  # equal size: a style may have few real digits
        synthetic = balanced_subset(ours, size, torch.Generator().manual_seed(0))
        scores = cas(synthetic, train, real_val.of_style(code), test, cas_cfg, device, gain=False)
        out[STYLES[code]] = {
            "rows": int(len(ours.labels)),
            "cas_size": size,
            "conditional_accuracy": (digits == ours.labels).float().mean().item(),
            "style_accuracy": (styles == code).float().mean().item(),
            "real_style_accuracy": accuracy(judge, test.by_style()),
            **scores.means,
            **{f"{k}_interval": v for k, v in scores.intervals.items()},
        }
    return out


def grade_styles(
    published: Styled,
    real_train: Styled,
    real_val: Styled,
    real_test: Styled,
    evaluator: nn.Module,
    cfg: EvaluateConfig,
    device: torch.device | str = "cpu",
) -> dict[str, Any] | None:
    """What `evaluate` reports per style of the published rows (`published`): {style name:
    measures (`style_quality`)}, the style judge fitted with `cfg.style_judge` and CAS with `cfg.cas`; None
    when the real training digits are of one style (no style judge to fit: a version of one source is graded
    by the headline metrics alone). A published style with no real digits is left out, with nothing to
    compare it with."""
    real_styles = set(real_train.styles.tolist())
    if len(real_styles) < 2:
        return None
    judge = fit_style_judge(real_train, real_val, cfg.style_judge, device)
    known = torch.isin(published.styles, torch.tensor(sorted(real_styles)))
    kept = Styled(published.images[known], published.labels[known], published.styles[known])
    return style_quality(kept, real_train, real_val, real_test, evaluator, judge, cfg.cas, device)
