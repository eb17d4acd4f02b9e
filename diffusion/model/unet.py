"""A small class-conditional U-Net for eps (or v) prediction on 28x28 digits.

    x (B,C,H,W) -> conv_in -> [ResBlock x n, down]* -> ResBlock, attention, ResBlock -> [ResBlock(cat skip) x n, up]*
                -> GroupNorm, SiLU, conv_out -> (B,C,H,W)

Every residual block receives emb = MLP(sinusoid(t)) + Embedding(label), so time and class condition each
block. Label `num_classes` is the null class (no label) used for classifier-free guidance. A two-condition
model (`num_styles` > 0) adds Embedding(style) with its own null row `num_styles`; its labels are (B, 2)
rows of (digit, style), and (B,) digits alone mean "any style" (the null style). A distilled
student (`guidance_input`) adds MLP(sinusoid(GUIDANCE_SCALE w)) for its guidance strength w, the Fourier
embedding of w that Meng et al. (2023, sec. 4.1) add to the time embedding; its last layer starts at zero,
so a student copied from its teacher starts as the teacher's conditional model. With
channel_mults (1, 2, 4) (the default) a 28x28 input is processed at 28, 14 and 7 pixels; attention runs at 7x7.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion.config import UNetConfig

GUIDANCE_SCALE = 100.0  # w in [0, ~10] embedded like a timestep in [0, ~1000]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of Vaswani et al. (2017) sec. 3.5 as used by Ho et al.: t (B,) -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the embedding added in between: (B,c_in,H,W), (B,E) -> (B,c_out,H,W)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over pixels with a residual: (B,c,H,W) -> (B,c,H,W)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = (
            self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        )  # each (B, HW, c)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, HW, c)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """forward(x (B,C,H,W) float, t (B,) int64 in [0, T), labels (B,) int64 in [0, num_classes] or, for a
    two-condition model, (B, 2) rows of (digit, style in [0, num_styles]), guidance (B,) float, a student's
    only) -> (B,C,H,W).

    Attributes used by the process and samplers: `null_class` (= num_classes), `null_style` (= num_styles, or
    None for a digit-only model) and `image_shape` (C, H, W).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        self.null_class = cfg.num_classes
        self.null_style = cfg.num_styles or None
        self.image_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        base, g, p = cfg.base_channels, cfg.groups, cfg.dropout
        emb_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim)
        self.style_emb = nn.Embedding(cfg.num_styles + 1, emb_dim) if cfg.num_styles else None
        self.guidance_mlp = None
        if cfg.guidance_input:
            self.guidance_mlp = nn.Sequential(
                nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
            nn.init.zeros_(self.guidance_mlp[2].weight)
            nn.init.zeros_(self.guidance_mlp[2].bias)
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)

        widths = [base * m for m in cfg.channel_mults]
        last = len(widths) - 1
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, c = [], base
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(ResBlock(c, width, emb_dim, g, p))
                c = width
                skips.append(c)
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if level < last else nn.Identity())

        self.mid1 = ResBlock(c, c, emb_dim, g, p)
        self.mid_attn = SelfAttention(c, g) if cfg.attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, g, p)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(cfg.num_res_blocks):
                self.up.append(ResBlock(c + skips.pop(), width, emb_dim, g, p))
                c = width
            if level > 0:  # nearest + conv to the next level's width, so the conv at 2H is the narrower one
                self.upsample.append(nn.Conv2d(c, widths[level - 1], 3, padding=1))
                c = widths[level - 1]
            else:
                self.upsample.append(nn.Identity())

        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start as the zero predictor: loss starts at E[eps^2] = 1
        nn.init.zeros_(self.conv_out.bias)

    def _condition(self, labels: Tensor) -> Tensor:
        """The condition's embedding (B, E): the digit's, plus for a two-condition model the style's."""
        if labels.ndim == 1:
            emb = self.label_emb(labels)
            return emb if self.style_emb is None else emb + self.style_emb.weight[self.null_style]
        if self.style_emb is None:
            raise ValueError("this network knows no styles: give labels of shape (B,), digits only")
        return self.label_emb(labels[:, 0]) + self.style_emb(labels[:, 1])

    def forward(self, x: Tensor, t: Tensor, labels: Tensor, guidance: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.cfg.base_channels).to(x.dtype)) + self._condition(
            labels
        )
        if self.guidance_mlp is not None:
            if guidance is None:
                raise ValueError("a distilled student needs its guidance strength w (B,) as an input")
            w = timestep_embedding(GUIDANCE_SCALE * guidance, self.cfg.base_channels)
            emb = emb + self.guidance_mlp(w.to(x.dtype))
        elif guidance is not None:
            raise ValueError("this network has no guidance input: guide it with guided_output instead")
        n = self.cfg.num_res_blocks
        h = self.conv_in(x)
        skips = []
        for level, down in enumerate(self.downsample):
            for block in self.down[level * n : (level + 1) * n]:
                h = block(h, emb)
                skips.append(h)
            h = down(h)  # stride-2 conv: H -> H/2 (28 -> 14 -> 7)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, up in enumerate(self.upsample):
            for block in self.up[level * n : (level + 1) * n]:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # nearest + conv: H -> 2H
        return self.conv_out(F.silu(self.norm_out(h)))
