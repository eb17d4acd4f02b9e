"""The `diffusion` section (U-Net, forward process, training, sampler, evaluation) and the `distill`
section of the few-step students."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    model_serializer,
    model_validator,
)

from diffusion.config.base import Section


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
    # what eps_uncond drops: every condition (joint guidance), or, for a model of digit and style, one of
    # them: style: eps(c, ∅) + w (eps(c, s) - eps(c, ∅)) sharpens the style and leaves the digit unguided;
    # digit: eps(∅, s) + w (eps(c, s) - eps(∅, s)) sharpens the digit and leaves the style unguided
    guide: Literal["all", "style", "digit"] = "all"

    @model_validator(mode="after")
    def _guide_needs_a_teacher(self) -> SamplerConfig:
        if self.eta != 0.0 and self.name != "ddim":  # read by nothing else, yet part of a run's key
            raise ValueError(f"eta: only ddim reads eta, and the sampler is {self.name}; leave eta at 0")
        if self.guide != "all" and self.name == "distilled":
            raise ValueError(
                f"guide: {self.guide} needs a teacher's sampler; students are distilled with joint guidance"
            )
        return self

    @model_serializer(mode="wrap")
    def _without_default_guide(self, handler: Any) -> dict[str, Any]:
        """`guide: all` is left out of the dump, so run keys and manifests of joint guidance stay what they were
        before the style-only form existed."""
        dumped = handler(self)
        if self.guide == "all":
            dumped.pop("guide", None)
        return dumped


class DiffusionTrainConfig(Section):
    batch_size: int = Field(128, ge=1)
    steps: int = Field(2400, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, gt=0.0)
    p_uncond: float = Field(0.1, ge=0.0, lt=1.0)  # probability a label is replaced by the null class
    min_snr_gamma: float | None = Field(
        5.0, gt=0.0
    )  # Min-SNR-gamma loss weights (Hang et al. 2023); None: L_simple
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(25, ge=1)
    val_batches: int = Field(8, ge=1)


class DiffusionEvalConfig(Section):
    n_samples: int = Field(1000, ge=10)  # guided samples judged by the classifier
    seed: int = Field(1234, ge=0)
    grid_per_class: int = Field(10, ge=1)
    strip_digits: int = Field(4, ge=1, le=10)  # rows of the forward-diffusion picture: digits 0, 1, ...
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
        if self.sampler.guide != "all":
            raise ValueError(
                f"sampler.guide: {self.sampler.guide} guides a condition of a requested style, and"
                " evaluate_diffusion asks for digits of any style; set it in generate.sampler"
            )
        if self.sampler.steps > self.process.timesteps:
            raise ValueError(
                f"sampler.steps ({self.sampler.steps}) must be <= process.timesteps ({self.process.timesteps})"
            )
        return self


class DistillConfig(Section):
    """The `distill` section (`digits distill-diffusion`): guidance distillation of the EMA teacher, then
    progressive rounds that halve its steps (Meng et al. 2023; Salimans & Ho 2022)."""

    guidance_range: tuple[float, float] = (1.0, 1.0)  # w drawn uniformly while training; others are refused
    teacher_steps: int = Field(16, ge=2)  # DDIM steps of the guided teacher that the first round halves
    min_steps: int = Field(4, ge=1)  # halve down to this: 16 -> 8 -> 4 (1: also 2 and 1)
    guidance_steps: int = Field(600, ge=1)  # optimiser steps matching the guided teacher
    round_steps: int = Field(1600, ge=1)  # optimiser steps of each halving round
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
