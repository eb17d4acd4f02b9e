"""The MNIST judge: a small CNN trained with augmentation, picked on val, scored once on test.

Checkpoint (a `diffusion.checkpoint` folder, kind "classifier"):

    <dir>/config.json        {"kind": "classifier", "config": {channels, hidden, dropout},
                              "meta": {metrics..., "train": the rest of ClassifierConfig}}
    <dir>/model.safetensors  the best-val weights
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from diffusion.checkpoint import CheckpointError, load_weights, read_checkpoint_config, save_checkpoint
from diffusion.config import ClassifierConfig
from diffusion.data.datasets import DigitsDataset
from diffusion.judges.training import fit

NUM_CLASSES = 10
KIND = "classifier"
ARCHITECTURE = ("channels", "hidden", "dropout")  # the ClassifierConfig fields that rebuild the network


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


class DigitClassifier(nn.Module):
    """28x28 digits -> 10 logits. Inputs are (N, 1, 28, 28) in [-1, 1], the project's model range."""

    def __init__(self, channels: tuple[int, int] = (32, 64), hidden: int = 128, dropout: float = 0.25):
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
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, NUM_CLASSES))

    @classmethod
    def from_config(cls, cfg: ClassifierConfig) -> DigitClassifier:
        return cls(channels=cfg.channels, hidden=cfg.hidden, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> logits (N, 10)."""
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> penultimate activations (N, hidden), e.g. for a Frechet distance."""
        return self.body(x)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> class probabilities (N, 10)."""
        return F.softmax(self(x), dim=1)


@torch.no_grad()
def predict(model: DigitClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Argmax labels (N,) of images (N, 1, 28, 28) on any device, in eval mode, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(chunk.to(device)).argmax(1) for chunk in images.split(batch_size)])


def confusion_rows(actual: torch.Tensor, predicted: torch.Tensor) -> list[dict[str, int]]:
    """All 100 (actual, predicted, count) rows, for a DVC confusion plot or a table."""
    counts = torch.bincount(actual.cpu() * NUM_CLASSES + predicted.cpu(), minlength=NUM_CLASSES**2)
    return [
        {"actual": a, "predicted": p, "count": int(counts[a * NUM_CLASSES + p])}
        for a in range(NUM_CLASSES)
        for p in range(NUM_CLASSES)
    ]


@dataclass
class ClassifierResult:
    """metrics: test_accuracy, val_accuracy, per_class_accuracy {"0": ...}, epochs, best_epoch, parameters.
    confusion: test-set rows {actual, predicted, count}; history: per-epoch {epoch, loss, val}."""

    metrics: dict[str, Any]
    confusion: list[dict[str, int]]
    history: list[dict[str, float]]


def train_classifier(
    cfg: ClassifierConfig,
    train: DigitsDataset,
    val: DigitsDataset,
    test: DigitsDataset,
    out_dir: Path,
    progress: bool = True,
) -> ClassifierResult:
    """Train on `train`, keep the best-val-accuracy epoch, score it once on `test`, save it to `out_dir`."""
    device = torch.device(cfg.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    # Weight init and dropout draw from the global RNG: seeded inside fork_rng, the caller's is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _train(cfg, train, val, test, out_dir, progress, generator, device)


def _train(
    cfg: ClassifierConfig,
    train: DigitsDataset,
    val: DigitsDataset,
    test: DigitsDataset,
    out_dir: Path,
    progress: bool,
    generator: torch.Generator,
    device: torch.device,
) -> ClassifierResult:
    model = DigitClassifier.from_config(cfg).to(device)
    x_val, y_val = val.images.to(device), val.labels.to(device)

    def batch_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)

    def val_accuracy() -> float:
        return (predict(model, x_val) == y_val).float().mean().item()

    run = fit(
        model,
        batch_loss,
        val_accuracy,
        train.images.to(device),
        train.labels.to(device),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        augment=cfg.augment,
        generator=generator,
        progress=progress,
        desc="classifier",
    )
    model.load_state_dict(run.best_state)
    actual = test.labels.to(device)
    predicted = predict(model, test.images.to(device))
    correct = (predicted == actual).float()
    per_class = {
        str(c): correct[actual == c].mean().item() for c in range(NUM_CLASSES) if (actual == c).any()
    }
    metrics = {
        "test_accuracy": correct.mean().item(),
        "val_accuracy": run.best_score,
        "per_class_accuracy": per_class,
        "epochs": cfg.epochs,
        "best_epoch": run.best_epoch,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    settings = cfg.model_dump(mode="json")
    save_checkpoint(
        out_dir,
        kind=KIND,
        config={k: settings.pop(k) for k in ARCHITECTURE},
        weights={"model": run.best_state},
        meta={**metrics, "train": settings},
    )
    return ClassifierResult(metrics=metrics, confusion=confusion_rows(actual, predicted), history=run.history)


def load_classifier(directory: str | Path, device: torch.device | str = "cpu") -> DigitClassifier:
    """Rebuild the judge from a checkpoint folder, in eval mode on `device`. Raises CheckpointError.

    Only the architecture fields of `config` are read (folders of earlier versions also held the training
    settings there).
    """
    doc = read_checkpoint_config(directory, KIND)
    weights = Path(directory) / "model.safetensors"
    try:
        arch = {k: doc["config"][k] for k in ARCHITECTURE if k in doc["config"]}
        model = DigitClassifier.from_config(ClassifierConfig.model_validate(arch))
        model.load_state_dict(load_weights(weights))
    except (ValidationError, RuntimeError) as err:  # config or tensors that don't fit this code
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{weights}: does not match the classifier's config ({first})") from None
    return model.to(device).eval()
