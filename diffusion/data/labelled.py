"""Digits in memory, as every trainer and measure reads them: the `Labelled` protocol.

A `DigitsDataset` fits, and so do the in-memory subsets that CAS and the per-style grading cut from it
(`diffusion.quality.cas.Digits`, `diffusion.quality.styles.Styled`). This module imports nothing of ours.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Labelled(Protocol):
    """Digits in memory: `images` float (N, 1, H, W) in [-1, 1], `labels` int64 (N,) digits 0-9."""

    images: Tensor
    labels: Tensor
