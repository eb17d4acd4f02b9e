"""The filtering judge: a small CNN trained with augmentation, picked on val, scored once on test.

Fitting and saving are separate: `train_classifier` returns the fitted model with its metrics, and
`save_classifier` writes it as a `diffusion.checkpoint` folder of kind "classifier":

    <dir>/config.json        {"kind": "classifier", "config": {channels, hidden, dropout},
                              "meta": {metrics..., "settings": the rest of ClassifierConfig}}
    <dir>/model.safetensors  the best-val weights
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.config import ClassifierConfig
from diffusion.data.labelled import Labelled
from diffusion.judges.training import (
    NUM_CLASSES,
    JudgeFit,
    JudgeNet,
    confusion_rows,
    load_judge,
    predict,
    save_judge,
    train_judge,
)

__all__ = [
    "ARCHITECTURE",
    "KIND",
    "DigitClassifier",
    "confusion_rows",
    "load_classifier",
    "predict",
    "save_classifier",
    "train_classifier",
]

KIND = "classifier"
ARCHITECTURE = ClassifierConfig.ARCHITECTURE  # the fields that rebuild the network


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU layers then a 2x2 max-pool: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DigitClassifier(JudgeNet):
    """28x28 digits -> `num_classes` logits (10 digits; the style judge: one per style). Inputs are
    (N, 1, 28, 28) in [-1, 1], the project's model range."""

    def __init__(
        self,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.25,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        c1, c2 = channels
        self.body = nn.Sequential(
            _conv_block(1, c1),  # 28 -> 14
            _conv_block(c1, c2),  # 14 -> 7
            nn.MaxPool2d(2),  # 7 -> 3
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c2 * 3 * 3, hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    @classmethod
    def from_config(cls, cfg: ClassifierConfig) -> DigitClassifier:
        return cls(channels=cfg.channels, hidden=cfg.hidden, dropout=cfg.dropout)


def train_classifier(
    cfg: ClassifierConfig,
    train: Labelled,
    val: Labelled,
    test: Labelled,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> JudgeFit:
    """Fit on `train`, keep the best-val-accuracy epoch, score it once on `test`. Nothing is written.

    Returns the model (a DigitClassifier in eval mode on `device`), metrics (test_accuracy,
    val_accuracy, per_class_accuracy, epochs, best_epoch, parameters), the test confusion rows and the history.
    """
    return train_judge(
        lambda: DigitClassifier.from_config(cfg), cfg, train, val, test, progress, KIND, device
    )


def save_classifier(
    directory: str | Path, cfg: ClassifierConfig, model: nn.Module, metrics: dict[str, Any]
) -> None:
    """Write the classifier's checkpoint folder atomically (config: the architecture; meta: metrics, settings)."""
    save_judge(directory, KIND, cfg, model, metrics)


def load_classifier(directory: str | Path, device: torch.device | str = "cpu") -> DigitClassifier:
    """Rebuild the judge from a checkpoint folder, in eval mode on `device`. Raises CheckpointError.

    Only the architecture fields of `config` are read (folders of earlier versions also held the training
    settings there).
    """
    return load_judge(directory, KIND, ClassifierConfig, DigitClassifier.from_config, device)
