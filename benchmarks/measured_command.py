"""The parent side of a timed `digits` command: run it, watch its memory, cut its wall into phases.

    cmd = run_command(argv, log, env)        # wall seconds, exit code, peak memory, spawn and exit times
    seconds = phases(marks, cmd["spawned"], cmd["exited"], task_work)

`marks` are the wall-clock marks benchmarks/timed_cli.py (the child side) writes; the phases sum to the wall.
Used by benchmarks/generate_ceiling.py and, through it, generate_student.py.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class TreeMemory:
    """The largest sum of resident memory over a process and its descendants, sampled (psutil)."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.peak, self._stop = 0, threading.Event()
        self._root, self._psutil, self._every = psutil.Process(pid), psutil, every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except self._psutil.Error:
                        continue
                self.peak = max(self.peak, total)
            except self._psutil.Error:
                return
            self._stop.wait(self._every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_command(argv: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run argv from the repository root; wall seconds, exit code, peak memory (MiB), spawn and exit times."""
    try:
        import psutil  # noqa: F401

        have_psutil = True
    except ImportError:
        have_psutil = False
    with log.open("wb") as sink:
        spawned, start = time.time(), time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env)
        tree = TreeMemory(proc.pid) if have_psutil else None
        _, status, usage = os.wait4(proc.pid, 0)
        wall, exited = time.perf_counter() - start, time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    return {
        "argv": argv,
        "exit_code": proc.returncode,
        "wall_seconds": wall,
        "spawned": spawned,
        "exited": exited,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
        "tree_peak_rss_mib": tree.stop() / 2**20 if tree else None,
        "memory_method": "os.wait4 ru_maxrss (the command's process)"
        + (" + psutil tree sum every 0.2 s" if tree else "; psutil not installed: no tree sum"),
        "log": str(log),
    }


def phases(marks: dict[str, Any], spawned: float, exited: float, task_work: float) -> dict[str, float]:
    """Seconds of each phase of the command from timed_cli's marks; they sum to the wall."""
    t = {**marks, "spawned": spawned, "exited": exited}
    rounds = t["publish_start"] - t["flow_start"]
    return {
        "startup": t["imported"] - t["spawned"],  # interpreter, imports (torch, Prefect, GX, open_clip)
        "params": t["params"] - t["imported"],  # argparse, params.yaml checked
        "prepare": t["prepare_end"] - t["params"],  # flow imports, prepare_run (server starting beside)
        "prefect_start": t["flow_start"] - t["prepare_end"],  # waiting for Prefect's server, the flow run
        "tasks": task_work,  # the task parts (in the share table)
        "task_overhead": rounds - task_work,  # Prefect task runs, planning, tallies between rounds
        "publish": t["publish_end"] - t["publish_start"],  # trim, the gate, card, manifest, publish
        "teardown": t["exited"] - t["publish_end"],  # artifacts, metrics files, interpreter exit
    }
