"""Training state saved for resumption: weights, EMA, optimiser, RNG states, step and history.

A state is a checkpoint folder (see `diffusion.checkpoint`, written atomically) of kind
`diffusion-train-state`: model/ema/optimizer/rng safetensors files plus JSON for step, history,
the optimiser's scalars and param groups. Nothing is pickled. Its config is what decides the weights
(`training_config`: the unet, process and train sections, the precision, the style draws and the training
digits' fingerprint); a state is resumed only when that equals the current run's, so sampler or eval
settings never restart training, and other training digits (a new split, source or font) always do.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffusion.checkpoint import CheckpointError, load_weights, read_checkpoint_config, save_checkpoint
from diffusion.config import DiffusionConfig
from diffusion.model.ema import EMA
from diffusion.model.unet import UNet
from diffusion.precision import Precision

STATE_KIND = "diffusion-train-state"
log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything a resumed run needs to continue bit-exactly where a killed one stopped."""

    model: UNet
    ema: EMA
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # CPU generator for batches, timesteps, noise and label masks
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    window_sum: float = 0.0  # sum of the losses since the last history row (as of the last save)
    window_count: int = 0
    seconds: float = 0.0  # training wall time over all sessions


def fingerprint(*tensors: Tensor | None) -> str:
    """sha256 over the bytes, dtypes and shapes of `tensors` (None skipped): which training digits a state
    was trained on, so that a state of other digits is never resumed."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is not None:
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(memoryview(tensor.detach().cpu().contiguous().numpy()).cast("B"))  # no copy
    return digest.hexdigest()


def training_config(
    cfg: DiffusionConfig, precision: Precision, draws: dict[str, float] | None, data_sha256: str
) -> dict[str, Any]:
    """What determines the trained weights, as JSON: the unet, process and train sections, the precision
    the network trains in (`hardware.precision`, resolved), for a two-condition model `draws` (style -> its
    weight in the training draws, `data.sources`), and the training digits' `fingerprint`."""
    config = {**cfg.model_dump(mode="json", include={"unet", "process", "train"}), "precision": precision}
    if draws is not None:
        config["style_draws"] = draws
    return {**config, "data_sha256": data_sha256}


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer state_dict -> (tensors keyed "<param index>.<name>", JSON for everything else)."""
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            target = tensors if torch.is_tensor(value) else scalars
            target[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer` (JSON lists of param-group tuples such as betas become tuples)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def save_state(directory: Path, config: dict[str, Any], state: TrainState) -> None:
    """Write the whole state atomically (a kill leaves the previous state or this one); `config`: the run's
    `training_config`."""
    opt_tensors, opt_meta = flatten_optimizer(state.optimizer.state_dict())
    rng = {"generator": state.generator.get_state(), "torch_cpu": torch.get_rng_state()}
    meta = {
        "step": state.step,
        "ema_updates": state.ema.updates,
        "history": state.history,
        "window_sum": state.window_sum,
        "window_count": state.window_count,
        "seconds": state.seconds,
        "optimizer": opt_meta,
    }
    weights = {
        "model": state.model.state_dict(),
        "ema": state.ema.state_dict(),
        "optimizer": opt_tensors,
        "rng": rng,
    }
    save_checkpoint(directory, kind=STATE_KIND, config=config, weights=weights, meta=meta)


def load_state(directory: Path, config: dict[str, Any], state: TrainState) -> bool:
    """Restore `state` in place from `directory` if it holds a state of the same `training_config`.

    Returns False (and leaves `state` untouched) when there is no state, a state of another config, or an
    unreadable one, so the caller starts fresh.
    """
    if not (directory / "config.json").is_file():
        return False
    try:
        doc = read_checkpoint_config(directory, STATE_KIND)
        if doc["config"] != config:
            log.info("%s: saved state has another config or other training digits, starting fresh", directory)
            return False
        device = next(state.model.parameters()).device
        files = {name: load_weights(directory / f"{name}.safetensors", device) for name in ("model", "ema")}
        opt_tensors = load_weights(directory / "optimizer.safetensors", device)
        rng = load_weights(directory / "rng.safetensors")
    except CheckpointError as err:
        log.warning("cannot resume, starting fresh: %s", err)
        return False
    meta = doc["meta"]
    state.model.load_state_dict(files["model"])
    state.ema.load_state_dict(files["ema"], updates=meta["ema_updates"])
    state.optimizer.load_state_dict(unflatten_optimizer(opt_tensors, meta["optimizer"]))
    state.generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch_cpu"])
    # rows in the order training writes them (the JSON meta is saved with sorted keys): the loss plot's
    # columns, and so its bytes, are those of a run that was never stopped
    state.step = meta["step"]
    state.history = [{k: row[k] for k in ("step", "train_loss", "lr") if k in row} for row in meta["history"]]
    state.window_sum, state.window_count, state.seconds = (
        meta["window_sum"],
        meta["window_count"],
        meta["seconds"],
    )
    return True
