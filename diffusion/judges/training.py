"""What both judges' training shares: seeded batched augmentation and one fit loop that keeps the best-val weights.

All randomness comes from one CPU `torch.Generator`, so a run is reproducible on any device: random
numbers are drawn on the CPU and only the (small) results are moved to the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


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
    """The best-val weights (CPU tensors) and the per-epoch history."""

    best_state: dict[str, torch.Tensor]
    best_score: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only; none on biases, norms and scalars such as logit_scale."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def fit(
    model: nn.Module,
    batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    evaluate: Callable[[], float],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    augment: bool,
    generator: torch.Generator,
    grad_clip: float | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Train with AdamW and a one-cycle schedule; after each epoch score on val and keep the best weights.

    Args:
        model: trained in place; left holding its last-epoch weights (load `best_state` to use the best).
        batch_loss: (images (B, 1, H, W) in [-1, 1], labels (B,)) -> scalar loss, both on the model's device.
        evaluate: the validation score, higher is better; called after each epoch (it may switch to eval mode).
        images: (N, 1, H, W) in [-1, 1] on the model's device.
        labels: (N,) int64 on the same device.
        augment: apply `random_affine` to each batch.
        generator: CPU generator for shuffling and augmentation.
        grad_clip: clip the global gradient norm to this (None: no clipping).
    """
    n = labels.shape[0]
    steps_per_epoch = max(1, n // batch_size)  # drop the ragged last batch
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    best = FitResult(best_state={}, best_score=-math.inf, best_epoch=0)
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, unit="epoch")
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=generator).to(labels.device)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = images[idx]
            if augment:
                x = random_affine(x, generator)
            loss = batch_loss(x, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            total += loss.item()
        score = evaluate()
        best.history.append({"epoch": epoch, "loss": total / steps_per_epoch, "val": score})
        if score > best.best_score:
            best.best_score, best.best_epoch = score, epoch
            best.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{total / steps_per_epoch:.4f}", val=f"{score:.4f}")
    return best
