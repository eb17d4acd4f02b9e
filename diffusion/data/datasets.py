"""Parquet digits (local paths or fsspec URLs, one file or many) as PyTorch datasets.

The same reader serves the prepared real splits and the published synthetic shards: both
use `diffusion.data.schema.DIGITS_SCHEMA`, and columns are read by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from diffusion.data.schema import table_arrays
from diffusion.errors import DataError

_COLUMNS = ["id", "image", "label"]


def read_table(paths: str | Path | Sequence[str | Path], columns: Sequence[str] = _COLUMNS) -> pa.Table:
    """Read and concatenate Parquet files (local or any fsspec URL) keeping only `columns`."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables = []
    for path in map(str, paths):
        try:
            with fsspec.open(path, "rb") as f:
                table = pq.read_table(f, columns=list(columns))
        except FileNotFoundError:
            raise DataError(f"{path}: Parquet file not found") from None
        except (pa.ArrowInvalid, KeyError, OSError) as err:
            raise DataError(f"{path}: not a digits Parquet file ({err})") from None
        tables.append(table)
    if not tables:
        raise DataError("no Parquet files given")
    return pa.concat_tables(tables)


def load_arrays(paths: str | Path | Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read digits Parquet into (images uint8 (N, 28, 28), labels int64 (N,))."""
    return table_arrays(read_table(paths, columns=["image", "label"]))


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) in [0, 255] -> float32 (N, 1, H, W) in [-1, 1]."""
    x = torch.as_tensor(images).float()
    return (x / 127.5 - 1.0).unsqueeze(1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 1, H, W) in [-1, 1] -> uint8 (N, H, W), clamped and rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).squeeze(1).cpu().numpy()


class DigitsDataset(Dataset):
    """Decoded digits held in memory.

    Item: (image float32 (1, H, W) in [-1, 1], label int64 scalar tensor).
    The whole tensors are also exposed as `.images` (N, 1, H, W) and `.labels` (N,) for fast batching.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path]):
        images, labels = load_arrays(paths)
        self.images = to_model_range(images)
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
