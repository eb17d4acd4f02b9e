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
from typing import NamedTuple

import torch
from torch import Tensor

from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.samplers.batching import StepCallback
from diffusion.model.samplers.guidance import guided_output
from diffusion.model.samplers.spacing import trailing_timesteps


class SolverStep(NamedTuple):
    """One update from timestep s: x_t = c_x x_s - c_d D, D = c_now x0(x_s) - c_prev x0(x_s_prev). Floats."""

    s: int
    c_x: float  # sigma_t / sigma_s
    c_d: float  # alpha_t (exp(-h) - 1)
    c_now: float  # 1 at the first step, else 1 + 1/(2r)
    c_prev: float  # 0 at the first step, else 1/(2r)


def _alpha_sigma_lambda(process: GaussianDiffusion, t: int) -> tuple[float, float, float]:
    a = process.alpha_bar(t)
    alpha, sigma = math.sqrt(a), math.sqrt(1.0 - a)
    return alpha, sigma, math.log(alpha / sigma)


def dpm_solver_steps(process: GaussianDiffusion, steps: int) -> tuple[list[SolverStep], int]:
    """The coefficients of the `steps - 1` updates, computed on the host before the loop (Python floats
    from the float64 schedule), and the last timestep, whose x_0 prediction is the result.

    Visits `trailing_timesteps(T, steps)`.
    """
    timesteps = trailing_timesteps(process.num_timesteps, steps)
    plan, h_prev = [], 0.0
    for i, (s, t) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        _, sigma_s, lambda_s = _alpha_sigma_lambda(process, s)
        alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(process, t)
        h = lambda_t - lambda_s
        if i == 0:
            c_now, c_prev = 1.0, 0.0  # first order: D = x0(x_s), the DDIM step
        else:
            r = h_prev / h
            c_now, c_prev = 1.0 + 0.5 / r, 0.5 / r
        plan.append(SolverStep(s, sigma_t / sigma_s, alpha_t * math.expm1(-h), c_now, c_prev))
        h_prev = h
    return plan, timesteps[-1]


@torch.no_grad()
def dpm_solver_sample(
    model: Denoiser,
    process: GaussianDiffusion,
    x_T: Tensor,
    labels: Tensor,
    guidance: float,
    steps: int,
    clip: bool = True,
    callback: StepCallback | None = None,
    unguided: Tensor | None = None,
) -> Tensor:
    """x_T (B,C,H,W) ~ N(0, I), labels (B,) -> x_0 (B,C,H,W); in [-1, 1] when `clip`. Deterministic.

    One guided network call per visited timestep. When `clip`, every x_0 prediction is clipped to [-1, 1]
    (diffusers: thresholding=True with sample_max_value=1.0). No host sync per step: the coefficients are
    floats from `dpm_solver_steps`, the x_0 conversions gather from `process.to(x_T.device)`.
    `callback(i, x_t, x0)`, when given, sees the i-th network call's input and its x_0 prediction (the last,
    i = steps - 1, is the result), on the device; it is not called at all when None.
    `unguided`: the labels of guidance's unconditional half (`guided_output`; None: every condition dropped).
    """
    process = process.to(x_T.device)
    plan, last = dpm_solver_steps(process, steps)

    def data_prediction(x: Tensor, s: int) -> Tensor:  # x_0(x_s), (B,C,H,W)
        s_batch = torch.full((x.shape[0],), s, dtype=torch.long, device=x.device)
        x0 = process.x0_from_output(guided_output(model, x, s_batch, labels, guidance, unguided), x, s_batch)
        return x0.clamp(-1.0, 1.0) if clip else x0

    x, x0_prev = x_T, None
    for i, step in enumerate(plan):
        x0 = data_prediction(x, step.s)
        if callback is not None:
            callback(i, x, x0)
        d = x0 if x0_prev is None else step.c_now * x0 - step.c_prev * x0_prev
        x = step.c_x * x - step.c_d * d
        x0_prev = x0
    x0 = data_prediction(x, last)  # the step to sigma = 0
    if callback is not None:
        callback(len(plan), x, x0)
    return x0
