"""Quality per style: the style judge learns styles from real digits only, and reads a planted mislabelled
style as wrong; each style gets its own conditional accuracy and CAS."""

from __future__ import annotations

import torch

from diffusion.config import CasConfig, JudgeTraining
from diffusion.data.datasets import to_model_range
from diffusion.judges.classifier import DigitClassifier
from diffusion.quality.styles import Styled, fit_style_judge, style_quality
from tests.judges_fixtures import render_digits


def _styled(n: int, seed: int) -> Styled:
    """Rendered digits in two styles: style 0 white on black as drawn, style 2 the same digits thickened and
    inverted (black on white), half each."""
    images, labels = render_digits(n, seed=seed)
    x = to_model_range(images)
    styles = torch.arange(n) % 2 * 2
    x[styles == 2] = -x[styles == 2]
    return Styled(x, torch.from_numpy(labels), styles)


def test_style_judge_and_per_style_measures() -> None:
    train, val, test = _styled(400, 0), _styled(120, 1), _styled(120, 2)
    judge = fit_style_judge(train, val, JudgeTraining(epochs=2, batch_size=32, augment=False))
    evaluator = DigitClassifier(channels=(8, 16), hidden=32).eval()  # random: any digit accuracy will do

    # "published": the real test digits, but the style-2 half replaced by style-0 images still labelled 2
    planted = Styled(test.images.clone(), test.labels, test.styles)
    planted.images[test.styles == 2] = -planted.images[test.styles == 2]
    cfg = CasConfig(seeds=(0, 1), max_epochs=2, patience=1)
    report = style_quality(planted, train, val, test, evaluator, judge, cfg)
    assert set(report) == {"handwritten-mnist", "handwritten-uci"}
    assert report["handwritten-mnist"]["style_accuracy"] > 0.95
    assert report["handwritten-uci"]["style_accuracy"] < 0.05  # they look like the other style
    assert report["handwritten-uci"]["real_style_accuracy"] > 0.95
    for measures in report.values():
        assert measures["rows"] == 60 and measures["cas_size"] == 60
        assert 0 <= measures["conditional_accuracy"] <= 1 and measures["cas_ratio"] > 0
        low, high = measures["cas_ratio_interval"]
        assert low <= measures["cas_ratio"] <= high
