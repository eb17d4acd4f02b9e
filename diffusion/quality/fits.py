"""Converged fits side by side: on the CPU, one torch thread per fit and as many fits at once as torch has threads.

Grading a version trains 4 classifiers per CAS seed (diffusion/quality/cas.py), and again per style: 12 fits
of a LeNet-5 at 64 digits a step for a version of one style, nearly all of `digits evaluate`'s time. Their
operations are too small for torch's intra-op threads (on the 2-core development VM one fit runs 1.1x faster
on two threads than on one), so a CPU sat half idle while the fits ran one after another. A `FitPool` runs
each fit in one of `workers` spawned processes of ONE torch thread each (two fits at once there take 1.26x
the time of one: 1.6x the fits per second; benchmarks/RESULTS.md, "Grading's fits side by side").

One thread per fit also makes every number the same whatever the machine's core count or the number of
workers: a kernel's floating-point sums run in an order set by its thread count, so a fit on two threads
ends with other weights than the same fit on one. Each fit draws from its own seeded `torch.Generator`
(weights and batch order), so which worker runs it, and in what order, changes nothing.

Fits run here, one after another, instead:
- on an accelerator (`device` not the CPU): the device runs one fit's batches in parallel already;
- where torch has one thread (`OMP_NUM_THREADS=1`, a 1-core machine): the same numbers as the pool's;
- in a daemonic process, which may not start others: a Dask worker (its nanny sets OMP_NUM_THREADS=1 for
  it, so the numbers again match the pool's).

Workers are started with `spawn` (a fork of a process that runs Prefect's and torch's threads is not safe),
so like every spawn start they import the calling program's main module again: a script that grades at
import time needs the `if __name__ == "__main__":` guard. Each worker sends its tensors' storage through
shared memory (torch.multiprocessing), not through a pipe.

    with FitPool(device) as pool:
        future = pool.submit(train, real_val, real_test, cfg, seed)   # Future[(real test accuracy, epochs)]
        accuracy, epochs = future.result()
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from types import TracebackType

import torch

from diffusion.config import CasConfig
from diffusion.data.labelled import Labelled


def _one_thread() -> None:
    """A worker's initializer: its fits run on one torch thread (module docstring)."""
    torch.set_num_threads(1)


def _fit(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    cfg: CasConfig,
    seed: int,
    device: str,
) -> tuple[float, int]:
    """One fit of the recipe in whichever process runs it: (real-test accuracy, epochs run)."""
    from diffusion.quality.cas import Digits, converged_test_accuracy  # cas.py imports this module

    train_set, val_set, test_set = (Digits(images, labels) for images, labels in (train, val, test))
    return converged_test_accuracy(train_set, val_set, test_set, cfg, seed, device)


class _Here(Executor):
    """Runs each submitted call at once, in this process (an `Executor` with no workers)."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]  # Executor's own signature
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # the caller's `result()` raises it, as a worker's would
            future.set_exception(error)
        return future


class FitPool:
    """Where converged fits run (module docstring): `workers` one-thread processes on the CPU, else here.

    Args:
        device: where each fit trains ("cpu", "cuda", ...).
        workers: processes at most; None: torch's intra-op threads here (`torch.get_num_threads()`, which
            `OMP_NUM_THREADS` sets). Workers start as fits arrive and stop when the pool is left.
    """

    def __init__(self, device: torch.device | str = "cpu", workers: int | None = None) -> None:
        self.device = torch.device(device)
        self.workers = torch.get_num_threads() if workers is None else workers
        if self.workers < 1:
            raise ValueError(f"FitPool: workers must be at least 1, got {self.workers}")
        side_by_side = (
            self.device.type == "cpu"
            and self.workers > 1
            and not multiprocessing.current_process().daemon  # a daemonic process may start none
        )
        self._executor: Executor = (
            ProcessPoolExecutor(self.workers, torch.multiprocessing.get_context("spawn"), _one_thread)
            if side_by_side
            else _Here()
        )

    @property
    def side_by_side(self) -> bool:
        """Whether fits run in worker processes (True) or here, one after another (False)."""
        return isinstance(self._executor, ProcessPoolExecutor)

    def submit(
        self, train: Labelled, real_val: Labelled, real_test: Labelled, cfg: CasConfig, seed: int
    ) -> Future[tuple[float, int]]:
        """Fit the recipe on `train` with `seed` (stopping on `real_val`, tested on `real_test`): a future of
        (real-test accuracy, epochs run), `cas.converged_test_accuracy`'s result. Images (N, 1, 28, 28) float
        in [-1, 1], labels (N,) int64; only these two tensors of each set travel to the worker."""
        sets = [(d.images, d.labels) for d in (train, real_val, real_test)]
        return self._executor.submit(_fit, *sets, cfg, seed, str(self.device))

    def close(self) -> None:
        """Stop the workers (waiting for the fits in flight); the pool takes no more fits."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FitPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
