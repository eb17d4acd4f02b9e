"""Mixed precision: the one place that turns a `precision` setting into an autocast context.

bf16 autocast runs matmuls and convolutions in bfloat16 and keeps weights, optimiser state, losses and the
samplers' own arithmetic in float32. It pays on GPUs and on CPUs with bf16 units (Intel AMX or AVX512-BF16:
about 1.6x for training and 1.8x for sampling the default U-Net on the development VM); on other CPUs
bf16 is emulated and slower, so choose fp32 there.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]


def autocast(device: torch.device | str, precision: Precision) -> torch.autocast:
    """An autocast context for `device`'s type: bfloat16 when `precision` is "bf16", a no-op for "fp32"."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
