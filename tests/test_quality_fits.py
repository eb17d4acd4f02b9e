"""Converged fits side by side (diffusion/quality/fits.py): worker processes of one torch thread each give the
numbers of the same fits run here on one thread, whatever the number of workers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait
from pathlib import Path

import pytest
import torch

from diffusion.config import CasConfig
from diffusion.data.datasets import DigitsDataset
from diffusion.errors import DataError
from diffusion.quality import fits
from diffusion.quality.cas import Digits, cas
from diffusion.quality.fits import FitPool
from tests.judges_fixtures import digits_split, one_thread, real_splits  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = CasConfig(batch_size=16, lr=3e-3, max_epochs=4, patience=2, seeds=(0, 1, 2))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DigitsDataset]:
    """Rendered digits standing in for the real splits."""
    return real_splits(tmp_path_factory.mktemp("real"), 200, 60, 100)


def test_fits_side_by_side_give_the_numbers_of_one_thread_here(real, tmp_path: Path) -> None:
    synthetic = digits_split(tmp_path, "synthetic", 120, 5)
    splits = (real["train"], real["val"], real["test"])
    assert torch.get_num_threads() == 1  # the fixture's: fits here run on one thread, as the workers' do
    runs = {}
    for workers in (1, 2, 3):
        with FitPool("cpu", workers) as pool:
            assert pool.side_by_side == (workers > 1)  # one worker of one thread: here is one thread already
            if (
                pool.side_by_side
            ):  # each worker's torch runs one thread (two make other weights at MNIST's size)
                assert pool._executor.submit(torch.get_num_threads).result() == 1
            runs[workers] = cas(synthetic, *splits, QUICK, pool=pool).runs
    assert runs[2] == runs[1] and runs[3] == runs[1]  # every number, every seed, to the last bit
    assert [r["seed"] for r in runs[1]] == [0, 1, 2] and all("augmentation_gain" in r for r in runs[1])
    assert len({r["cas_accuracy"] for r in runs[1]}) > 1  # the seeds' fits differ: a real comparison
    assert torch.get_num_threads() == 1  # the workers' one thread is theirs, not this process's


def test_one_core_of_several_threads_still_fits_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker where torch runs two threads here: a process of one thread fits, not this one."""
    torch.set_num_threads(2)
    try:
        with FitPool("cpu", workers=1) as pool:
            assert pool.side_by_side and pool._executor.submit(torch.get_num_threads).result() == 1
        assert not FitPool("cpu", workers=1, in_process=True).side_by_side  # grading before: here, 2 threads
        monkeypatch.setattr(fits, "cores", lambda: 1)  # a process allowed one core: one worker, of one thread
        pool = FitPool("cpu")
        assert pool.workers == 1 and pool.side_by_side
        pool.close()
    finally:
        torch.set_num_threads(1)


def test_a_fit_that_fails_raises_from_its_result_and_the_pool_goes_on(real) -> None:
    empty = Digits(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))
    with FitPool("cpu", workers=2) as pool:
        failed = pool.submit(empty, real["val"], real["test"], QUICK, seed=0)
        with pytest.raises(DataError, match="at least one training digit"):
            failed.result()
        accuracy, epochs = pool.submit(real["train"], real["val"], real["test"], QUICK, seed=0).result()
    assert 0.0 <= accuracy <= 1.0 and 1 <= epochs <= QUICK.max_epochs


def test_in_process_a_failed_fit_stops_the_rest_and_ctrl_c_stops_at_once(real) -> None:
    empty = Digits(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))
    pool = FitPool("cpu", workers=1)
    assert not pool.side_by_side
    first = pool.submit(empty, real["val"], real["test"], QUICK, seed=0)
    later = pool.submit(real["train"], real["val"], real["test"], QUICK, seed=0)  # not run: already failed
    for future in (first, later):
        with pytest.raises(DataError, match="at least one training digit"):
            future.result()

    def interrupted() -> None:  # Ctrl-C while a fit runs here
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # out of submit itself, not stored in a future
        FitPool("cpu", workers=1)._executor.submit(interrupted)


def test_an_error_in_the_pool_stops_its_workers_at_once(real) -> None:
    long = QUICK.model_copy(update={"max_epochs": 10_000, "patience": 10_000})  # would run for hours
    with pytest.raises(RuntimeError, match="the caller failed"), FitPool("cpu", workers=2) as pool:
        pool.submit(real["train"], real["val"], real["test"], long, seed=0)
        processes = list(pool._executor._processes.values())
        time.sleep(1.0)
        raise RuntimeError("the caller failed")
    wait([process.sentinel for process in processes], timeout=30)  # ended (without reaping them here)
    assert all(process.exitcode is not None for process in processes)


def _side_by_side_in_a_daemon(answer: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pool = FitPool("cpu", workers=2)
    answer.put(pool.side_by_side)
    pool.close()


def _start_a_worker_and_wait(answer: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pool = FitPool("cpu", workers=2)
    answer.put(pool._executor.submit(os.getpid).result())  # a worker's pid, then wait to be killed
    time.sleep(600)


def test_fits_run_here_off_the_cpu_or_in_a_daemonic_process() -> None:
    assert not FitPool("meta", workers=4).side_by_side  # an accelerator runs a fit's batches itself
    with pytest.raises(ValueError, match="workers must be at least 1"):
        FitPool("cpu", workers=0)
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    daemon = context.Process(target=_side_by_side_in_a_daemon, args=(answer,), daemon=True)
    daemon.start()
    assert answer.get(timeout=120) is False  # a Dask worker, say: it may start no processes
    daemon.join(timeout=60)
    assert daemon.exitcode == 0


def _running(pid: int) -> bool:
    """Whether process `pid` runs: it exists and is no zombie (an ended child its new parent has not reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_a_worker_ends_when_the_process_that_started_it_is_killed() -> None:
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    parent = context.Process(target=_start_a_worker_and_wait, args=(answer,))
    parent.start()
    worker = answer.get(timeout=120)
    try:
        assert _running(worker)
        os.kill(parent.pid, signal.SIGKILL)  # no cleanup runs in the parent
        parent.join(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _running(worker):
            time.sleep(0.2)
        assert not _running(worker)  # it noticed within its poll and left
    finally:
        if _running(worker):
            os.kill(worker, signal.SIGKILL)  # a failed run leaves no idle worker behind
