"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2): a second-order multistep ODE solver in x_0.

With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) and the half log-SNR
lambda_t = log(alpha_t / sigma_t), one step from s to t (h = lambda_t - lambda_s > 0) is

    x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D,

with D the data prediction x_0(x_s) at the first step (first order, = DDIM) and afterwards the
multistep correction D = (1 + 1/(2r)) x_0(x_s) - 1/(2r) x_0(x_s_prev), r = h_prev / h.
The final step goes to sigma = 0, where the first-order update is exactly x_0(x_s) (diffusers'
lower_order_final with final_sigmas_type="zero").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.samplers.guidance import guided_output
from diffusion.model.samplers.spacing import trailing_timesteps


def _alpha_sigma_lambda(process: GaussianDiffusion, t: int) -> tuple[float, float, float]:
    a = process.alpha_bar(t)
    alpha, sigma = math.sqrt(a), math.sqrt(1.0 - a)
    return alpha, sigma, math.log(alpha / sigma)


@torch.no_grad()
def dpm_solver_sample(
    model: Denoiser,
    process: GaussianDiffusion,
    x_T: Tensor,
    labels: Tensor,
    guidance: float,
    steps: int,
    clip: bool = True,
) -> Tensor:
    """x_T (B,C,H,W) ~ N(0, I), labels (B,) -> x_0 (B,C,H,W); in [-1, 1] when `clip`. Deterministic.

    Visits `trailing_timesteps(T, steps)` (one guided network call each). When `clip`, every x_0 prediction
    is clipped to [-1, 1] (diffusers: thresholding=True with sample_max_value=1.0).
    """
    timesteps = trailing_timesteps(process.num_timesteps, steps)
    x = x_T
    x0_prev: Tensor | None = None
    h_prev = 0.0
    for i, s in enumerate(timesteps):
        s_batch = torch.full((x.shape[0],), s, dtype=torch.long, device=x.device)
        x0 = process.x0_from_output(guided_output(model, x, s_batch, labels, guidance), x, s_batch)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        if i + 1 == len(timesteps):
            return x0  # the step to sigma = 0
        alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(process, s)
        alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(process, timesteps[i + 1])
        h = lambda_t - lambda_s
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * d
        x0_prev, h_prev = x0, h
    raise AssertionError("unreachable: the last step returns x0")
