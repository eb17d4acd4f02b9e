"""Does the sampler run slower inside a Prefect task than outside it? (issue 14: the in-task shortfall)

In the 2026-12-06 engine run the U-Net drew 34-35 images/s inside the flow's tasks against a sampler-only
ceiling of 37-51 in the benchmark's own process (benchmarks/RESULTS.md). A task samples on a worker thread
of Prefect's threads runner, beside the temporary API server subprocess, Prefect's log and event workers and
the progress bar. This measures the same sampler-only ceiling (`generate_ceiling.ceiling`: the shipped
sampler on class-balanced network batches, one warm-up batch untimed) in three places of one process, with
the temporary API server that `digits generate` starts up the whole time:
  main     the main thread;
  thread   a plain Python thread (no Prefect);
  prefect  a Prefect task, submitted from a flow on `ThreadPoolTaskRunner(max_workers=1)`, as the flow's are.
Round r runs the three in the r-th of their six orders (--rounds a multiple of 6 uses each order alike),
so neither the VM's drift within a round nor what one condition leaves running for the next (Prefect's log
and event workers after a flow run) favours a condition. JSON: machine, date, command, settings, images/s
per round and condition, each condition's mean relative to `main`, and the per-round ratios to `main`
(median, min, max): the VM's drift shows in their spread.

    python benchmarks/task_thread_speed.py --rounds 6 --out benchmarks/results/task-thread-speed-cpu.json
    python benchmarks/task_thread_speed.py --smoke --out /tmp/task-thread.json     # tiny random model
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import on_worker_thread, write_json  # noqa: E402
from benchmarks.generate_ceiling import ceiling, run_header, smoke_setup  # noqa: E402
from diffusion.config import parse_params  # noqa: E402
from diffusion.model.compile import compiled  # noqa: E402
from diffusion.model.saved import load_diffusion  # noqa: E402
from flows.server import temporary_api  # noqa: E402

CONDITIONS = ("main", "thread", "prefect")


def in_prefect_task(measure: Any) -> dict[str, Any]:
    """`measure()` as a Prefect task submitted from a flow on a one-worker threads runner; its result."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(name="sampler-ceiling", cache_policy=NO_CACHE)
    def measured() -> dict[str, Any]:
        return measure()

    @flow(name="task-thread-speed", task_runner=ThreadPoolTaskRunner(max_workers=1))
    def one() -> dict[str, Any]:
        return measured.submit().result()

    return one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", default="data/models/diffusion")
    parser.add_argument("--images", type=int, default=500, help="timed images per measurement")
    parser.add_argument("--rounds", type=int, default=6, help="a multiple of 6 runs every order alike")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, 2 rounds of 8 images")
    args = parser.parse_args()

    base = yaml.safe_load(args.params.read_text()) or {}
    work = Path(tempfile.mkdtemp(prefix="task-thread-")) if args.smoke else None
    try:
        if work is not None:
            base, paths = smoke_setup(work, base)
            base = {**base, "hardware": {**base.get("hardware", {}), "network_batch": 4}}
            args.model, args.images, args.rounds = paths["model"], 8, 2
        doc = measure_places(base, args)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, doc)
    means = doc["mean_images_per_s"]
    print("mean images/s: " + ", ".join(f"{k} {v:.1f}" for k, v in means.items()) + f"; wrote {args.out}")


def measure_places(base: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The rounds of the three measurements under the params `base`; the JSON document."""
    params = parse_params(base, where=str(args.params))
    hardware, sampler = params.hardware, params.generate.sampler
    device = torch.device(hardware.device)
    orders = list(itertools.permutations(CONDITIONS))

    with temporary_api() as api:  # the server `digits generate` runs beside its tasks, up throughout
        model, process = load_diffusion(args.model, device)
        model = compiled(model, hardware.compile)

        def measure() -> dict[str, Any]:
            return ceiling(model, process, hardware, sampler, args.images, on_thread=False)

        places = {
            "main": measure,
            "thread": lambda: on_worker_thread(measure),
            "prefect": lambda: in_prefect_task(measure),
        }
        rounds: list[dict[str, float]] = []
        with api.ready():
            for r in range(args.rounds):
                row = {name: places[name]()["images_per_s"] for name in orders[r % len(orders)]}
                rounds.append({name: row[name] for name in CONDITIONS})
                print(f"round {r}: " + ", ".join(f"{k} {v:.1f}" for k, v in rounds[-1].items()), flush=True)

    means = {name: statistics.fmean(row[name] for row in rounds) for name in CONDITIONS}
    ratios = {name: [row[name] / row["main"] for row in rounds] for name in CONDITIONS if name != "main"}
    return {
        **run_header(device, args.smoke),
        "setting": {
            "model": args.model,
            "sampler": sampler.model_dump(mode="json"),
            "network_batch": hardware.network_batch,
            "precision": hardware.resolved_precision(),
            "images_per_measurement": args.images,
        },
        "rounds": rounds,
        "orders": [list(orders[r % len(orders)]) for r in range(args.rounds)],
        "mean_images_per_s": means,
        "relative_to_main": {name: means[name] / means["main"] for name in CONDITIONS},
        "per_round_ratio_to_main": {
            name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in ratios.items()
        },
    }


if __name__ == "__main__":
    main()
