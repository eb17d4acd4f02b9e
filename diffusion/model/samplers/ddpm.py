"""Ancestral DDPM sampling (Ho et al. 2020 Alg. 2) over all T steps with the posterior variance."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.samplers.batching import Generators, StepCallback, step_noise
from diffusion.model.samplers.guidance import guided_output


@torch.no_grad()
def ddpm_sample(
    model: Denoiser,
    process: GaussianDiffusion,
    x_T: Tensor,
    labels: Tensor,
    guidance: float,
    generator: Generators,
    clip: bool = True,
    callback: StepCallback | None = None,
    unguided: Tensor | None = None,
) -> Tensor:
    """x_T (B,C,H,W) ~ N(0, I), labels (B,) -> x_0 (B,C,H,W); in [-1, 1] when `clip`.

    Each step predicts x_0 (clipped to [-1, 1] when `clip`), then draws x_{t-1} from the posterior
    q(x_{t-1} | x_t, x_0) of eqs. 6-7 (sigma_t^2 = beta~_t, "fixed small"); the last step returns its mean.
    Noise comes from `generator`, on x_T's device: one (B,C,H,W) draw per step t > 0 (as diffusers'
    DDPMScheduler), or from one generator per seed block (`batching.step_noise`). No host sync per step:
    the posterior coefficients gather from `process.to(x_T.device)`. `callback(i, x_t, x0)`, when given,
    sees step i's (t = T - 1 - i) input and its x_0 prediction, on the device; not called when None.
    `unguided`: the labels of guidance's unconditional half (`guided_output`; None: every condition dropped).
    """
    process = process.to(x_T.device)
    x = x_T
    for i, t in enumerate(reversed(range(process.num_timesteps))):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0 = process.x0_from_output(guided_output(model, x, t_batch, labels, guidance, unguided), x, t_batch)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        if callback is not None:
            callback(i, x, x0)
        mean, variance = process.q_posterior(x0, x, t_batch)
        if t == 0:
            return mean  # variance is 0 at t = 0 and the mean is x0 itself
        noise = step_noise(x, generator)
        x = mean + variance.sqrt() * noise
    raise AssertionError("unreachable: the loop returns at t = 0")
