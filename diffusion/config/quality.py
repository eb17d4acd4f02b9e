"""The sections that judge a published version: the gate's limits (`quality`), the measures
(`evaluate`) and the drift alarms (`monitor`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from diffusion.config.base import Section, over_default
from diffusion.config.judges import JudgeTraining


class QualityConfig(Section):
    """The publish gate's limits beyond the generation filter (diffusion/quality/expectations.py)."""

    # RMS pixel distance (pixels in [0, 1]) under which an image copies a training digit: 0.05% of real
    # held-out digits lie this close to a training digit (0.4% of the ones), exact or lightly noised copies all do
    copy_distance: float = Field(0.04, gt=0.0)
    max_memorization: float = Field(0.01, ge=0.0, le=1.0)  # the share of near-copies a version may hold


class CasConfig(Section):
    """CAS trained to convergence (diffusion/quality/cas.py): a classifier of a third architecture (neither
    the filtering judge's nor the evaluator's) trained on each set until real validation accuracy stops
    improving, once per seed."""

    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.001, gt=0.0)
    weight_decay: float = Field(0.0001, ge=0.0)
    max_epochs: int = Field(40, ge=1)  # an upper bound; training stops earlier on the patience rule
    patience: int = Field(4, ge=1)  # epochs without a better real validation accuracy before stopping
    # the metrics are their mean, with a 95% interval; each seed once (a repeat is the same fit counted twice)
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1)

    @field_validator("seeds")
    @classmethod
    def _each_seed_once(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) < len(seeds):
            raise ValueError("each seed once: a repeated seed is the same fit, counted twice in the interval")
        return seeds


class EvaluateConfig(Section):
    """Measuring a published version with judges it was not filtered by (diffusion/quality/evaluate.py)."""

    cas: CasConfig = CasConfig()
    prdc_k: int = Field(5, ge=1)  # nearest neighbours of precision, recall, density and coverage
    label_issue_method: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning"] = (
        "prune_by_noise_rate"  # cleanlab.filter.find_label_issues(filter_by=...)
    )
    # the style judge of versions drawn from several styles (diffusion/quality/styles.py): the filtering
    # classifier's CNN with one output per style, fitted on the real training digits with these settings.
    # No augmentation: rotation, shear and zoom bend printed digits into handwriting (with it the judge
    # read 0.62 of real printed test digits as printed, without it 0.998: benchmarks/RESULTS.md, "Styles")
    style_judge: JudgeTraining = JudgeTraining(epochs=4, augment=False)

    @field_validator("style_judge", mode="before")
    @classmethod
    def _style_judge_keeps_its_defaults(cls, raw: object) -> object:
        """A mapping that leaves keys out keeps these defaults (augment false), not JudgeTraining's."""
        return over_default(cls, "style_judge", raw)


class MonitorConfig(Section):
    """Drift alarms on every graded version (diffusion/quality/monitor.py): a version whose headline metric
    falls below its floor or rises above its ceiling is flagged, and the run that graded it ends Failed."""

    # the shipped bounds (params.yaml): drift alarms under what the default pipeline measures
    floors: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=lambda: {
            "conditional_accuracy_published": 0.99,
            "cas_ratio": 0.95,
            "coverage_ratio": 0.8,
        }
    )
    ceilings: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=lambda: {"dcr_share": 0.6, "memorization_rate": 0.01, "label_issue_rate": 0.01}
    )

    @model_validator(mode="after")
    def _headline_bounds(self) -> MonitorConfig:
        from diffusion.quality.headline import METRICS

        for kind, bounds in (("floors", self.floors), ("ceilings", self.ceilings)):
            for name, bound in bounds.items():
                metric = METRICS.get(name)
                if metric is None:
                    raise ValueError(
                        f"{kind}.{name}: not a headline metric; expected one of {', '.join(METRICS)}"
                    )
                if not metric.contains(bound):
                    raise ValueError(
                        f"{kind}.{name}: {bound} lies outside the metric's range [{metric.lo}, {metric.hi}]"
                    )
        for name in self.floors.keys() & self.ceilings.keys():
            if self.floors[name] > self.ceilings[name]:
                raise ValueError(
                    f"floors.{name} ({self.floors[name]}) is above ceilings.{name} ({self.ceilings[name]})"
                )
        return self
