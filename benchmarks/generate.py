"""Accepted digits per second of the generation flow on the default model, and where the time goes.

Runs the real flow (Prefect, a temporary server; the Great Expectations gate; an atomic publish) in this
process with the committed params.yaml unless overridden, from a cold staging folder, and writes one JSON
with a row per setting (task size x network batch x runner):

    python benchmarks/generate.py --out benchmarks/results/generate-cpu.json
    python benchmarks/generate.py --out benchmarks/results/generate-tasks.json --task-sizes 50 100 200 400
    python benchmarks/generate.py --out benchmarks/results/generate-net.json --network-batches 100 250 500
    python benchmarks/generate.py --out benchmarks/results/generate-dask.json --runners threads:1 dask:1 dask:2

`--task-sizes` sets generate.task_size (digits per Prefect task, whole seed blocks of generate.seed_block),
`--network-batches` hardware.network_batch (images per forward pass); neither changes a published byte.
Orchestration = flow wall time minus the tasks' own work divided by the number of workers (prepare_run,
task start-up, Prefect's API calls, the gate and publishing). The whole-command view, with the
sampler-only ceiling beside it, is benchmarks/generate_ceiling.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.config import Params, load_params  # noqa: E402
from flows.generate import generate_dataset  # noqa: E402


def run_once(
    params: Params,
    task_size: int,
    network_batch: int,
    runner: str,
    per_class: int | None,
    root: Path,
    paths: argparse.Namespace,
) -> dict:
    kind, workers = runner.split(":")
    cfg = params.generate.model_copy(
        update={
            "task_size": task_size,
            "per_class": per_class or params.generate.per_class,
            "output_root": str(root / "published"),
            "staging_dir": str(root / "staging"),
            "task_runner": params.generate.task_runner.model_copy(
                update={"kind": kind, "workers": int(workers)}
            ),
        }
    )
    if task_size % cfg.seed_block:
        raise SystemExit(f"--task-sizes: {task_size} is not whole seed blocks of {cfg.seed_block}")
    hardware = params.hardware.model_copy(update={"network_batch": network_batch})
    start = time.perf_counter()
    result = generate_dataset(
        cfg=cfg,
        hardware=hardware,
        model=paths.model,
        classifier=paths.classifier,
        train_data=paths.train,
        quality=params.quality,
        logical_date=datetime.now(UTC),
    )
    wall = time.perf_counter() - start
    m = result.metrics
    work = sum(m["task_seconds"].values())
    parts = {k: v / wall / int(workers) for k, v in m["task_seconds"].items()}
    return {
        "seed_block": cfg.seed_block,
        "task_size": task_size,
        "network_batch": network_batch,
        "precision": hardware.resolved_precision(),
        "runner": runner,
        "accepted": m["accepted"],
        "sampled": m["sampled"],
        "acceptance_rate": m["acceptance_rate"],
        "tasks": m["tasks"],
        "blocks": m["blocks"],
        "wall_seconds": wall,
        "accepted_per_second": m["accepted"] / wall,
        "share_of_wall": {**parts, "orchestration": max(0.0, 1 - work / wall / int(workers))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default="data/models/diffusion")
    parser.add_argument("--classifier", default="data/models/classifier")
    parser.add_argument("--train", default="data/prepared/train.parquet")
    parser.add_argument("--task-sizes", type=int, nargs="+", default=None, help="default: generate.task_size")
    parser.add_argument(
        "--network-batches", type=int, nargs="+", default=None, help="default: hardware.network_batch"
    )
    parser.add_argument("--runners", nargs="+", default=["threads:1"], help="kind:workers, e.g. dask:2")
    parser.add_argument("--per-class", type=int, default=None)
    args = parser.parse_args()
    params = load_params(args.params)
    rows = []
    for task_size in args.task_sizes or [params.generate.task_size]:
        for network_batch in args.network_batches or [params.hardware.network_batch]:
            for runner in args.runners:
                root = Path(tempfile.mkdtemp(prefix="bench-generate-"))
                try:
                    rows.append(
                        run_once(params, task_size, network_batch, runner, args.per_class, root, args)
                    )
                finally:
                    shutil.rmtree(root, ignore_errors=True)
                print(json.dumps(rows[-1]), flush=True)
    machine = {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine, "date": datetime.now(UTC).isoformat(), "runs": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
