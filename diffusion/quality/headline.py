"""The headline metrics of a graded version: their names, ranges and which way is better.

One table that the evaluation (`diffusion.quality.evaluate`), the drift monitor (`diffusion.quality.monitor`,
the `monitor` params section) and the report's charts all read, so that a metric has one name and one
meaning everywhere. Ranges are the values a metric can take; a monitor floor or ceiling must lie inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    """A headline metric: `label` for pages, closed range [lo, hi], and whether higher or lower is better."""

    name: str
    label: str
    lo: float
    hi: float
    better: Literal["higher", "lower"]
    about: str

    def contains(self, value: float) -> bool:
        return self.lo <= value <= self.hi


_INF = math.inf
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "conditional_accuracy_published",
            "evaluator accuracy",
            0.0,
            1.0,
            "higher",
            "the independent evaluator's accuracy on the published digits, labelled with the digit asked for",
        ),
        Metric(
            "cas_ratio",
            "CAS ratio",
            0.0,
            _INF,
            "higher",
            "real-test accuracy of a classifier trained to convergence on the published digits only, over "
            "the same trained on as many real digits (mean over seeds)",
        ),
        Metric(
            "augmentation_gain",
            "augmentation gain (points)",
            -100.0,
            100.0,
            "higher",
            "real-test accuracy points gained by adding the published digits to every real training digit",
        ),
        Metric(
            "precision",
            "precision",
            0.0,
            1.0,
            "higher",
            "share of published digits inside the real digits' k-NN manifold (Naeem et al. 2020)",
        ),
        Metric(
            "recall",
            "recall",
            0.0,
            1.0,
            "higher",
            "share of real digits inside the published digits' k-NN manifold (Naeem et al. 2020)",
        ),
        Metric(
            "density",
            "density",
            0.0,
            _INF,
            "higher",
            "how many real k-NN balls hold a published digit on average, over k (Naeem et al. 2020)",
        ),
        Metric(
            "coverage",
            "coverage",
            0.0,
            1.0,
            "higher",
            "share of real digits whose k-NN ball holds a published digit (Naeem et al. 2020)",
        ),
        Metric(
            "coverage_ratio",
            "coverage / real",
            0.0,
            _INF,
            "higher",
            "coverage over the coverage of as many real digits against the same real reference",
        ),
        Metric(
            "frechet_distance",
            "Frechet distance",
            0.0,
            _INF,
            "lower",
            "Frechet distance of the evaluator's features, published vs real training digits",
        ),
        Metric(
            "dcr_share",
            "DCR share",
            0.0,
            1.0,
            "lower",
            "share of published digits closer to a training digit than to a held-out real digit "
            "(SDMetrics' DCR; 0.5 means no memorisation)",
        ),
        Metric(
            "memorization_rate",
            "near-copy rate",
            0.0,
            1.0,
            "lower",
            "share of published digits within RMS copy_distance of a real training digit (the gate's)",
        ),
        Metric(
            "duplicate_rate",
            "duplicate rate",
            0.0,
            1.0,
            "lower",
            "share of published digits whose pixels repeat an earlier one's (the gate's)",
        ),
        Metric(
            "label_issue_rate",
            "label-issue rate",
            0.0,
            1.0,
            "lower",
            "share of published digits cleanlab's confident learning flags as mislabelled, from the "
            "evaluator's probabilities",
        ),
    )
}
