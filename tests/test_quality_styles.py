"""Quality per style: the style judge learns styles from real digits only, and reads a planted mislabelled
style as wrong; each style gets every headline metric of its own."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion.config import EvaluateConfig, JudgeTraining
from diffusion.data.datasets import to_model_range
from diffusion.judges.classifier import DigitClassifier
from diffusion.quality.headline import METRICS
from diffusion.quality.report_styles import _measures, style_grid
from diffusion.quality.styles import PublishedAudit, Styled, fit_style_judge, grade_styles, style_quality
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
    cfg = EvaluateConfig.model_validate({"cas": {"seeds": [0, 1], "max_epochs": 2, "patience": 1}})
    # the label audit flagged 6 of the first 12 rows (those of style 0); the gate counted one style
    flags = torch.arange(len(planted.labels)) < 12
    flags &= planted.styles == 0
    gate = {"handwritten-mnist": {"memorization_rate": 0.25, "duplicate_rate": 0.0}}
    audit = PublishedAudit(flags, gate)
    report = style_quality(planted, train, val, test, evaluator, judge, cfg, audit)
    assert set(report) == {"handwritten-mnist", "handwritten-uci"}
    assert report["handwritten-mnist"]["style_accuracy"] > 0.95
    assert report["handwritten-uci"]["style_accuracy"] < 0.05  # they look like the other style
    assert report["handwritten-uci"]["real_style_accuracy"] > 0.95
    for measures in report.values():
        assert measures["rows"] == 60 and measures["cas_size"] == 60
        assert set(METRICS) <= set(measures)  # every headline metric, per style
        assert 0 <= measures["conditional_accuracy_published"] <= 1 and measures["cas_ratio"] > 0
        for key in ("cas_ratio", "augmentation_gain"):
            low, high = measures[f"{key}_interval"]
            assert low <= measures[key] <= high
        assert 0 <= measures["coverage"] <= 1 and 0 <= measures["dcr_share"] <= 1
    # the published style-0 digits are the real test digits of style 0: inside the real test manifold,
    # and as near the held-out test digits as can be (DCR share 0: each is its own nearest holdout)
    assert report["handwritten-mnist"]["precision"] == 1.0 and report["handwritten-mnist"]["dcr_share"] == 0.0
    # the audit's and the gate's per-style shares are read, not recomputed
    assert report["handwritten-mnist"]["label_issue_rate"] == pytest.approx(6 / 60)
    assert report["handwritten-uci"]["label_issue_rate"] == 0.0
    assert report["handwritten-mnist"]["memorization_rate"] == 0.25
    assert math.isnan(report["handwritten-uci"]["memorization_rate"])  # the gate did not count it


def _quick_grading(published: Styled) -> tuple[DigitClassifier, EvaluateConfig, PublishedAudit]:
    """A random evaluator, one short CAS seed and style judge, and an audit that flagged nothing."""
    cfg = EvaluateConfig.model_validate(
        {
            "cas": {"seeds": [0], "max_epochs": 1, "patience": 1},
            "style_judge": {"epochs": 2, "augment": False},
        }
    )
    audit = PublishedAudit(torch.zeros(len(published.labels), dtype=torch.bool), {})
    return DigitClassifier(channels=(8, 16), hidden=32).eval(), cfg, audit


def test_grading_per_style_needs_real_digits_of_several_styles() -> None:
    train, val, test = _styled(400, 0), _styled(120, 1), _styled(120, 2)
    published = test
    evaluator, cfg, audit = _quick_grading(published)
    report = grade_styles(published, train, val, test, evaluator, cfg, audit)
    assert set(report) == {"handwritten-mnist", "handwritten-uci"}
    assert report["handwritten-uci"]["style_accuracy"] > 0.95 and report["handwritten-uci"]["rows"] == 60
    one = train.of_style(0)
    assert grade_styles(published, one, val.of_style(0), test.of_style(0), evaluator, cfg, audit) is None


def test_a_style_of_one_digit_or_without_real_test_digits_is_graded_without_failing() -> None:
    train, val, test = _styled(400, 0), _styled(120, 1), _styled(120, 2)
    extra = _styled(20, 3)  # printed digits in the real training split only: nothing to test them on
    printed = torch.ones(20, dtype=torch.int64)
    train = Styled(
        torch.cat([train.images, extra.images]),
        torch.cat([train.labels, extra.labels]),
        torch.cat([train.styles, printed]),
    )
    keep = (test.styles == 0) | (torch.arange(len(test.labels)) == 1)  # row 1 is the one UCI-style digit
    published = Styled(
        torch.cat([test.images[keep], extra.images[:3]]),
        torch.cat([test.labels[keep], extra.labels[:3]]),
        torch.cat([test.styles[keep], printed[:3]]),
    )
    evaluator, cfg, audit = _quick_grading(published)
    report = grade_styles(published, train, val, test, evaluator, cfg, audit)
    assert set(report) == {"handwritten-mnist", "handwritten-uci"}  # printed left out: no real test digits
    one = report["handwritten-uci"]
    assert one["rows"] == 1 and math.isnan(one["frechet_distance"]) and math.isnan(one["coverage"])
    assert math.isnan(one["cas_ratio"])  # one digit cannot stand for ten classes: no ratio, not 1.0
    assert 0 <= one["dcr_share"] <= 1


def test_a_page_reads_the_per_style_accuracy_of_a_document_graded_before_its_rename() -> None:
    old = {"per_style": {"printed": {"conditional_accuracy": 0.97, "cas_ratio": 0.9}}}
    table = _measures(old)
    cells = {row["field"]: row["cells"]["printed"] for row in table["rows"]}
    assert cells["conditional_accuracy_published"] == 0.97 and cells["cas_ratio"] == 0.9
    assert cells["dcr_share"] is None  # not measured then: shown as n/a
    assert "dcr_share_real" not in cells  # no reference measured: no row of it


def test_the_per_style_table_puts_each_real_reference_under_its_measure() -> None:
    doc = {
        "per_style": {
            "printed": {"coverage": 0.8, "coverage_real": 0.9},
            "handwritten-uci": {"coverage": 0.7},
        }
    }
    table = _measures(doc)
    fields = [row["field"] for row in table["rows"]]
    assert fields[fields.index("coverage") + 1] == "coverage_real"
    real = table["rows"][fields.index("coverage_real")]
    assert real["label"].endswith("real vs real") and real["cells"] == {
        "printed": 0.9,
        "handwritten-uci": None,
    }
    assert table["styles"] == ["printed", "handwritten-uci"]  # STYLES order


def test_a_style_grid_has_a_row_per_digit_padded_with_black() -> None:
    images = np.full((5, 28, 28), 255, np.uint8)
    labels, styles = np.array([3, 3, 3, 7, 3]), np.array([1, 1, 1, 1, 0])
    grid = style_grid(images, labels, styles, 1, per_digit=2)
    assert grid.shape == (20, 28, 28)
    filled = [int(grid[i].max() > 0) for i in range(20)]
    assert filled == [0] * 6 + [1, 1] + [0] * 6 + [1, 0] + [0] * 4  # 3: two of three; 7: one of one


def test_a_partial_style_judge_section_keeps_its_defaults() -> None:
    cfg = EvaluateConfig.model_validate({"style_judge": {"epochs": 8}})
    assert cfg.style_judge.epochs == 8 and cfg.style_judge.augment is False  # not JudgeTraining's True
