"""DDIM sampling (Song et al. 2021): S of the T steps, deterministic at eta = 0, ancestral at eta = 1."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.samplers.guidance import guided_output
from diffusion.model.samplers.spacing import trailing_timesteps


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    process: GaussianDiffusion,
    x_T: Tensor,
    labels: Tensor,
    guidance: float,
    steps: int,
    generator: torch.Generator,
    eta: float = 0.0,
    clip: bool = True,
) -> Tensor:
    """x_T (B,C,H,W) ~ N(0, I), labels (B,) -> x_0 (B,C,H,W); in [-1, 1] when `clip`.

    Visits `trailing_timesteps(T, steps)`; the step after the last lands on clean data (alpha_bar = 1).
    When `clip`, the predicted x_0 is clipped to [-1, 1] and eps is re-derived from it (as GLIDE and
    improved-diffusion do; diffusers' DDIMScheduler with clip_sample=True, use_clipped_model_output=True).
    With eta > 0 one (B,C,H,W) noise draw per step comes from `generator`.
    """
    timesteps = trailing_timesteps(process.num_timesteps, steps)
    x = x_T
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a, a_prev = process.alpha_bar(t), process.alpha_bar(prev)
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        output = guided_output(model, x, t_batch, labels, guidance)
        x0 = process.x0_from_output(output, x, t_batch)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = process.eps_from_x0(x, t_batch, x0)
        else:
            eps = process.eps_from_output(output, x, t_batch)
        # Song et al. eq. 16: sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev).
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        # Song et al. eq. 12: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z.
        x = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev - sigma**2) * eps
        if sigma > 0.0:
            noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
            x = x + sigma * noise.to(x.device)
    return x
