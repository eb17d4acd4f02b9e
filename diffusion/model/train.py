"""Train the class-conditional diffusion model: seeded, resumable, EMA weights, warm-up + cosine LR.

    result = train_diffusion(cfg, train, val, out_dir, resume_dir)
    model, process = load_diffusion(out_dir, device="cpu")       # diffusion.model.saved

All randomness (batches, timesteps, noise, label masks) comes from one CPU torch.Generator seeded with
cfg.train.seed, and the model is initialised from the same seed, so a run is reproducible on CPU and a
killed run resumed from its last state in `resume_dir` ends with the same weights as an uninterrupted one.

Training data of more than one style (diffusion.styles) makes a two-condition model: labels become rows of
(digit, style), `unet.num_styles` is set to len(STYLES), and each batch draws a style's rows with probability
proportional to that style's weight in `data.sources`, whatever the sizes of the sources.

The losses stay on the device: they are summed there and read back (a host sync) only for a history row
every `log_every` steps and for a resume state every `checkpoint_every` steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion.config import ConfigError, DiffusionConfig, DiffusionTrainConfig
from diffusion.data.labelled import Labelled
from diffusion.model.ema import EMA
from diffusion.model.process import GaussianDiffusion
from diffusion.model.resume import TrainState, fingerprint, load_state, save_state, training_config
from diffusion.model.saved import new_model, save_diffusion
from diffusion.model.unet import UNet
from diffusion.precision import Precision, autocast
from diffusion.styles import STYLES


@dataclass(frozen=True)
class Conditioned:
    """Training rows as the network sees them: images float (N, 1, H, W), labels int64 (N,) digits or (N, 2)
    rows of (digit, style), and `weights` float64 (N,), each row's chance of a draw (None: uniform)."""

    images: Tensor
    labels: Tensor
    weights: Tensor | None = None


def present_styles(data: Labelled) -> list[str]:
    """The styles `data` holds (DigitsDataset.styles), in STYLES order; data without styles is MNIST's."""
    styles = getattr(data, "styles", None)
    return [STYLES[int(c)] for c in styles.unique().tolist()] if styles is not None else [STYLES[0]]


def styled(data: Labelled) -> bool:
    """Whether `data` holds more than one style, so training makes a two-condition model."""
    return len(present_styles(data)) > 1


def conditioned(
    data: Labelled, two_conditions: bool, style_weights: dict[str, float] | None = None
) -> Conditioned:
    """`data` as training draws it. Two conditions: labels (N, 2) = (digit, style) and, when `style_weights`
    (style name -> weight, `data.sources`) are given, each row weighted weight(style) / rows of its style, so
    a style's share of the draws is its weight's share of the total (a style without a weight: 1); None
    leaves rows uniform (validation, distillation)."""
    if not two_conditions:
        return Conditioned(data.images, data.labels)
    styles = data.styles  # type: ignore[attr-defined]
    labels = torch.stack([data.labels, styles], dim=1)
    if style_weights is None:
        return Conditioned(data.images, labels)
    counts = torch.bincount(styles, minlength=len(STYLES)).double()
    per_style = torch.tensor([style_weights.get(name, 1.0) for name in STYLES], dtype=torch.float64)
    return Conditioned(data.images, labels, (per_style / counts.clamp(min=1))[styles])


@dataclass
class TrainResult:
    metrics: dict[str, float]  # train_loss, val_loss, steps, images_per_second, parameters
    history: list[dict[str, float]]  # rows {step, train_loss, lr}, one per log_every steps


def lr_at(cfg: DiffusionTrainConfig, step: int) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up to cfg.lr, then cosine decay to 0."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype losses are summed in on `device`: float64 (exactly the old Python-float sums of the
    float32 losses), float32 on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def train_step(
    state: TrainState,
    process: GaussianDiffusion,
    data: Conditioned,
    cfg: DiffusionTrainConfig,
    precision: Precision = "fp32",
) -> Tensor:
    """One optimiser step on a batch drawn with replacement (by `data.weights` where given); returns the batch
    loss, a detached 0-dim float32 tensor on the model's device (not read back: no host sync)."""
    device = next(state.model.parameters()).device
    if data.weights is None:
        idx = torch.randint(0, data.labels.shape[0], (cfg.batch_size,), generator=state.generator)
    else:
        idx = torch.multinomial(data.weights, cfg.batch_size, replacement=True, generator=state.generator)
    x0, labels = data.images[idx].to(device), data.labels[idx].to(device)
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(cfg, state.step)
    with autocast(device, precision):
        loss = process.loss(
            state.model, x0, labels, state.generator, p_uncond=cfg.p_uncond, min_snr_gamma=cfg.min_snr_gamma
        )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.ema.update(state.model)
    return loss.detach()


@torch.no_grad()
def validation_loss(
    model: UNet, process: GaussianDiffusion, data: Conditioned, cfg: DiffusionTrainConfig
) -> float:
    """L_simple on the first val_batches batches, with noise, timesteps and masks from a fixed seed, unweighted
    whatever `cfg.min_snr_gamma` (so runs of either weighting compare). Summed on the device, read back once."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    total, count = torch.zeros((), dtype=sum_dtype(device), device=device), 0
    for images, labels in zip(
        data.images.split(cfg.batch_size)[: cfg.val_batches],
        data.labels.split(cfg.batch_size)[: cfg.val_batches],
        strict=True,
    ):
        loss = process.loss(model, images.to(device), labels.to(device), generator, p_uncond=cfg.p_uncond)
        total, count = total + loss.to(total.dtype) * labels.shape[0], count + labels.shape[0]
    return total.item() / max(count, 1)


def _check_fits(cfg: DiffusionConfig, train: Labelled) -> None:
    """ConfigError naming the `diffusion.unet` key that the training digits do not fit (their image shape,
    their labels), before a network is built: else a shape error or an index error mid-step."""
    shape, top = tuple(train.images.shape[1:]), int(train.labels.max()) if len(train.labels) else -1
    u = cfg.unet
    if shape != (u.in_channels, u.image_size, u.image_size):
        raise ConfigError(
            f"diffusion.unet.in_channels and image_size ({u.in_channels}, {u.image_size}): the training digits"
            f" are {' x '.join(map(str, shape))} (channels x height x width)"
        )
    if top >= u.num_classes:
        raise ConfigError(
            f"diffusion.unet.num_classes ({u.num_classes}): the training digits have labels up to {top};"
            f" set it to {top + 1} or more"
        )


def train_diffusion(
    cfg: DiffusionConfig,
    train: Labelled,
    val: Labelled,
    out_dir: Path,
    resume_dir: Path,
    progress: bool = True,
    device: torch.device | str = "cpu",
    precision: Precision = "fp32",
    style_weights: dict[str, float] | None = None,
) -> TrainResult:
    """Train (or resume) to cfg.train.steps on `device` with the network in `precision` (`hardware`), then
    write the checkpoint folder `out_dir` (EMA + raw weights).

    `train` of more than one style trains a two-condition model, drawing styles by `style_weights` (style
    name -> weight, `data.sources`). Every checkpoint_every steps and at the end the full training state goes
    to `resume_dir`; a state there with the same unet/process/train config, precision, style weights and
    training digits (`diffusion.model.resume.training_config`) is continued from, any other is ignored
    (fresh start). The checkpoint's meta records the styles it was trained on.
    """
    _check_fits(cfg, train)
    styles = present_styles(train)
    two = len(styles) > 1
    draws = {s: (style_weights or {}).get(s, 1.0) for s in styles} if two else None  # decides the weights
    if two:
        cfg = cfg.model_copy(update={"unet": cfg.unet.model_copy(update={"num_styles": len(STYLES)})})
    train, val = conditioned(train, two, draws), conditioned(val, two)  # val: every row once
    key = training_config(cfg, precision, draws, fingerprint(train.images, train.labels, train.weights))
    tc = cfg.train
    device = torch.device(device)
    process = GaussianDiffusion(cfg.process).to(device)
    model = new_model(cfg, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    state = TrainState(model, EMA(model, tc.ema_decay), optimizer, torch.Generator().manual_seed(tc.seed))
    # The global CPU RNG (dropout's) is seeded here and saved and restored with the state; the caller's is kept.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        load_state(Path(resume_dir), key, state)
        _train_loop(state, process, train, cfg, Path(resume_dir), progress, precision, key)

    ema_model = new_model(cfg, device)
    ema_model.load_state_dict(state.ema.state_dict())
    ema_model.eval()
    metrics = {
        "train_loss": state.history[-1]["train_loss"],
        "val_loss": validation_loss(ema_model, process, val, tc),
        "steps": state.step,
        "images_per_second": state.step * tc.batch_size / max(state.seconds, 1e-9),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    save_diffusion(out_dir, cfg, state.model.state_dict(), state.ema.state_dict(), metrics, styles)
    return TrainResult(metrics=metrics, history=list(state.history))


def _train_loop(
    state: TrainState,
    process: GaussianDiffusion,
    data: Conditioned,
    cfg: DiffusionConfig,
    resume_dir: Path,
    progress: bool,
    precision: Precision,
    key: dict[str, Any],
) -> None:
    """Steps to tc.steps, each resume state saved under `key` (its `training_config`). The
    loss window (state.window_sum, a float in the saved state) is summed on the device in `window` and read
    back only for a history row or a resume state."""
    tc = cfg.train
    state.model.train()
    device = next(state.model.parameters()).device
    window = torch.tensor(state.window_sum, dtype=sum_dtype(device), device=device)
    mark = time.perf_counter()
    with tqdm(
        total=tc.steps, initial=state.step, disable=not progress, desc="train diffusion", unit="step"
    ) as bar:
        while state.step < tc.steps:
            loss = train_step(state, process, data, tc, precision)
            state.step += 1
            window, state.window_count = window + loss.to(window.dtype), state.window_count + 1
            if state.step % tc.log_every == 0 or state.step == tc.steps:
                mean = window.item() / state.window_count  # the host sync, once per log_every steps
                state.history.append(
                    {"step": state.step, "train_loss": mean, "lr": lr_at(tc, state.step - 1)}
                )
                window, state.window_count = torch.zeros_like(window), 0
                bar.set_postfix(loss=f"{mean:.4f}")
            if state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
                now = time.perf_counter()
                state.seconds, mark = state.seconds + now - mark, now
                state.window_sum = window.item()
                save_state(resume_dir, key, state)
            bar.update()
