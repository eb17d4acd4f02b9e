"""What benchmarks/data_scaling.py and benchmarks/few_real.py share: the recipe from params.yaml, seeded
draws, one CAS fit timed and remembered (a rerun skips it), summaries over seeds, the JSON's header,
the figure, and the rendered digits of their --smoke runs.

Randomness comes from explicit generators only: `seeded(*key)` for draws, the training seed for a fit
(`diffusion.quality.cas.train_to_convergence` builds its own generator); nothing reads torch's global RNG.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks.samplers import machine, synchronize
from diffusion.checkpoint import atomic_path, write_json_atomic
from diffusion.config import CasConfig, Params, parse_params
from diffusion.data.evaluations import json_safe
from diffusion.data.labelled import Labelled
from diffusion.judges.training import accuracy
from diffusion.quality.cas import t_interval, train_to_convergence

# The smoke runs' CAS: two short fits per set, on the CPU.
SMOKE_CAS = {"batch_size": 32, "max_epochs": 2, "patience": 1}


def load_recipe(path: Path, device: str | None, sections: dict[str, dict[str, Any]] | None = None) -> Params:
    """params.yaml with `sections` merged key by key into its top-level sections and `hardware.device`
    replaced by `device` (None: the file's), validated as every stage validates it."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for name, values in (sections or {}).items():
        raw[name] = {**(raw.get(name) or {}), **values}
    if device:
        raw["hardware"] = {**(raw.get("hardware") or {}), "device": device}
    return parse_params(raw, where=str(path))


def seeded(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (numpy's SeedSequence: each tuple its own stream)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def header(device: torch.device, smoke: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON's first keys: machine (the GPU's name, else platform.processor() or /proc/cpuinfo's model
    name), cores, torch threads, torch version, date, the command line, and the run's settings."""
    return {
        "machine": machine(device),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "smoke": smoke,
        "settings": settings,
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """The document, atomically, NaN as null."""
    write_json_atomic(path, json_safe(doc))


class Ledger:
    """Finished work by key, each with the settings that decided it, in a JSON file (None: in memory).

    `get(key, settings)` returns a record only when it was made with equal settings, so a rerun with other
    settings redoes the work instead of reusing it.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.rows: dict[str, Any] = json.loads(path.read_text()) if path and path.is_file() else {}

    def get(self, key: str, settings: Any) -> dict[str, Any] | None:
        row = self.rows.get(key)
        return row["record"] if row and row["settings"] == json.loads(json.dumps(settings)) else None

    def put(self, key: str, settings: Any, record: dict[str, Any]) -> dict[str, Any]:
        self.rows[key] = {"settings": json.loads(json.dumps(settings)), "record": record}
        if self.path:
            write_json(self.path, self.rows)
        return record


def cas_fit(
    train: Labelled, val: Labelled, test: Labelled, cfg: CasConfig, seed: int, device: torch.device
) -> dict[str, Any]:
    """One fit of the CAS recipe on `train` (early stopping on `val`, training seed `seed`), tested on
    `test`: {seed, accuracy, epochs, best_epoch, val_accuracy, seconds (wall, the test included)}."""
    synchronize(device)
    start = time.perf_counter()
    fit = train_to_convergence(train, val, cfg, seed, device)
    score = accuracy(fit.model, test)
    synchronize(device)
    return {
        "seed": seed,
        "accuracy": score,
        "epochs": fit.epochs,
        "best_epoch": fit.best_epoch,
        "val_accuracy": fit.val_accuracy,
        "seconds": time.perf_counter() - start,
    }


def fits(
    ledger: Ledger, key: str, settings: Any, seeds: Sequence[int], fit: Callable[[int], dict[str, Any]]
) -> list[dict[str, Any]]:
    """`fit(seed)` for every seed, each reused from `ledger` (as `<key>/<seed>`) when it was done before
    with equal settings; reused rows say so."""
    rows = []
    for seed in seeds:
        done = ledger.get(f"{key}/{seed}", settings)
        rows.append({**done, "reused": True} if done else ledger.put(f"{key}/{seed}", settings, fit(seed)))
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over seeds: mean, 95% Student-t interval (`t_interval`; null for one seed), and per seed the
    accuracy, epochs and seconds."""
    values = [r["accuracy"] for r in rows]
    return {
        "mean": float(np.mean(values)),
        "interval": list(t_interval(values)),
        "seeds": [r["seed"] for r in rows],
        "per_seed": values,
        "epochs": [r["epochs"] for r in rows],
        "seconds": [r["seconds"] for r in rows],
    }


def paired_points(minus: list[dict[str, Any]], plus: list[dict[str, Any]]) -> dict[str, Any]:
    """100 x (plus - minus) accuracy, paired by seed (the seeds both hold): mean, 95% interval, per seed."""
    a = {r["seed"]: r["accuracy"] for r in minus}
    points = [100.0 * (r["accuracy"] - a[r["seed"]]) for r in plus if r["seed"] in a]
    return {
        "mean": float(np.mean(points)) if points else None,
        "interval": list(t_interval(points)),
        "seeds": [r["seed"] for r in plus if r["seed"] in a],
        "per_seed": points,
    }


def new_figure(width: float, height: float) -> Any:
    """An explicit matplotlib Figure on an Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def smoke_splits(folder: Path, count: int = 600, seed: int = 0) -> Path:
    """`count` rendered digits (tests/judges_fixtures.py) split as `digits prepare` splits: the folder."""
    from diffusion.config import DataConfig
    from diffusion.data.prepare import mix, write_splits
    from diffusion.data.sources import RawDigits
    from tests.judges_fixtures import render_digits

    images, labels = render_digits(count, seed=seed)
    raw = RawDigits(images, labels, [f"rendered-{seed}-{i}" for i in range(count)], "rendered")
    write_splits(mix([("handwritten-mnist", raw)]), DataConfig(), folder)
    return folder


def on_worker_thread(measure: Callable[[], Any]) -> Any:
    """`measure()` on a new plain Python thread (where a Prefect threads runner's tasks run); its result,
    or its exception raised again here."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = measure()
        except BaseException as err:  # noqa: BLE001  (raised again on the calling thread)
            out["error"] = err

    worker = threading.Thread(target=run, daemon=True)  # Ctrl-C does not wait for the measurement
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["result"]
