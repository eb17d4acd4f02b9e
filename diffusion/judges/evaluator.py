"""The independent evaluator: a small ResNet trained on the real train split only, never used for filtering.

The filtering classifier decides what is published, so its own accuracy on published digits says little.
The evaluator is another architecture (residual blocks and global average pooling instead of plain conv
blocks and a dense layer) with another seed, so a digit that merely fooled the filter is unlikely to fool
it too. Its pooled features are what the Frechet distance and the diversity of diffusion/quality/evaluate.py
compare. Checkpoint: a `diffusion.checkpoint` folder of kind "evaluator":

    <dir>/config.json        {"kind": "evaluator", "config": {widths, blocks},
                              "meta": {metrics..., "settings": the rest of EvaluatorConfig}}
    <dir>/model.safetensors  the best-val weights
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.config import EvaluatorConfig
from diffusion.data.labelled import Labelled
from diffusion.judges.training import (
    NUM_CLASSES,
    JudgeFit,
    JudgeNet,
    load_judge,
    save_judge,
    train_judge,
)

KIND = "evaluator"


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv then batch norm: (B, c_in, H, W) -> (B, c_out, H/stride, W/stride)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False), nn.BatchNorm2d(c_out))


class ResidualBlock(nn.Module):
    """ReLU(conv-BN-ReLU-conv-BN(x) + shortcut(x)): (B, c_in, H, W) -> (B, c_out, H/stride, W/stride).

    The shortcut is the identity, or a strided 1x1 conv-BN projection where the shape changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.branch = nn.Sequential(
            _conv_bn(c_in, c_out, stride), nn.ReLU(inplace=True), _conv_bn(c_out, c_out)
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class DigitEvaluator(JudgeNet):
    """28x28 digits -> 10 logits through a stem and three residual stages at 28, 14 and 7 px.

    Inputs are (N, 1, 28, 28) in [-1, 1]; the features are the globally average-pooled last stage.
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 1):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(1, widths[0]), nn.ReLU(inplace=True)]
        c_in = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                layers.append(ResidualBlock(c_in, width, stride=2 if stage and not block else 1))
                c_in = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[-1], NUM_CLASSES)

    @classmethod
    def from_config(cls, cfg: EvaluatorConfig) -> DigitEvaluator:
        return cls(widths=cfg.widths, blocks=cfg.blocks)


def train_evaluator(
    cfg: EvaluatorConfig,
    train: Labelled,
    val: Labelled,
    test: Labelled,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> JudgeFit:
    """Fit on the real `train` split, keep the best-val-accuracy epoch, score it once on `test`. Nothing is
    written. Returns the model (a DigitEvaluator in eval mode), metrics, test confusion rows and history."""
    return train_judge(lambda: DigitEvaluator.from_config(cfg), cfg, train, val, test, progress, KIND, device)


def save_evaluator(
    directory: str | Path, cfg: EvaluatorConfig, model: nn.Module, metrics: dict[str, Any]
) -> None:
    """Write the evaluator's checkpoint folder atomically (config: the architecture; meta: metrics, settings)."""
    save_judge(directory, KIND, cfg, model, metrics)


def load_evaluator(directory: str | Path, device: torch.device | str = "cpu") -> DigitEvaluator:
    """Rebuild the evaluator from its checkpoint folder, in eval mode on `device`. Raises CheckpointError."""
    return load_judge(directory, KIND, EvaluatorConfig, DigitEvaluator.from_config, device)
