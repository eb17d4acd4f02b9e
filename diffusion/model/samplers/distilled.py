"""The distilled sampler: a student of `digits distill-diffusion`, one network evaluation per step.

The student takes the guidance strength w as an input (guidance distillation, Meng et al. 2023), so a step
is one pass of B images instead of classifier-free guidance's 2B, and it walks the few timesteps it was
distilled for (progressive distillation, Salimans & Ho 2022): `steps` evaluations per image in all. Each
step is the DDIM update (eta = 0) that distillation matched, with x_0 clipped to [-1, 1] as in `ddim`.

The grid of an N-step student is `trailing_timesteps(T, N)`. The grids nest: the 2N-step grid's even
points are exactly the N-step grid (T - 2j T/2N = T - j T/N, also in floating point, since halving is exact),
so the two teacher steps that one student step replaces start and end on the student's grid (Salimans & Ho
2022, Algorithm 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion.model.process import GaussianDiffusion
from diffusion.model.samplers.batching import StepCallback
from diffusion.model.samplers.spacing import trailing_timesteps


def ddim_coefficients(process: GaussianDiffusion, t: int, prev: int) -> tuple[float, float]:
    """(sqrt(a_prev), sqrt(1 - a_prev)): x_prev = c_x0 x0 + c_eps eps (Song et al. 2021 eq. 12, eta = 0).
    prev = -1 is clean data."""
    a_prev = process.alpha_bar(prev)
    return math.sqrt(a_prev), math.sqrt(1.0 - a_prev)


@torch.no_grad()
def distilled_sample(
    student: torch.nn.Module,
    process: GaussianDiffusion,
    x_T: Tensor,
    labels: Tensor,
    guidance: float,
    steps: int,
    callback: StepCallback | None = None,
) -> Tensor:
    """x_T (B,C,H,W) ~ N(0, I), labels (B,) -> x_0 (B,C,H,W) in [-1, 1], in exactly `steps` student calls.

    `student(x, t, labels, w)` is a network with a guidance input (`UNetConfig.guidance_input`) distilled for
    `steps` on the grid `trailing_timesteps(T, steps)`. No host sync per step: the coefficients are host
    floats and w is one (B,) tensor made before the loop.
    """
    process = process.to(x_T.device)
    grid = trailing_timesteps(process.num_timesteps, steps)
    w = torch.full((x_T.shape[0],), float(guidance), dtype=torch.float32, device=x_T.device)
    x = x_T
    for i, (t, prev) in enumerate(zip(grid, [*grid[1:], -1], strict=True)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        output = student(x, t_batch, labels, w).to(x.dtype)
        x0 = process.x0_from_output(output, x, t_batch).clamp(-1.0, 1.0)
        eps = process.eps_from_x0(x, t_batch, x0)
        if callback is not None:
            callback(i, x, x0)
        c_x0, c_eps = ddim_coefficients(process, t, prev)
        x = c_x0 * x0 + c_eps * eps
    return x
