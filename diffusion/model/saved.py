"""The diffusion model on disk: a new seeded U-Net, the final checkpoint folder, and loading it back.

    save_diffusion(out_dir, cfg, model=..., ema=..., metrics=...)
    model, process = load_diffusion(out_dir, device="cpu")      # U-Net in eval mode, its process

A folder is `diffusion.checkpoint`'s format: ema.safetensors and model.safetensors beside config.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from torch import Tensor

from diffusion.checkpoint import CheckpointError, load_weights, read_checkpoint_config, save_checkpoint
from diffusion.config import DiffusionConfig, ProcessConfig, UNetConfig
from diffusion.model.process import GaussianDiffusion
from diffusion.model.unet import UNet
from diffusion.styles import STYLES

KIND = "diffusion"


def new_model(cfg: DiffusionConfig, device: torch.device | str) -> UNet:
    """The U-Net initialised from cfg.train.seed, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return UNet(cfg.unet).to(device)


def save_diffusion(
    directory: Path,
    cfg: DiffusionConfig,
    model: dict[str, Tensor],
    ema: dict[str, Tensor],
    metrics: dict[str, Any],
    styles: list[str] | None = None,
) -> None:
    """The final checkpoint folder: ema and model weights beside config.json.

    config.json holds kind "diffusion", `config` {unet, process} (what rebuilds the network and its
    process) and `meta` (the metrics, the training settings and `styles`, the styles it was trained on,
    never read back by loading; generation checks a request against `styles`, `trained_styles`).
    """
    save_checkpoint(
        directory,
        kind=KIND,
        config={"unet": cfg.unet.model_dump(mode="json"), "process": cfg.process.model_dump(mode="json")},
        weights={"ema": ema, "model": model},
        meta={**metrics, "train": cfg.train.model_dump(mode="json"), "styles": styles or [STYLES[0]]},
    )


def trained_styles(doc: dict[str, Any]) -> list[str]:
    """The styles a diffusion checkpoint's config document (`read_checkpoint_config`) was trained on; folders
    written before styles existed were trained on MNIST handwriting."""
    return list(doc.get("meta", {}).get("styles") or [STYLES[0]])


def load_diffusion(
    directory: str | Path, device: torch.device | str = "cpu", weights: Literal["ema", "model"] = "ema"
) -> tuple[UNet, GaussianDiffusion]:
    """Rebuild (U-Net in eval mode on `device`, process) from a `save_diffusion` folder; no flags needed.

    The process keeps its float64 tables on the CPU; the samplers use `process.to(device)` (cached).

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
