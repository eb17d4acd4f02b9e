"""Converged fits side by side: on the CPU, one torch thread per fit and as many fits at once as there are cores.

Grading a version trains 4 classifiers per CAS seed (diffusion/quality/cas.py), and again per style: 12 fits
of a LeNet-5 at 64 digits a step for a version of one style, nearly all of `digits evaluate`'s time. Their
operations are too small for torch's intra-op threads, so a CPU sat half idle while the fits ran one after
another on all its threads. A `FitPool` runs each fit in one of `workers` spawned processes of ONE torch
thread each: on the 2-core development VM the 12 fits of the default version run 1.31x faster
(benchmarks/RESULTS.md, "Grading's fits side by side").

One thread per fit also makes every number the same whatever the machine's core count or the number of
workers: a kernel's floating-point sums run in an order set by its thread count, so a fit on two threads
ends with other weights than the same fit on one. Each fit draws from its own seeded `torch.Generator`
(weights and batch order), so which worker runs it, and in what order, changes nothing. On the CPU the
pool's workers run the fits (one worker where there is one core), or, when the pool has one worker and
torch runs one thread here already (`OMP_NUM_THREADS=1`), this process (the same numbers, no process
started), unless:
- this process is daemonic (a Dask worker, say), which may start no process: fits run here on torch's
  threads (Dask's default `OMP_NUM_THREADS=1` for its workers keeps the numbers the same; more threads do not);
- `in_process=True`: fits run here on torch's threads, as grading ran before this module (benchmarks).
On an accelerator fits run here, one after another: the device runs one fit's batches in parallel already.

Workers are started with `spawn` (a fork of a process that runs Prefect's and torch's threads is not safe),
so like every spawn start they import the calling program's main module again: a script that grades at
import time needs the `if __name__ == "__main__":` guard. Each fit's digits go to its worker as numpy
arrays through a pipe, not as tensors in shared memory. A worker ignores Ctrl-C (the caller handles it),
and ends itself when the process that started it is gone (killed without cleanup); leaving the pool on an
error stops its workers at once, the fits in flight with them.

    with FitPool(device) as pool:
        future = pool.submit(train, real_val, real_test, cfg, seed)   # Future[(real test accuracy, epochs)]
        accuracy, epochs = future.result()
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any

import numpy as np
import torch

from diffusion.config import CasConfig
from diffusion.data.labelled import Labelled

PARENT_POLL_SECONDS = 1.0


def _worker_start(parent: int) -> None:
    """A worker's initializer: one torch thread; Ctrl-C left to the caller; gone when `parent` is."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:  # a parent killed outright (SIGKILL, the OOM killer) runs no cleanup of ours
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="fit-pool-parent-watch", daemon=True).start()


def _fit(
    train: tuple[Any, Any],
    val: tuple[Any, Any],
    test: tuple[Any, Any],
    cfg: CasConfig,
    seed: int,
    device: str,
) -> tuple[float, int]:
    """One fit of the recipe in whichever process runs it: (real-test accuracy, epochs run). Each set is
    (images, labels) as tensors or numpy arrays (N, 1, 28, 28) float32 in [-1, 1] and (N,) int64."""
    from diffusion.quality.cas import Digits, converged_test_accuracy  # cas.py imports this module

    train_set, val_set, test_set = (
        Digits(torch.as_tensor(images), torch.as_tensor(labels)) for images, labels in (train, val, test)
    )
    return converged_test_accuracy(train_set, val_set, test_set, cfg, seed, device)


class _Here(Executor):
    """Runs each submitted call at once, in this process (an `Executor` with no workers). After a call
    raised an Exception, later ones are not run: their futures hold that error (what a pool's caller sees
    first is the first failure either way). Anything else raised (Ctrl-C, SystemExit, a Prefect
    cancellation) propagates from `submit` at once."""

    def __init__(self) -> None:
        self._failed: Exception | None = None

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]  # Executor's own signature
        future: Future = Future()
        if self._failed is not None:
            future.set_exception(self._failed)
            return future
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # the caller's `result()` raises it, as a worker's would
            self._failed = error
            future.set_exception(error)
        return future


def _array(values: Any) -> np.ndarray:
    """A tensor's values as a numpy array on the CPU (a copy where it is on a device or needs grad)."""
    return values.numpy(force=True) if isinstance(values, torch.Tensor) else np.asarray(values)


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class FitPool:
    """Where converged fits run (module docstring): one-thread worker processes on the CPU, else here.

    Args:
        device: where each fit trains ("cpu", "cuda", ...).
        workers: processes at most; None: torch's intra-op threads here (`torch.get_num_threads()`, which
            `OMP_NUM_THREADS` sets), at most the cores this process may use. Workers start as fits arrive
            (each holds torch and the digits of its fit: about 0.5 GB) and stop when the pool is left.
        in_process: run every fit here, one after another, on torch's threads (grading before this module).
    Raises:
        ValueError: workers < 1.
    """

    def __init__(
        self, device: torch.device | str = "cpu", workers: int | None = None, in_process: bool = False
    ) -> None:
        self.device = torch.device(device)
        self.workers = min(torch.get_num_threads(), cores()) if workers is None else workers
        if self.workers < 1:
            raise ValueError(f"FitPool: workers must be at least 1, got {self.workers}")
        side_by_side = (
            self.device.type == "cpu"
            and not in_process
            and not multiprocessing.current_process().daemon  # a daemonic process may start none
            and (self.workers > 1 or torch.get_num_threads() > 1)  # else here is one thread already
        )
        self._executor: Executor = (
            ProcessPoolExecutor(
                self.workers, torch.multiprocessing.get_context("spawn"), _worker_start, (os.getpid(),)
            )
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
        in [-1, 1], labels (N,) int64, on the CPU for a worker; only these two of each set travel to it."""
        sets: list[tuple[Any, Any]] = [(d.images, d.labels) for d in (train, real_val, real_test)]
        if self.side_by_side:  # pickled through the pipe as numpy arrays, not as shared-memory tensors
            sets = [(_array(images), _array(labels)) for images, labels in sets]
        return self._executor.submit(_fit, *sets, cfg, seed, str(self.device))

    def close(self, error: bool = False) -> None:
        """Stop the workers: once the fits in flight end, or at once with `error` (a failure or Ctrl-C is on
        its way to the caller: the fits in flight are abandoned). The pool takes no more fits."""
        if error and isinstance(self._executor, ProcessPoolExecutor):
            # Python 3.11 has no public way to stop busy workers (3.14's terminate_workers); these are ours
            for process in list((getattr(self._executor, "_processes", None) or {}).values()):
                process.terminate()
            self._executor.shutdown(wait=False, cancel_futures=True)
        else:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FitPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close(error=kind is not None)
