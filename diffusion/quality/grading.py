"""Grading a published version: every measure of `evaluate_version`, the monitor's verdict, one document.

    grade_version(version, Grading(...), hardware, train_data, classifier) -> evaluation document (dict)

The document is what `digits evaluate` writes, what the generation flow writes beside the versions after
every publish (`diffusion.data.evaluations`), and what report pages and the index read:

    name, version, path, evaluated_at       which version, when
    metrics                                 every float of `evaluate_version` (NaN written as null)
    intervals                               95% intervals over the CAS seeds {metric: [lo, hi]}
    per_class, confusion, cas_runs          as `EvaluationResult` has them
    label_issues                            ids of the digits cleanlab flags as mislabelled
    monitor                                 the floors and ceilings it was checked against
    flags, flagged                          the bounds it broke ({metric, value, bound, kind}), and whether any
    per_style                               only when the real digits are of several styles: per style,
                                            every headline metric and a style accuracy (`grade_styles`)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from diffusion.config import EvaluateConfig, HardwareConfig, MonitorConfig
from diffusion.data.shards import PublishedVersion
from diffusion.errors import DataError
from diffusion.quality.monitor import check
from diffusion.styles import STYLES


class Grading(BaseModel):
    """What grading a version needs beyond the run that published it: the evaluator, the real splits it
    is measured against, the `evaluate` and `monitor` sections, and where documents and reports go
    (`out`: None = beside the versions, `<output_root>/<name>/_quality`). JSON-serialisable, so a
    deployment carries it as a flow parameter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    evaluator: str = "data/models/evaluator"
    val_data: str = "data/prepared/val.parquet"
    test_data: str = "data/prepared/test.parquet"
    evaluate: EvaluateConfig = EvaluateConfig()
    monitor: MonitorConfig = MonitorConfig()
    out: str | None = None

    def check_inputs(self, alternative: str = "") -> None:
        """A one-line DigitsError naming the file when an input is missing or not what grading reads (the
        evaluator's checkpoint kind, the real splits' Parquet columns), before any work starts, so that
        `digits generate` never publishes a version it then cannot grade. `alternative` ends the line of a
        missing input (e.g. how to skip grading, for the command that can)."""
        from pathlib import Path

        from diffusion.checkpoint import read_checkpoint_config
        from diffusion.data.datasets import load_arrays

        for what, path, stage in (
            ("evaluator", self.evaluator, "train_evaluator"),
            ("val", self.val_data, "prepare"),
            ("test", self.test_data, "prepare"),
        ):
            if "://" not in path and not Path(path).exists():
                raise DataError(
                    f"--{what}: {path} not found (grading needs it: `dvc repro {stage}`{alternative})"
                )
        if "://" not in self.evaluator:
            read_checkpoint_config(self.evaluator, "evaluator")
        for split in (self.val_data, self.test_data):
            load_arrays(split)  # decoded as grading decodes them: columns, types and images


def graded_with(grading: Grading, train_data: str, classifier: str) -> dict[str, Any]:
    """What a grading read and how it measured, for the document: the sha256 of the evaluator's and the
    classifier's weights and of the real splits (None for a URL), and the `evaluate` settings (CAS seeds,
    epochs, ...), so that two documents are comparable only when these agree."""
    from diffusion.checkpoint import file_sha256

    def sha(path: str) -> str | None:
        return None if "://" in path else file_sha256(path)

    return {
        "evaluator_sha256": sha(f"{grading.evaluator.rstrip('/')}/model.safetensors"),  # a judge's weights
        "classifier_sha256": sha(f"{classifier.rstrip('/')}/model.safetensors"),
        "train_sha256": sha(train_data),
        "val_sha256": sha(grading.val_data),
        "test_sha256": sha(grading.test_data),
        "evaluate": grading.evaluate.model_dump(mode="json"),
    }


def grade_version(
    version: PublishedVersion,
    name: str,
    grading: Grading,
    hardware: HardwareConfig,
    train_data: str,
    classifier: str,
) -> dict[str, Any]:
    """Evaluate `version` (of dataset `name`) and check it against the monitor: its evaluation document.

    Loads the evaluator, the filtering classifier (`classifier`, its folder) and the real train, val and
    test splits once; runs on `hardware.device` in batches of `hardware.network_batch`. What is graded is
    what was published: each file of the version is read once and checked against its manifest's sha256 on
    the bytes read (DataError naming a missing or changed file, before any measure). The headline measures
    compare it with the real digits of the styles it holds (DataError when a split has none); the style
    judge of `per_style` learns every real style.
    """
    import torch

    from diffusion.data.datasets import DigitsDataset, published_dataset
    from diffusion.judges.classifier import load_classifier
    from diffusion.judges.evaluator import load_evaluator
    from diffusion.quality.evaluate import evaluate_version
    from diffusion.quality.fits import FitPool
    from diffusion.quality.styles import PublishedAudit, Styled, grade_styles

    device = hardware.device
    published, raw = published_dataset(version), published_dataset(version, "unfiltered")
    real = [Styled.of(DigitsDataset(p)) for p in (train_data, grading.val_data, grading.test_data)]
    # the headline measures compare the version with real digits of the styles it holds (a version of
    # MNIST-style digits against MNIST's, not against printed ones too); the style judge learns every style
    styles = published.styles.unique()
    references = [split.of_styles(styles) for split in real]
    for path, split in zip((train_data, grading.val_data, grading.test_data), references, strict=True):
        if len(split.labels) == 0:  # a held style without real digits is measured against the others'
            names = ", ".join(STYLES[int(c)] for c in styles)
            raise DataError(f"{path}: no real digits of the style(s) {names} that {version.path} holds")
    evaluator = load_evaluator(grading.evaluator, device)
    with FitPool(device) as pool:  # CAS's fits, of the version and of each style, side by side on the CPU
        result = evaluate_version(
            version,
            published,
            raw,
            *references,
            evaluator,
            load_classifier(classifier, device),
            grading.evaluate,
            device,
            hardware.network_batch,
            pool,
        )
        flagged = set(result.label_issues)
        gate = version.manifest["gate"]  # evaluate_version found the gate's rates there
        if len(styles) == 1:  # a version of one style: the version's rates are the style's
            rates = {STYLES[int(styles[0])]: {k: gate[k] for k in ("memorization_rate", "duplicate_rate")}}
        else:  # the gate counts per style (none: published before it did)
            rates = gate.get("per_style", {})
        audit = PublishedAudit(torch.tensor([i in flagged for i in published.ids], dtype=torch.bool), rates)
        per_style = grade_styles(
            Styled.of(published),
            *real,
            evaluator,
            grading.evaluate,
            audit,
            device,
            hardware.network_batch,
            pool,
        )
    flags = check(result.metrics, grading.monitor)
    return {
        "name": name,
        "version": version.version,
        "path": version.path,
        "evaluated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "graded_with": graded_with(grading, train_data, classifier),
        "metrics": result.metrics,
        "intervals": {k: list(v) for k, v in result.intervals.items()},
        "per_class": result.per_class,
        "confusion": result.confusion,
        "cas_runs": result.cas_runs,
        "label_issues": list(result.label_issues),
        "monitor": grading.monitor.model_dump(mode="json"),
        "flags": [f.as_dict() for f in flags],
        "flagged": bool(flags),
        **({"per_style": per_style} if per_style is not None else {}),
    }
