"""Classifier-free guidance (Ho & Salimans 2022): one batched network call per sampling step."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.model.process import Denoiser


def guided_output(model: Denoiser, x: Tensor, t: Tensor, labels: Tensor, guidance: float) -> Tensor:
    """out_uncond + w (out_cond - out_uncond) for x (B,C,H,W), timesteps t (B,) and labels (B,) -> (B,C,H,W).

    This is the guided eps, eps_uncond + w (eps_cond - eps_uncond), written in the network's own
    parameterisation: for v-prediction eps = sqrt(ab) v + sqrt(1 - ab) x_t is affine in v with the same
    x_t in both halves, so combining v and then converting (process.eps_from_output / x0_from_output)
    equals combining eps, and x_0 is then read off v without the ill-conditioned detour through eps.
    w = 1 is the plain conditional model and w = 0 the unconditional one; both take one pass of B images.
    Otherwise the conditional and null-label halves go through the network as one batch of 2B.
    The output has x's dtype even when the network runs under bf16 autocast, so the samplers' updates do too.
    """
    if guidance in (0.0, 1.0):
        label = labels if guidance == 1.0 else torch.full_like(labels, model.null_class)
        return model(x, t, label).to(x.dtype)
    null = torch.full_like(labels, model.null_class)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).to(x.dtype)
    out_cond, out_uncond = both.chunk(2)
    return out_uncond + guidance * (out_cond - out_uncond)
