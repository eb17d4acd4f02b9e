"""The `generate` section: what one generation run makes, how it samples, scores, filters and
publishes, and its task runner; the `serve` section: when `digits serve` starts one."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from diffusion.config.base import Section, over_default
from diffusion.config.model import SamplerConfig
from diffusion.library_rules import FsspecUrl, PrefectCron, PrefectTimezone
from diffusion.styles import STYLES, cell


class FilterConfig(Section):
    """What a generated digit must score to be kept (None: that check is off)."""

    min_clip_score: float | None = Field(None, ge=-100.0, le=100.0)  # 100 x cosine with the intended prompt
    min_clip_margin: float | None = Field(0.0, ge=-200.0, le=200.0)  # intended minus the best other digit
    min_classifier_prob: float | None = Field(0.8, ge=0.0, le=1.0)  # the classifier judge's probability
    require_pred_match: bool = True  # the classifier judge's argmax must be the intended label


class ClipChoice(Section):
    """Which CLIP scores: our domain CLIP folder, or any open_clip name with a pretrained tag or file."""

    model: str = "digit-clip"
    pretrained: str | None = "data/models/clip"


class TaskRunnerConfig(Section):
    kind: Literal["threads", "dask"] = "threads"
    workers: int = Field(1, ge=1)  # threads, or the workers of a local Dask cluster
    address: str | None = None  # an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (dask only)

    @model_validator(mode="after")
    def _address_needs_dask(self) -> TaskRunnerConfig:
        if self.address and self.kind != "dask":
            raise ValueError("address is only used with kind: dask")
        return self


class ServeConfig(Section):
    """The `serve` section: `digits serve`'s schedule, checked by Prefect's own rules
    (diffusion/library_rules.py). A section of its own, outside `generate`: it decides when versions are
    made, never what a version holds, so editing it reruns no DVC stage."""

    cron: PrefectCron = "0 3 * * *"  # five-field cron: every scheduled run publishes a new version
    timezone: PrefectTimezone = "UTC"
    # A slot that comes while a run of the deployment is still going: run (both run, sharing the cores),
    # or with Prefect's deployment concurrency limit of 1 (a server that keeps its leases on disk: README)
    # skip (it is cancelled) or queue (it waits for the run to end)
    overlap: Literal["skip", "queue", "run"] = "run"


class GenerateConfig(Section):
    """One generation run: what to make, how to sample, score and filter it, and where to publish it."""

    # the dataset's folder name (at most 96 characters, like a Hugging Face repository name)
    name: str = Field("synthetic-digits", pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=96)
    # accepted handwritten-mnist digits of every class, or digit -> count; null when per_style is given
    per_class: StrictInt | dict[int, StrictInt] | None = 200  # StrictInt: `true` or '20' is no count
    # per style: style -> (count for every digit, or digit -> count)
    per_style: dict[str, StrictInt | dict[int, StrictInt]] | None = None  # StrictInt: `true` is no count
    # the generation sampler (w = 1: no guidance); a mapping that leaves keys out keeps these defaults
    sampler: SamplerConfig = SamplerConfig(guidance=1.0)
    # Three sizes, three meanings (the network batch, images per forward pass, is hardware.network_batch):
    seed_block: int = Field(10, ge=1)  # images of one class from one generator: decides the images
    task_size: int = Field(250, ge=1)  # images per Prefect task, whole seed blocks: never the images
    best_of_n: int = Field(1, ge=1)  # candidates per image; the one with the best CLIP score is kept
    filter: FilterConfig = FilterConfig()
    clip: ClipChoice = ClipChoice()
    seed: int = Field(0, ge=0)
    shard_rows: int = Field(1000, ge=1)  # rows per published Parquet file
    output_root: FsspecUrl = "data/published"  # a local folder or fsspec URL; versions: <root>/<name>/
    staging_dir: str = "data/cache/generate"  # local; staged shards of unfinished runs (resume)
    max_attempts: float = Field(5.0, ge=1.0)  # per class, at most this many x its count are sampled
    task_runner: TaskRunnerConfig = TaskRunnerConfig()

    @model_validator(mode="before")
    @classmethod
    def _schedule_is_the_servers(cls, raw: object) -> object:
        """A flow run of a deployment registered before the `serve` section (a Retry, or a slot of a `digits
        serve` started with older code) carries `schedule` in its cfg: it is no part of the run. (A params
        file that still has `generate.schedule` is named as moved by `parse_params`, before this runs.)"""
        if isinstance(raw, dict) and "schedule" in raw:
            return {k: v for k, v in raw.items() if k != "schedule"}
        return raw

    @field_validator("output_root")
    @classmethod
    def _output_root_names_a_place(cls, root: str) -> str:
        if not root.strip():
            raise ValueError(
                "output_root must name a folder or a URL (empty publishes into the working folder)"
            )
        return root

    @field_validator("staging_dir")
    @classmethod
    def _staging_is_a_local_folder(cls, folder: str) -> str:
        """A local folder, `~` expanded here (pathlib does not expand it, pyarrow does: shards would be
        written to one folder and looked for in another)."""
        if not folder.strip() or "://" in folder:
            raise ValueError(
                "staging_dir must be a local folder (staged shards are local files; publish to a URL with"
                " output_root)"
            )
        return os.path.expanduser(folder)

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler_keeps_its_defaults(cls, raw: object) -> object:
        return over_default(cls, "sampler", raw)

    @field_validator("per_class", mode="before")
    @classmethod
    def _per_class_is_a_count(cls, raw: object) -> object:
        counts = raw.values() if isinstance(raw, dict) else [raw]
        if any(isinstance(n, bool | str | float) for n in counts):
            raise ValueError("per_class must be a whole count or a mapping digit -> count")
        return raw

    @field_validator("per_style", mode="before")
    @classmethod
    def _per_style_is_counts(cls, raw: object) -> object:
        """Each style's value a whole count or a mapping digit -> whole count, named in one line (pydantic's
        union errors would name its `int` branch instead of the key)."""
        if not isinstance(raw, dict):
            return raw
        for style, counts in raw.items():
            values = counts.values() if isinstance(counts, dict) else [counts]
            keys = counts.keys() if isinstance(counts, dict) else []
            # a digit key may come back from JSON as a string ("3": a params dump handed to a flow run)
            if any(isinstance(n, bool) or not isinstance(n, int) for n in values) or any(
                isinstance(d, bool) or not (isinstance(d, int) or (isinstance(d, str) and d.isdigit()))
                for d in keys
            ):
                raise ValueError(
                    f"{style!r} takes a whole count or a mapping digit (0-9) -> whole count, got {counts!r}"
                )
        return raw

    @model_validator(mode="after")
    def _counts(self) -> GenerateConfig:
        if self.task_size % self.seed_block:
            raise ValueError(
                f"task_size ({self.task_size}) must hold whole seed blocks of seed_block = {self.seed_block}"
            )
        if self.per_style is not None:
            if self.per_class is not None and "per_class" in self.model_fields_set:
                raise ValueError(
                    "set per_class: null when per_style is given (per_style counts every digit too)"
                )
            for style, counts in self.per_style.items():
                if style not in STYLES:
                    raise ValueError(
                        f"per_style: unknown style {style!r}; the styles are {', '.join(STYLES)}"
                    )
                _check_digit_counts(counts, f"per_style.{style}")
                if isinstance(counts, dict) and not any(counts.values()):
                    raise ValueError(f"per_style.{style}: ask for at least one digit, or leave the style out")
        elif self.per_class is None:
            raise ValueError("per_class: give a count (or per_class: null and per_style)")
        else:
            _check_digit_counts(self.per_class, "per_class")
        if not any(self.counts().values()):
            raise ValueError(
                f"{'per_class' if self.per_style is None else 'per_style'}: ask for at least one digit"
            )
        return self

    def counts(self) -> dict[int, int]:
        """Requested accepted images per cell (`diffusion.styles.cell`: 10 x style code + digit), every cell
        with a count above 0; per_class counts are handwritten-mnist's, whose cells are the digits."""
        by_style = self.per_style if self.per_style is not None else {STYLES[0]: self.per_class}
        out = {}
        for style, counts in by_style.items():
            per_digit = dict.fromkeys(range(10), counts) if isinstance(counts, int) else counts
            out |= {cell(d, STYLES.index(style)): n for d, n in per_digit.items() if n > 0}
        return dict(sorted(out.items()))


def _check_digit_counts(counts: int | dict[int, int], key: str) -> None:
    if isinstance(counts, int):
        if counts < 1:
            raise ValueError(f"{key} must be >= 1, got {counts}")
        return
    for c, n in counts.items():
        if not 0 <= c <= 9:
            raise ValueError(f"{key}: class {c} is outside 0-9")
        if n < 0:
            raise ValueError(f"{key}: class {c} has a negative count ({n})")
