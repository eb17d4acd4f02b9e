"""The forward-diffusion picture: digits drowning in noise from t = 0 to t = T."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffusion.data.datasets import to_uint8
from diffusion.model.process import GaussianDiffusion


def forward_strip(
    process: GaussianDiffusion, x0: Tensor, columns: int, generator: torch.Generator
) -> np.ndarray:
    """x0 (K,1,H,W) in [-1, 1] -> uint8 (K * columns, H, W), row k = digit k at steps 0, T/(columns-1), ..., T.

    Step 0 is the clean digit, step tau > 0 is q(x_tau | x_0) (eq. 4) at array index tau - 1, and step T is
    (all but) pure noise. One noise draw per digit is shared by its row, so a row shows one trajectory.
    Save it with `save_grid(strip, path, ncols=columns)`.
    """
    k, t_max = x0.shape[0], process.num_timesteps
    steps = torch.linspace(0, t_max, columns, dtype=torch.float64).round().long()  # Ho et al.'s tau in [0, T]
    noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(x0.device)
    frames = []
    for tau in steps.tolist():
        if tau == 0:
            frames.append(x0)
        else:
            t = torch.full((k,), tau - 1, dtype=torch.long, device=x0.device)
            frames.append(process.q_sample(x0, t, noise))
    return to_uint8(
        torch.stack(frames, dim=1).flatten(0, 1)
    )  # (K, columns, 1, H, W) -> (K * columns, 1, H, W)
