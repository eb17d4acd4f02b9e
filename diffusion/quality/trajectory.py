"""How the digits were drawn: one seeded digit per class through a sampler, x_t and the predicted x_0 at a
few of its steps.

    traj = draw_trajectory(model, process, sampler_cfg, seed=0, columns=5, device="cpu")
    traj.x_t, traj.x0            uint8 (columns, classes, H, W): the sampler's input and its x_0 prediction
    traj.steps, traj.timesteps   which of its `traj.total` steps they are, and their training timesteps
    save_trajectory_grid(traj, path)

The sampler is generation's (the same `SamplerConfig`, through `diffusion.model.samplers.sample`), but run
here in fp32 from its own seed, not through `sample_blocks`' seed blocks and `hardware.precision`: the
pictures show how a digit is drawn, not one of the published digits. x_T comes from a CPU `torch.Generator`
seeded with `seed` (the same starting points on any device), the per-step noise of the stochastic samplers
from a generator seeded by it, so the same seed draws the same pixels. The steps are
recorded through the samplers' `callback`, which keeps the tensors on the device until the loop is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffusion.config import SamplerConfig
from diffusion.data.datasets import to_uint8
from diffusion.data.images import grid, save_grid
from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.samplers import sample
from diffusion.model.samplers.spacing import trailing_timesteps

PAD = 2  # pixels between the grid's cells (diffusion.data.images.grid)


@dataclass(frozen=True)
class Trajectory:
    """Recorded steps of one draw: x_t and x0 are uint8 (len(steps), len(classes), H, W)."""

    sampler: SamplerConfig
    seed: int
    classes: list[int]
    total: int  # the sampler's steps (network calls per image, guidance aside)
    steps: list[int]  # the recorded step indices, 0 = the first (from x_T), total - 1 = the last
    timesteps: list[int]  # the training timestep t of each recorded step
    x_t: np.ndarray
    x0: np.ndarray
    final: np.ndarray  # uint8 (len(classes), H, W): what the sampler returned


def visited_timesteps(cfg: SamplerConfig, num_timesteps: int) -> list[int]:
    """The training timesteps a sampler's steps visit, in order: all T for ddpm, else `cfg.steps` trailing."""
    if cfg.name == "ddpm":
        return list(reversed(range(num_timesteps)))
    return trailing_timesteps(num_timesteps, cfg.steps)


def chosen_steps(total: int, columns: int) -> list[int]:
    """`columns` step indices spread evenly over `total` steps, the first and the last among them."""
    if total < 1 or columns < 1:
        raise ValueError(f"cannot choose {columns} of {total} steps")
    return sorted({round(x) for x in np.linspace(0, total - 1, min(columns, total))})


@torch.no_grad()
def draw_trajectory(
    model: Denoiser,
    process: GaussianDiffusion,
    cfg: SamplerConfig,
    seed: int = 0,
    columns: int = 5,
    device: torch.device | str = "cpu",
    classes: Sequence[int] = tuple(range(10)),
    style: int | None = None,
) -> Trajectory:
    """Draw one digit per class of `classes` with sampler `cfg` from seed `seed`, recording x_t and the x_0
    prediction at `columns` steps spread over the sampler's steps (`chosen_steps`). `style`: a style code
    (`diffusion.styles`) to draw every digit in, for a model of digit and style (needed by `guide: style` and `guide: digit`);
    None: digits of any style."""
    timesteps = visited_timesteps(cfg, process.num_timesteps)
    if cfg.name != "ddpm" and cfg.steps > process.num_timesteps:
        raise ValueError(f"{cfg.steps} sampler steps, but the model has {process.num_timesteps} timesteps")
    wanted = chosen_steps(len(timesteps), columns)
    recorded: dict[int, tuple[Tensor, Tensor]] = {}

    def record(i: int, x_t: Tensor, x0: Tensor) -> None:
        if i in wanted:  # a Python int compare: no host sync; the tensors stay on the device
            recorded[i] = (x_t.detach().clone(), x0.detach().clone())

    labels = torch.tensor(list(classes), dtype=torch.long)
    if style is not None:
        labels = torch.stack([labels, torch.full_like(labels, style)], dim=1)
    generator = torch.Generator().manual_seed(seed)
    final = sample(model, process, labels, cfg, generator, device, callback=record)
    if sorted(recorded) != wanted:
        raise RuntimeError(f"the sampler reported steps {sorted(recorded)}, expected {wanted}")
    return Trajectory(
        sampler=cfg,
        seed=seed,
        classes=list(classes),
        total=len(timesteps),
        steps=wanted,
        timesteps=[timesteps[i] for i in wanted],
        x_t=np.stack([to_uint8(recorded[i][0]) for i in wanted]),
        x0=np.stack([to_uint8(recorded[i][1]) for i in wanted]),
        final=to_uint8(final),
    )


def trajectory_cells(traj: Trajectory) -> np.ndarray:
    """The grid's cells row by row: a row per class, for each recorded step x_t then x0 -> uint8 (N, H, W)."""
    pairs = np.stack([traj.x_t, traj.x0], axis=1)  # (K, 2, classes, H, W)
    return pairs.transpose(2, 0, 1, 3, 4).reshape(-1, *traj.x_t.shape[-2:])


def trajectory_grid(traj: Trajectory) -> np.ndarray:
    """The trajectory as one uint8 image: len(classes) rows, 2 x len(steps) columns, PAD pixels apart."""
    return grid(trajectory_cells(traj), ncols=2 * len(traj.steps), pad=PAD)


def save_trajectory_grid(traj: Trajectory, path: str | Path, scale: int = 2) -> None:
    """Save `trajectory_grid` as a PNG (atomic), upscaled `scale` times."""
    save_grid(trajectory_cells(traj), path, ncols=2 * len(traj.steps), scale=scale)
