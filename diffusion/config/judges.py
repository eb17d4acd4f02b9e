"""The judges' sections (`classifier`, `evaluator`, `clip`): each network's fields at the top level,
the training settings every judge shares under `train`."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    model_validator,
)

from diffusion.config.base import Section, over_default
from diffusion.library_rules import ClipContextLength
from diffusion.precision import PrecisionChoice


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
            raw = {**raw, "train": over_default(cls, "train", raw["train"])}
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
    train: JudgeTraining = JudgeTraining(
        epochs=12, batch_size=128, lr=2e-3, weight_decay=1e-4, seed=0, precision="auto"
    )


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

    # the name the domain CLIP is registered with open_clip and saved under (no published model's name);
    # which CLIP scores the generated digits is generate.clip
    model: str = "digit-clip"
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
