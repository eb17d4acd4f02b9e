"""What a worker process loads once and keeps: the diffusion model, the scorer, the training digits.

    model, process = diffusion_model(folder, sha256, device, compile_mode)
    scorer = scorer(clip_choice, clip_sha256, classifier_folder, classifier_sha256, device)
    train = train_pixels(path, sha256, device)

Each loader is keyed by (what, its checksum, device, ...): the first call in a process loads, later calls
return the same object. Prefect's thread pool shares one process, so a lock makes concurrent first calls
load once; the networks are in eval mode and used under `torch.no_grad`, so threads share them read-only.
Each Dask worker process has a cache of its own. A kind keeps only its newest entry, so a long-lived
process holds one model per kind, whatever the number of runs. `counting_loads` records
the loads a block of code (one task) makes on its thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from diffusion.config import ClipChoice
from diffusion.data.datasets import load_arrays
from diffusion.judges.classifier import load_classifier
from diffusion.judges.clip import load_clip
from diffusion.judges.scoring import Scorer
from diffusion.model.compile import compiled
from diffusion.model.process import GaussianDiffusion
from diffusion.model.saved import load_diffusion
from diffusion.model.student import load_student
from diffusion.model.unet import UNet
from diffusion.quality.gate_columns import unit_pixels

T = TypeVar("T")
_LOCK = threading.Lock()
_CACHE: dict[str, tuple[tuple, Any]] = {}  # kind -> (key, object)
_THREAD = threading.local()  # .loads: the list `counting_loads` collects into, on this thread


@contextmanager
def counting_loads() -> Iterator[list[str]]:
    """Yield a list that collects the kinds this thread loads inside the block (not other threads')."""
    _THREAD.loads = loads = []
    try:
        yield loads
    finally:
        _THREAD.loads = None


def _cached(kind: str, key: tuple, load: Callable[[], T]) -> T:
    """The object of `kind` for `key`, loading it (once per process) when the cache holds another key."""
    with _LOCK:
        held = _CACHE.get(kind)
        if held is None or held[0] != key:
            _CACHE.pop(kind, None)  # let go of the old one before loading the new one
            _CACHE[kind] = (key, load())
            if (record := getattr(_THREAD, "loads", None)) is not None:
                record.append(kind)
        return _CACHE[kind][1]


def diffusion_model(
    folder: str,
    sha256: str,
    device: torch.device,
    compile_mode: str | None = None,
    student_steps: int | None = None,
) -> tuple[UNet, GaussianDiffusion]:
    """The EMA U-Net (eval mode, compiled when `compile_mode` is set) and its process on `device`; with
    `student_steps`, that student of the distilled folder `folder` (`diffusion.model.student`)."""

    def load() -> tuple[UNet, GaussianDiffusion]:
        if student_steps is None:
            model, process = load_diffusion(folder, device)
        else:
            model, process = load_student(folder, student_steps, device)
        return compiled(model, compile_mode), process.to(device)

    return _cached("diffusion", (folder, sha256, str(device), compile_mode, student_steps), load)


def scorer(
    clip: ClipChoice, clip_sha256: str, classifier: str, classifier_sha256: str, device: torch.device
) -> Scorer:
    """Both judges behind one Scorer on `device`, the ten prompt embeddings encoded once. It scores in its
    own fixed, padded chunks, not `hardware.network_batch`: the judges' float rounding moves with the batch
    shape (measured: the scores' bytes differ between chunks of 3 or 4 and 12)."""
    key = (clip.model, clip.pretrained, clip_sha256, classifier, classifier_sha256, str(device))
    return _cached(
        "scorer",
        key,
        lambda: Scorer(load_clip(clip.model, clip.pretrained, device), load_classifier(classifier, device)),
    )


def train_pixels(path: str, sha256: str, device: torch.device) -> torch.Tensor:
    """The real training digits as float32 (M, 784) in [0, 1] on `device`, for nearest-digit searches."""

    def load() -> torch.Tensor:
        images, _ = load_arrays(path)
        return unit_pixels(images, device)

    return _cached("train", (path, sha256, str(device)), load)


def clear() -> None:
    """Forget everything this process loaded (tests; a worker that must reload; `digits serve` after its
    start-up checks, since Prefect runs each scheduled run in a process of its own)."""
    with _LOCK:
        _CACHE.clear()
