"""Classifier-free guidance (Ho & Salimans 2022): one batched network call per sampling step."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.model.process import Denoiser, GaussianDiffusion


def guided_eps(
    model: Denoiser, process: GaussianDiffusion, x: Tensor, t: int, labels: Tensor, guidance: float
) -> Tensor:
    """Guided noise prediction eps_uncond + w (eps_cond - eps_uncond) for x (B,C,H,W) at timestep t, labels (B,).

    w = 1 is the plain conditional model and w = 0 the unconditional one; both take one pass of B images.
    Otherwise the conditional and null-label halves go through the network as one batch of 2B. The raw
    outputs are combined before conversion to eps: for v-prediction eps = sqrt(ab) v + sqrt(1 - ab) x_t is
    affine in v with the same x_t in both halves, so combining v then converting equals combining eps.
    """
    b = x.shape[0]
    t_batch = torch.full((b,), t, dtype=torch.long, device=x.device)
    if guidance in (0.0, 1.0):
        used = labels if guidance == 1.0 else torch.full_like(labels, model.null_class)
        return process.eps_from_output(model(x, t_batch, used), x, t_batch)
    null = torch.full_like(labels, model.null_class)
    out_cond, out_uncond = model(
        torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([labels, null])
    ).chunk(2)
    return process.eps_from_output(out_uncond + guidance * (out_cond - out_uncond), x, t_batch)
