"""Accepted digits per second of the generation flow on the default model, and where the time goes.

Runs the real flow (Prefect, a temporary server; the Great Expectations gate; an atomic publish) with the
committed params.yaml unless overridden, from a cold staging folder, and writes one JSON per setting:

    python benchmarks/generate.py --out benchmarks/results/generate-cpu.json
    python benchmarks/generate.py --out benchmarks/results/generate-batch.json --batch-sizes 25 50 100 200
    python benchmarks/generate.py --out benchmarks/results/generate-dask.json --runners threads:1 dask:1 dask:2

Orchestration = flow wall time minus the batches' own work divided by the number of workers (task start-up,
Prefect's API calls, the gate and publishing).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from diffusion.config import load_params
from flows.generate import generate_dataset, task_runner


def run_once(params, batch_size: int, runner: str, per_class: int | None, root: Path) -> dict:
    kind, workers = runner.split(":")
    cfg = params.generate.model_copy(
        update={
            "batch_size": batch_size,
            "per_class": per_class or params.generate.per_class,
            "output_root": str(root / "published"),
            "staging_dir": str(root / "staging"),
            "task_runner": params.generate.task_runner.model_copy(
                update={"kind": kind, "workers": int(workers)}
            ),
        }
    )
    start = time.perf_counter()
    result = generate_dataset.with_options(task_runner=task_runner(cfg.task_runner))(
        cfg=cfg, quality=params.quality, logical_date=datetime.now(UTC)
    )
    wall = time.perf_counter() - start
    m = result.metrics
    work = sum(m["task_seconds"].values())
    parts = {k: v / wall / int(workers) for k, v in m["task_seconds"].items()}
    return {
        "batch_size": batch_size,
        "runner": runner,
        "accepted": m["accepted"],
        "sampled": m["sampled"],
        "acceptance_rate": m["acceptance_rate"],
        "batches": m["batches"],
        "wall_seconds": wall,
        "accepted_per_second": m["accepted"] / wall,
        "share_of_wall": {**parts, "orchestration": max(0.0, 1 - work / wall / int(workers))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--runners", nargs="+", default=["threads:1"], help="kind:workers, e.g. dask:2")
    parser.add_argument("--per-class", type=int, default=None)
    args = parser.parse_args()
    params = load_params(args.params)
    rows = []
    for batch_size in args.batch_sizes or [params.generate.batch_size]:
        for runner in args.runners:
            root = Path(tempfile.mkdtemp(prefix="bench-generate-"))
            try:
                rows.append(run_once(params, batch_size, runner, args.per_class, root))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            print(json.dumps(rows[-1]))
    machine = {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine, "date": datetime.now(UTC).isoformat(), "runs": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
