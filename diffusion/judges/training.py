"""What the judges share: seeded batched augmentation, one fit loop, one accuracy report, and the training and
checkpoints of the cross-entropy judges (the filtering classifier and the evaluator).

All randomness comes from one CPU `torch.Generator` (and weight init from the global RNG seeded inside
`torch.random.fork_rng`), so a run is reproducible on any device: random numbers are drawn on the CPU and
only the (small) results are moved to the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from tqdm.auto import tqdm

from diffusion.checkpoint import CheckpointError, load_weights, read_checkpoint_config, save_checkpoint
from diffusion.config import JudgeSection, JudgeTraining
from diffusion.data.labelled import Labelled
from diffusion.precision import autocast, resolve_precision

NUM_CLASSES = 10
S = TypeVar("S", bound=JudgeSection)
M = TypeVar("M", bound=nn.Module)


class JudgeNet(nn.Module):
    """A judge network: `body` maps (N, 1, 28, 28) digits in [-1, 1] to penultimate features (N, F),
    `head` maps those to 10 logits. Subclasses build the two in __init__."""

    body: nn.Module
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> logits (N, 10)."""
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> penultimate activations (N, F), e.g. for a Frechet distance."""
        return self.body(x)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> class probabilities (N, 10)."""
        return F.softmax(self(x), dim=1)


class CrossEntropyJudge(Protocol):
    """A cross-entropy judge's section: ClassifierConfig, EvaluatorConfig."""

    train: JudgeTraining
    label_smoothing: float


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
    shear: float = 0.15,
) -> torch.Tensor:
    """Randomly rotate, scale, shear and shift a batch of images, each its own way.

    Args:
        x: (B, C, H, W) in [-1, 1] with background -1, on any device.
        generator: a CPU generator; draws 5 numbers per image.
        degrees: max rotation either way.
        translate: max shift either way, as a fraction of the image side.
        scale: (min, max) zoom factor.
        shear: max horizontal shear (tan of the angle) either way.

    Returns:
        (B, C, H, W) in [-1, 1]; pixels shifted in from outside the image are background (-1).
    """
    b = x.shape[0]
    u = torch.rand(b, 5, generator=generator) * 2 - 1  # (B, 5) in [-1, 1)
    angle = u[:, 0] * math.radians(degrees)
    zoom = scale[0] + (u[:, 1] + 1) / 2 * (scale[1] - scale[0])
    sh = u[:, 2] * shear
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(  # (B, 2, 3): output coords -> input coords, in [-1, 1] units
        [
            torch.stack([cos, -sin + sh * cos, u[:, 3] * 2 * translate], dim=1),
            torch.stack([sin, cos + sh * sin, u[:, 4] * 2 * translate], dim=1),
        ],
        dim=1,
    ).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


@dataclass
class FitResult:
    """The kept weights (CPU tensors: the best-val epoch's, or the last step's without a val score), the best
    val score (nan without one), the per-epoch history {epoch, loss[, val]} and the precision the steps ran
    in (`settings.precision` resolved on the device: "auto" becomes "bf16" or "fp32")."""

    best_state: dict[str, torch.Tensor]
    best_score: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    precision: str = "fp32"


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only; none on biases, norms and scalars such as logit_scale."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(
    model: nn.Module,
    batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: JudgeTraining,
    generator: torch.Generator,
    *,
    evaluate: Callable[[], float] | None = None,
    steps: int | None = None,
    grad_clip: float | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Train with AdamW and a one-cycle schedule, epoch by epoch; keep the best-val weights when scored.

    Args:
        model: trained in place; left holding its last-step weights (load `best_state` to use the kept ones).
        batch_loss: (images (B, 1, H, W) in [-1, 1], labels (B,)) -> scalar loss, both on the model's device.
        images: (N, 1, H, W) in [-1, 1] on the model's device.
        labels: (N,) int64 on the same device.
        settings: epochs, batch_size, lr, weight_decay, augment and precision are read (seed and device are
            the caller's).
        generator: CPU generator for shuffling and augmentation.
        evaluate: the validation score, higher is better, called after each epoch (it may switch to eval
            mode); None keeps the last step's weights.
        steps: a fixed budget of optimizer steps instead of `settings.epochs` (the last epoch is cut short).
        grad_clip: clip the global gradient norm to this (None: no clipping).
    """
    n = labels.shape[0]
    per_epoch = max(1, n // settings.batch_size)  # drop the ragged last batch
    total = steps if steps is not None else settings.epochs * per_epoch
    opt = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total, pct_start=0.15)
    precision = resolve_precision(settings.precision, images.device)
    best = FitResult(best_state={}, best_score=-math.inf, best_epoch=0, precision=precision)
    bar = tqdm(range(1, math.ceil(total / per_epoch) + 1), desc=desc, disable=not progress, unit="epoch")
    done = 0
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=generator).to(labels.device)
        count, loss_sum = min(per_epoch, total - done), 0.0
        for step in range(count):
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            x = random_affine(images[idx], generator) if settings.augment else images[idx]
            with autocast(images.device, precision):
                loss = batch_loss(x, labels[idx]).float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            loss_sum += loss.item()
        done += count
        row = {"epoch": epoch, "loss": loss_sum / count}
        if evaluate is not None:
            row["val"] = score = evaluate()
            if score > best.best_score:
                best.best_score, best.best_epoch, best.best_state = score, epoch, _cpu_state(model)
        best.history.append(row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "epoch"})
    if evaluate is None:
        best.best_score, best.best_epoch, best.best_state = math.nan, len(best.history), _cpu_state(model)
    return best


# --------------------------------------------------------------------------- the accuracy report
@dataclass(frozen=True)
class AccuracyReport:
    """Accuracy overall and per class ("0"-"9", only classes with examples); nan overall without examples."""

    accuracy: float
    per_class: dict[str, float]


def accuracy_report(predicted: torch.Tensor, actual: torch.Tensor) -> AccuracyReport:
    """The report of predicted labels (N,) against actual labels (N,), on any device."""
    predicted, actual = predicted.cpu(), actual.cpu()
    correct = (predicted == actual).double()
    counts = torch.bincount(actual, minlength=NUM_CLASSES).double()
    hits = torch.bincount(actual, weights=correct, minlength=NUM_CLASSES)
    per_class = {str(c): (hits[c] / counts[c]).item() for c in range(NUM_CLASSES) if counts[c] > 0}
    return AccuracyReport(correct.mean().item() if len(correct) else math.nan, per_class)


def confusion_rows(actual: torch.Tensor, predicted: torch.Tensor) -> list[dict[str, int]]:
    """All 100 (actual, predicted, count) rows, for a DVC confusion plot or a table."""
    counts = torch.bincount(actual.cpu() * NUM_CLASSES + predicted.cpu(), minlength=NUM_CLASSES**2)
    return [
        {"actual": a, "predicted": p, "count": int(counts[a * NUM_CLASSES + p])}
        for a in range(NUM_CLASSES)
        for p in range(NUM_CLASSES)
    ]


@torch.no_grad()
def in_batches(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device: torch.device, batch_size: int
) -> torch.Tensor:
    """fn applied to images (N, ...) in chunks moved to `device`; the results (N, ...) concatenated there."""
    return torch.cat([fn(chunk.to(device)) for chunk in images.split(batch_size)])


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Argmax labels (N,) of images (N, 1, 28, 28) on any device, in eval mode, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    return in_batches(lambda x: model(x).argmax(1), images, device, batch_size)


def accuracy(model: nn.Module, data: Labelled, batch_size: int = 1000) -> float:
    """The model's accuracy on `data`, in eval mode."""
    return accuracy_report(predict(model, data.images, batch_size), data.labels).accuracy


# --------------------------------------------------------------------------- the cross-entropy judges
@dataclass
class JudgeFit:
    """A fitted cross-entropy judge. model: the best-val weights, in eval mode. metrics: test_accuracy,
    val_accuracy, per_class_accuracy {"0": ...}, epochs, best_epoch, parameters. confusion: test-set rows
    {actual, predicted, count}; history: per-epoch {epoch, loss, val}."""

    model: nn.Module
    metrics: dict[str, Any]
    confusion: list[dict[str, int]]
    history: list[dict[str, float]]


def fit_cross_entropy(
    build: Callable[[], M],
    settings: JudgeTraining,
    label_smoothing: float,
    train: Labelled,
    *,
    val: Labelled | None = None,
    steps: int | None = None,
    progress: bool = False,
    desc: str = "train",
    device: torch.device | str = "cpu",
) -> tuple[M, FitResult]:
    """Build a network seeded by `settings.seed` on `device` (`hardware.device`) and fit it with
    label-smoothed cross-entropy (see `fit`: `val` keeps the best-val-accuracy epoch, `steps` fixes the
    budget).

    Returns the model holding the kept weights, in eval mode, and the fit's record.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(settings.seed)
    # Weight init and dropout draw from the global RNG: seeded inside fork_rng, the caller's is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = build().to(device)

        def batch_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)

        run = fit(
            model,
            batch_loss,
            train.images.to(device),
            train.labels.to(device),
            settings,
            generator,
            evaluate=None if val is None else lambda: accuracy(model, val),
            steps=steps,
            progress=progress,
            desc=desc,
        )
    model.load_state_dict(run.best_state)
    return model.eval(), run


def train_judge(
    build: Callable[[], nn.Module],
    cfg: CrossEntropyJudge,
    train: Labelled,
    val: Labelled,
    test: Labelled,
    progress: bool,
    desc: str,
    device: torch.device | str = "cpu",
) -> JudgeFit:
    """Fit a cross-entropy judge on `train` on `device`, keep its best-val-accuracy epoch, score it once on
    `test`. The metrics record the device and the precision the training ran in (`trained_on`; the
    checkpoint's meta keeps them, the DVC metrics file leaves nested mappings out)."""
    model, run = fit_cross_entropy(
        build, cfg.train, cfg.label_smoothing, train, val=val, progress=progress, desc=desc, device=device
    )
    predicted = predict(model, test.images).cpu()
    report = accuracy_report(predicted, test.labels)
    metrics = {
        "test_accuracy": report.accuracy,
        "val_accuracy": run.best_score,
        "per_class_accuracy": report.per_class,
        "epochs": cfg.train.epochs,
        "best_epoch": run.best_epoch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_on": {"device": str(torch.device(device)), "precision": run.precision},  # what "auto" became
    }
    return JudgeFit(model, metrics, confusion_rows(test.labels, predicted), run.history)


def save_judge(directory: str | Path, kind: str, cfg: JudgeSection, model: nn.Module, metrics: dict) -> None:
    """Write a judge's checkpoint folder atomically: config = its architecture fields, meta = the metrics and
    the rest of its section under "settings"."""
    settings = cfg.model_dump(mode="json", exclude=set(cfg.ARCHITECTURE))
    save_checkpoint(
        directory,
        kind=kind,
        config=cfg.architecture(),
        weights={"model": model.state_dict()},
        meta={**metrics, "settings": settings},
    )


def load_judge(
    directory: str | Path,
    kind: str,
    section: type[S],
    build: Callable[[S], M],
    device: torch.device | str = "cpu",
) -> M:
    """Rebuild a judge from its checkpoint folder, in eval mode on `device`. Raises CheckpointError.

    Only the architecture fields of `config` are read (earlier folders also held training settings there).
    """
    doc = read_checkpoint_config(directory, kind)
    weights = Path(directory) / "model.safetensors"
    try:
        arch = {k: doc["config"][k] for k in section.ARCHITECTURE if k in doc["config"]}
        model = build(section.model_validate(arch))
        model.load_state_dict(load_weights(weights))
    except (ValidationError, RuntimeError) as err:  # config or tensors that don't fit this code
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{weights}: does not match the {kind}'s config ({first})") from None
    return model.to(device).eval()
