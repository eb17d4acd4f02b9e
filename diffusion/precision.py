"""Mixed precision: the one place that turns a `precision` setting into an autocast context.

bf16 autocast runs matmuls and convolutions in bfloat16 and keeps weights, optimiser state, losses and the
samplers' own arithmetic in float32. It pays on GPUs and on CPUs with bf16 units (Intel AMX or AVX512-BF16:
about 1.6x for training and 1.8x for sampling the default U-Net on the development VM); on other CPUs
bf16 is emulated and much slower (9x on an AVX2-only AMD EPYC), so `auto` (the default of
`hardware.precision`) picks bf16 only where the device has native bf16 units.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
PrecisionChoice = Literal["auto", "fp32", "bf16"]


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` runs bfloat16 matmuls and convolutions natively (CUDA with bf16 support; a CPU with
    AMX or AVX512-BF16, as oneDNN reports it; MPS on recent macOS)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return kind == "mps"


def resolve_precision(choice: PrecisionChoice, device: torch.device | str) -> Precision:
    """`auto` -> "bf16" where `device` has native bf16 units, else "fp32"; "fp32" and "bf16" stay."""
    if choice == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return choice


def autocast(device: torch.device | str, precision: Precision) -> torch.autocast:
    """An autocast context for `device`'s type: bfloat16 when `precision` is "bf16", a no-op for "fp32"."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
