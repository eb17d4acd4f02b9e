"""How a batch made of seed blocks is sampled: per-block noise, and network batches.

A batch of N = k x rows images may hold k seed blocks, each with its own generator. Two rules keep every
image a function of its block alone, whatever else shares the batch:
- `step_noise` draws block i's rows of each step's noise from generator i (so the noise a row gets does not
  depend on how many blocks there are, nor where its block sits);
- `NetworkBatches` feeds the network at most `size` images per forward pass, all of them at the same step
  (the images step together; the batch is only cut for the passes), so the network batch decides memory
  and speed, never a result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffusion.model.process import Denoiser

Generators = torch.Generator | Sequence[torch.Generator]
# callback(step index, x_t, predicted x_0): what a sampler shows of each step when asked (None: nothing)
StepCallback = Callable[[int, Tensor, Tensor], None]


def step_noise(x: Tensor, generators: Generators) -> Tensor:
    """One N(0, I) draw shaped and typed like x (B, ...), on x's device, from generators on that device.

    With one generator it is one (B, ...) draw. With k generators x is k equal blocks of B / k rows and
    block i's rows come from generator i, one (B / k, ...) draw each.
    """
    if isinstance(generators, torch.Generator):
        return torch.randn(x.shape, generator=generators, device=x.device, dtype=x.dtype)
    rows = x.shape[0] // len(generators)
    shape = (rows, *x.shape[1:])
    return torch.cat([torch.randn(shape, generator=g, device=x.device, dtype=x.dtype) for g in generators])


MIN_ROWS = 8  # no forward pass is smaller: on an AVX-512 CPU passes of 1-7 rows round otherwise (measured)


class NetworkBatches:
    """A Denoiser that passes at most `size` images through `model` at once and concatenates the outputs.

    x (B,C,H,W), t (B,), labels (B,) or (B, 2) -> (B,C,H,W), as `model` would return for the whole batch:
    each image's output depends only on its own inputs (per-image GroupNorm and attention), so cutting the
    batch changes memory and speed, not results (the generation tests check the published bytes). A pass of
    fewer than MIN_ROWS images is padded to MIN_ROWS with copies of its last row, dropped after: oneDNN picks
    other kernels for a handful of rows, whose float rounding differs (a remainder of 1-2 rows moved the
    U-Net's output by 5e-7 on an AVX-512 CPU), so a small remainder, seed block or network batch would
    otherwise change the scores of the digits it holds.
    """

    def __init__(self, model: Denoiser, size: int):
        self.model, self.size = model, size
        self.null_class, self.null_style, self.image_shape = (
            model.null_class,
            model.null_style,
            model.image_shape,
        )

    def __call__(self, x: Tensor, t: Tensor, labels: Tensor, *per_image: Tensor) -> Tensor:
        """`per_image`: further (B,) inputs cut like labels (a distilled student's guidance strength)."""
        inputs = (x, t, labels, *per_image)
        parts = zip(*(tensor.split(self.size) for tensor in inputs), strict=True)
        return torch.cat([self._pass(part) for part in parts])

    def _pass(self, part: tuple[Tensor, ...]) -> Tensor:
        rows = part[0].shape[0]
        if rows >= MIN_ROWS:
            return self.model(*part)
        pad = MIN_ROWS - rows
        return self.model(*(torch.cat([v, v[-1:].expand(pad, *v.shape[1:])]) for v in part))[:rows]
