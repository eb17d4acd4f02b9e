"""DDIM sampling (Song et al. 2021): S of the T steps, deterministic at eta = 0, ancestral at eta = 1."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.samplers.batching import Generators, StepCallback, step_noise
from diffusion.model.samplers.guidance import guided_output
from diffusion.model.samplers.spacing import trailing_timesteps


class DDIMStep(NamedTuple):
    """One update x_t -> x_prev = c_x0 x0 + c_eps eps + sigma z, as Python floats from the float64 schedule."""

    t: int
    c_x0: float  # sqrt(a_prev)
    c_eps: float  # sqrt(1 - a_prev - sigma^2)
    sigma: float  # eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev)


def ddim_steps(process: GaussianDiffusion, steps: int, eta: float) -> list[DDIMStep]:
    """The coefficients of every step, computed on the host before the loop (so the loop reads no tensor).

    Visits `trailing_timesteps(T, steps)`; the step after the last lands on clean data (alpha_bar = 1).
    """
    timesteps = trailing_timesteps(process.num_timesteps, steps)
    plan = []
    for t, prev in zip(timesteps, [*timesteps[1:], -1], strict=True):
        a, a_prev = process.alpha_bar(t), process.alpha_bar(prev)
        # Song et al. eq. 16: sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev).
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        plan.append(DDIMStep(t, math.sqrt(a_prev), math.sqrt(1.0 - a_prev - sigma**2), sigma))
    return plan


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    process: GaussianDiffusion,
    x_T: Tensor,
    labels: Tensor,
    guidance: float,
    steps: int,
    generator: Generators,
    eta: float = 0.0,
    clip: bool = True,
    callback: StepCallback | None = None,
    unguided: Tensor | None = None,
) -> Tensor:
    """x_T (B,C,H,W) ~ N(0, I), labels (B,) -> x_0 (B,C,H,W); in [-1, 1] when `clip`.

    When `clip`, the predicted x_0 is clipped to [-1, 1] and eps is re-derived from it (as GLIDE and
    improved-diffusion do; diffusers' DDIMScheduler with clip_sample=True, use_clipped_model_output=True).
    With eta > 0 one (B,C,H,W) noise draw per step comes from `generator` on x_T's device (or one
    generator per seed block, `batching.step_noise`).
    No host sync per step: the coefficients are floats from `ddim_steps`, the schedule lookups gather
    from `process.to(x_T.device)`. `callback(i, x_t, x0)`, when given, sees step i's input and its
    (clipped) x_0 prediction, on the device; it is not called at all when None.
    `unguided`: the labels of guidance's unconditional half (`guided_output`; None: every condition dropped).
    """
    process = process.to(x_T.device)
    x = x_T
    for i, step in enumerate(ddim_steps(process, steps, eta)):
        t_batch = torch.full((x.shape[0],), step.t, dtype=torch.long, device=x.device)
        output = guided_output(model, x, t_batch, labels, guidance, unguided)
        if clip:
            x0, eps = process.clipped_x0_eps(output, x, t_batch)
        else:
            x0, eps = process.x0_from_output(output, x, t_batch), process.eps_from_output(output, x, t_batch)
        if callback is not None:
            callback(i, x, x0)
        # Song et al. eq. 12: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z.
        x = step.c_x0 * x0 + step.c_eps * eps
        if step.sigma > 0.0:
            x = x + step.sigma * step_noise(x, generator)
    return x
