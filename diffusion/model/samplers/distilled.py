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

import torch
from torch import Tensor

from diffusion.model.process import GaussianDiffusion
from diffusion.model.samplers.batching import StepCallback
from diffusion.model.samplers.ddim import ddim_steps


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
    w = torch.full((x_T.shape[0],), float(guidance), dtype=torch.float32, device=x_T.device)
    x = x_T
    for i, step in enumerate(ddim_steps(process, steps, eta=0.0)):  # on trailing_timesteps(T, steps)
        t_batch = torch.full((x.shape[0],), step.t, dtype=torch.long, device=x.device)
        x0, eps = process.clipped_x0_eps(student(x, t_batch, labels, w).to(x.dtype), x, t_batch)
        if callback is not None:
            callback(i, x, x0)
        x = step.c_x0 * x0 + step.c_eps * eps
    return x
