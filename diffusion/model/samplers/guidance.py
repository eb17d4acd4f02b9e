"""Classifier-free guidance (Ho & Salimans 2022): one batched network call per sampling step."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.model.process import Denoiser, null_labels


def guided_output(
    model: Denoiser,
    x: Tensor,
    t: Tensor,
    labels: Tensor,
    guidance: float | Tensor,
    unguided: Tensor | None = None,
) -> Tensor:
    """out_uncond + w (out_cond - out_uncond) for x (B,C,H,W), timesteps t (B,), labels (B,) -> (B,C,H,W).

    With (B, 2) labels of (digit, style) the guidance is joint by default: out_cond conditions on both,
    out_uncond on neither, eps(∅,∅) + w (eps(c,s) - eps(∅,∅)). It costs the same 2B images per step as digits
    alone (the compositional eps(∅,∅) + w_c (eps(c,∅) - eps(∅,∅)) + w_s (eps(∅,s) - eps(∅,∅)) of Liu et al.
    2022 costs 3B), and a distilled student's single w input stays one number. `unguided`: the labels of
    out_uncond instead of every condition dropped (`null_labels`); rows of (digit, null style)
    (`process.condition_dropped`, `SamplerConfig.guide: style`) give eps(c,∅) + w (eps(c,s) - eps(c,∅)), the
    same 2B images: guidance along the style alone, the digit left as the conditional model draws it; rows
    of (null digit, style) (`guide: digit`) give eps(∅,s) + w (eps(c,s) - eps(∅,s)), along the digit alone.

    This is the guided eps, eps_uncond + w (eps_cond - eps_uncond), written in the network's own
    parameterisation: for v-prediction eps = sqrt(ab) v + sqrt(1 - ab) x_t is affine in v with the same
    x_t in both halves, so combining v and then converting (process.eps_from_output / x0_from_output)
    equals combining eps, and x_0 is then read off v without the ill-conditioned detour through eps.
    w = 1 is the plain conditional model and w = 0 the unconditional one; both take one pass of B images.
    Otherwise the conditional and null-label halves go through the network as one batch of 2B.
    The output has x's dtype even when the network runs under bf16 autocast, so the samplers' updates do too.
    `guidance` is one w, or one per image (B,) (distillation's teacher, `diffusion.model.distill`).
    """
    if not isinstance(guidance, Tensor) and guidance == 1.0:
        return model(x, t, labels).to(x.dtype)
    null = null_labels(model, labels) if unguided is None else unguided
    if not isinstance(guidance, Tensor) and guidance == 0.0:
        return model(x, t, null).to(x.dtype)
    if isinstance(guidance, Tensor):
        guidance = guidance.view(-1, 1, 1, 1)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).to(x.dtype)
    out_cond, out_uncond = both.chunk(2)
    return out_uncond + guidance * (out_cond - out_uncond)
