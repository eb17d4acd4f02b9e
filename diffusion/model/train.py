"""Train the class-conditional diffusion model: seeded, resumable, EMA weights, warm-up + cosine LR.

    result = train_diffusion(cfg, train, val, out_dir, resume_dir)
    model, process = load_diffusion(out_dir, device="cpu")

All randomness (batches, timesteps, noise, label masks) comes from one CPU torch.Generator seeded with
cfg.train.seed, and the model is initialised from the same seed, so a run is reproducible on CPU and a
killed run resumed from its last state in `resume_dir` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import ValidationError
from torch import Tensor
from tqdm.auto import tqdm

from diffusion.checkpoint import CheckpointError, load_weights, read_checkpoint_config, save_checkpoint
from diffusion.config import DiffusionConfig, DiffusionTrainConfig, ProcessConfig, UNetConfig
from diffusion.model.ema import EMA
from diffusion.model.process import GaussianDiffusion
from diffusion.model.resume import TrainState, load_state, save_state
from diffusion.model.unet import UNet
from diffusion.precision import autocast

KIND = "diffusion"


class Digits(Protocol):
    """What training reads from a dataset (DigitsDataset fits)."""

    images: Tensor  # float (N, 1, H, W) in [-1, 1]
    labels: Tensor  # int64 (N,)


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


def new_model(cfg: DiffusionConfig, device: torch.device) -> UNet:
    """The U-Net initialised from cfg.train.seed, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return UNet(cfg.unet).to(device)


def train_step(
    state: TrainState, process: GaussianDiffusion, data: Digits, cfg: DiffusionTrainConfig
) -> float:
    """One optimiser step on a batch drawn with replacement; returns the batch loss."""
    device = next(state.model.parameters()).device
    idx = torch.randint(0, data.labels.shape[0], (cfg.batch_size,), generator=state.generator)
    x0, labels = data.images[idx].to(device), data.labels[idx].to(device)
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(cfg, state.step)
    with autocast(device, cfg.precision):
        loss = process.loss(state.model, x0, labels, state.generator, p_uncond=cfg.p_uncond)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.ema.update(state.model)
    return loss.item()


@torch.no_grad()
def validation_loss(
    model: UNet, process: GaussianDiffusion, data: Digits, cfg: DiffusionTrainConfig
) -> float:
    """The training objective on the first val_batches batches, with noise, timesteps and masks from a fixed seed."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    total, count = 0.0, 0
    for images, labels in zip(
        data.images.split(cfg.batch_size)[: cfg.val_batches],
        data.labels.split(cfg.batch_size)[: cfg.val_batches],
        strict=True,
    ):
        loss = process.loss(model, images.to(device), labels.to(device), generator, p_uncond=cfg.p_uncond)
        total, count = total + loss.item() * labels.shape[0], count + labels.shape[0]
    return total / max(count, 1)


def train_diffusion(
    cfg: DiffusionConfig,
    train: Digits,
    val: Digits,
    out_dir: Path,
    resume_dir: Path,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) to cfg.train.steps, then write the checkpoint folder `out_dir` (EMA + raw weights).

    Every checkpoint_every steps and at the end the full training state goes to `resume_dir`; a state there
    with the same unet/process/train config is continued from, any other is ignored (fresh start).
    """
    tc = cfg.train
    device = torch.device(tc.device)
    process = GaussianDiffusion(cfg.process)
    model = new_model(cfg, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    state = TrainState(model, EMA(model, tc.ema_decay), optimizer, torch.Generator().manual_seed(tc.seed))
    # The global CPU RNG (dropout's) is seeded here and saved and restored with the state; the caller's is kept.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        load_state(Path(resume_dir), cfg, state)
        _train_loop(state, process, train, cfg, Path(resume_dir), progress)

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
    save_diffusion(out_dir, cfg, model=model.state_dict(), ema=state.ema.state_dict(), metrics=metrics)
    return TrainResult(metrics=metrics, history=list(state.history))


def _train_loop(
    state: TrainState,
    process: GaussianDiffusion,
    data: Digits,
    cfg: DiffusionConfig,
    resume_dir: Path,
    progress: bool,
) -> None:
    tc = cfg.train
    state.model.train()
    mark = time.perf_counter()
    with tqdm(
        total=tc.steps, initial=state.step, disable=not progress, desc="train diffusion", unit="step"
    ) as bar:
        while state.step < tc.steps:
            loss = train_step(state, process, data, tc)
            state.step += 1
            state.window_sum, state.window_count = state.window_sum + loss, state.window_count + 1
            if state.step % tc.log_every == 0 or state.step == tc.steps:
                mean = state.window_sum / state.window_count
                state.history.append(
                    {"step": state.step, "train_loss": mean, "lr": lr_at(tc, state.step - 1)}
                )
                state.window_sum, state.window_count = 0.0, 0
                bar.set_postfix(loss=f"{mean:.4f}")
            if state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
                now = time.perf_counter()
                state.seconds, mark = state.seconds + now - mark, now
                save_state(resume_dir, cfg, state)
            bar.update()


def save_diffusion(
    directory: Path,
    cfg: DiffusionConfig,
    model: dict[str, Tensor],
    ema: dict[str, Tensor],
    metrics: dict[str, Any],
) -> None:
    """The final checkpoint folder: ema and model weights beside config.json.

    config.json holds kind "diffusion", `config` {unet, process} (what rebuilds the network and its
    process) and `meta` (the metrics and the training settings, never read back by loading).
    """
    save_checkpoint(
        directory,
        kind=KIND,
        config={"unet": cfg.unet.model_dump(mode="json"), "process": cfg.process.model_dump(mode="json")},
        weights={"ema": ema, "model": model},
        meta={**metrics, "train": cfg.train.model_dump(mode="json")},
    )


def load_diffusion(
    directory: str | Path, device: torch.device | str = "cpu", weights: Literal["ema", "model"] = "ema"
) -> tuple[UNet, GaussianDiffusion]:
    """Rebuild (U-Net in eval mode on `device`, process) from a `save_diffusion` folder; no flags needed.

    Only `config.unet` and `config.process` are read, so folders of earlier versions, whose config also
    held the train, sampler and eval sections, load too.
    """
    directory = Path(directory)
    doc = read_checkpoint_config(directory, KIND)
    try:
        unet = UNetConfig.model_validate(doc["config"].get("unet"))
        process = ProcessConfig.model_validate(doc["config"].get("process"))
    except ValidationError as err:
        first = err.errors()[0]
        raise CheckpointError(
            f"{directory / 'config.json'}: invalid diffusion config "
            f"({'.'.join(map(str, first['loc'])) or 'unet/process'}: {first['msg']})"
        ) from None
    model = UNet(unet)
    try:
        model.load_state_dict(load_weights(directory / f"{weights}.safetensors"))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"{directory / weights}.safetensors: weights do not fit the config ({first})"
        ) from None
    return model.to(device).eval(), GaussianDiffusion(process)
