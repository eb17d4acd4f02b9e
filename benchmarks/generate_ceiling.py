"""`digits generate` against the sampler-only ceiling, side by side in one run (the CPU speed target).

The target: on this CPU, the flow's accepted digits/s over the whole command's wall time >= 85 % of the
sampler-only ceiling x the acceptance rate, at 2,000 and at 20,000 digits; peak resident memory at 60,000
within 1.2x of that at 2,000; no part but sampling above 10 % of the wall.

    python benchmarks/generate_ceiling.py --counts 2000 20000 --tag cpu       # -> benchmarks/results/
    python benchmarks/generate_ceiling.py --counts 60000 --tag cpu-60k
    python benchmarks/generate_ceiling.py --smoke --out /tmp/ceiling.json    # tiny random models, seconds

For each count N (generate.per_class = N / 10), in this order:
1. ceiling, in this process: the diffusion checkpoint loaded once (as a worker loads it, compiled when
   hardware.compile is set), then the shipped sampler (params' generate.sampler, hardware.resolved_precision())
   through `diffusion.model.samplers.sample` on class-balanced batches of hardware.network_batch images,
   network batches of the same size, each from its own seeded CPU generator: one warm-up batch untimed,
   then --ceiling-images (rounded up to whole batches) timed, on a worker thread as the flow's tasks
   sample. images/s.
2. the command, as a subprocess (benchmarks/measured_command.py): `digits generate --params <a copy of
   --params with per_class, output_root and staging_dir set, the latter two in a temporary folder> --model
   --classifier --train --metrics`, cold (nothing staged). It runs through benchmarks/timed_cli.py, which is
   `digits`' own entry point plus phase marks and the task timings kept in the metrics file (`--plain` runs
   `<venv>/bin/digits` itself: no phases, and task parts only if the CLI writes them). Wall time from spawn to
   exit. Peak resident memory: the kernel's high-water mark of the command's process (`os.wait4` rusage
   ru_maxrss, the largest of that process and the children it reaped) and, when psutil is installed, the
   largest sum of resident memory over its process tree sampled every 0.2 s (Prefect's temporary server
   included).
3. the ceiling again (the machine's speed drifts), its images/s the mean of the two (both are kept);
4. figures: accepted digits/s over the wall; ratio = that / (ceiling x acceptance rate); each task part
   (load, sample, score, encode, write: task seconds / task-runner workers) as a share of the wall and the
   rest (wall minus the task parts); the rest split into phases from the marks: startup (interpreter and
   imports), params, prepare (prepare_run), prefect_start (server and flow run up), task_overhead (the
   rounds' wall minus the task parts), publish (gate and publish), teardown (artifacts, files, exit).
   Then the targets: ratio >= 0.85, every part but sample <= 10 % of the wall, and the largest count's peak
   memory / the smallest's (<= 1.2 when they are 60,000 and 2,000).

Writes benchmarks/results/generate-ceiling-<tag>.json (or --out) with the machine (lscpu's model name),
date, torch version, command line and every figure, and prints one line per count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import on_worker_thread  # noqa: E402
from benchmarks.compile_sampler import cpu_model_name, synchronize  # noqa: E402
from benchmarks.measured_command import phases, run_command  # noqa: E402
from diffusion.config import HardwareConfig, SamplerConfig, parse_params  # noqa: E402
from diffusion.model.compile import compiled  # noqa: E402
from diffusion.model.samplers import sample  # noqa: E402
from diffusion.model.saved import load_diffusion  # noqa: E402
from diffusion.quality.samples import balanced_labels  # noqa: E402

TASK_PARTS = ("load", "sample", "score", "encode", "write")
TARGET_RATIO, TARGET_SHARE, TARGET_MEMORY = 0.85, 0.10, 1.2


# --------------------------------------------------------------------------- the ceiling
def ceiling(
    model,
    process,
    hardware: HardwareConfig,
    sampler: SamplerConfig,
    images: int,
    seed: int = 0,
    on_thread: bool = True,
) -> dict[str, Any]:
    """Sampler-only images/s: network_batch-sized balanced batches, one warm-up batch, then `images`; on a
    worker thread, where the flow's tasks sample (`on_thread`; False: on the calling thread). On the 2-core
    Zen 3 VM a worker thread drew a median 6 % more images/s than the main thread (task_thread_speed.py,
    0.97-1.15x per round), and the flow's tasks outran a main-thread ceiling (RESULTS.md, 2026-12-06)."""
    if on_thread:
        return {
            **on_worker_thread(lambda: ceiling(model, process, hardware, sampler, images, seed, False)),
            "thread": "worker",
        }
    device, precision = torch.device(hardware.device), hardware.resolved_precision()
    batch = hardware.network_batch
    labels = balanced_labels(batch)

    def one(i: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed + i)  # on the CPU, as the flow's seed blocks
        sample(model, process, labels, sampler, generator, device, batch, precision)
        synchronize(device)
        return time.perf_counter() - start

    warm = one(0)
    batches = max(1, math.ceil(images / batch))
    seconds = sum(one(i + 1) for i in range(batches))
    return {
        "images": batches * batch,
        "network_batch": batch,
        "precision": precision,
        "sampler": sampler.model_dump(mode="json"),
        "warmup_seconds": warm,
        "seconds": seconds,
        "images_per_s": batches * batch / seconds,
        "thread": "calling",
    }


# --------------------------------------------------------------------------- the command
def params_for(base: dict[str, Any], per_class: int, root: Path) -> dict[str, Any]:
    """`base` (raw params) with per_class set and the output root and staging folder under `root`."""
    generate = {
        **base.get("generate", {}),
        "per_class": per_class,
        "output_root": str(root / "published"),
        "staging_dir": str(root / "staging"),
    }
    return {**base, "generate": generate}


def task_shares(
    task_seconds: dict[str, float], workers: int, wall: float
) -> tuple[dict[str, float], dict[str, float]]:
    """The flow's task parts (TASK_PARTS, from its metrics' `task_seconds`) as wall seconds (task seconds /
    task-runner workers) and as shares of the command's `wall`, plus the rest of the wall; ({}, {}) when
    the metrics carry no task timings."""
    if not task_seconds:
        return {}, {}
    parts = {k: task_seconds.get(k, 0.0) / workers for k in TASK_PARTS}
    share = {k: v / wall for k, v in parts.items()} | {"rest": 1 - sum(parts.values()) / wall}
    return parts, share


def figures(
    count: int,
    top: dict[str, Any],
    cmd: dict[str, Any],
    m: dict[str, Any],
    workers: int,
    marks: dict[str, Any] | None,
) -> dict[str, Any]:
    """Every figure of one count: the command (`run_command`'s dict, its metrics file `m` and its phase
    marks, None without them) against the ceiling `top`, task seconds over `workers`, and the targets."""
    wall = cmd["wall_seconds"]
    parts, share = task_shares(m.get("task_seconds") or {}, workers, wall)
    work_seconds = sum(parts.values())
    accepted_per_s = m["accepted"] / wall
    expected = top["images_per_s"] * m["acceptance_rate"]
    row: dict[str, Any] = {
        "count": count,
        "per_class": count // 10,
        "ceiling": top,
        "command": {k: v for k, v in cmd.items() if k not in ("spawned", "exited")},
        "metrics": m,
        "accepted": m["accepted"],
        "acceptance_rate": m["acceptance_rate"],
        "accepted_per_s": accepted_per_s,
        "ceiling_accepted_per_s": expected,
        "ratio": accepted_per_s / expected,
        "task_seconds": parts or None,
        "share_of_wall": share or None,
    }
    if marks is not None and parts:
        phase = phases(marks, cmd["spawned"], cmd["exited"], work_seconds)
        row["phase_seconds"] = phase
        row["phase_share"] = {k: v / wall for k, v in phase.items()}
        row["task_calls"] = len(marks["tasks"])
    # every part but sampling: the task parts, then the phases of the rest (or the rest whole, without marks)
    over = {k: v for k, v in share.items() if k != "sample"}
    if "phase_share" in row:
        over = {k: v for k, v in over.items() if k != "rest"}
        over |= {k: v for k, v in row["phase_share"].items() if k != "tasks"}
    row["targets"] = {
        "ratio_at_least_0.85": row["ratio"] >= TARGET_RATIO,
        # None: no task timings in the metrics file (--plain), so the parts are unknown
        "parts_over_10_percent": sorted(k for k, v in over.items() if v > TARGET_SHARE) if share else None,
    }
    return row


def measure(
    count: int,
    base: dict[str, Any],
    model,
    process,
    args: argparse.Namespace,
    work: Path,
    student: str | None = None,
) -> dict[str, Any]:
    """The ceiling, then the command, for `count` digits; every figure of one count. With `student` (the
    folder of the distilled students; `model` is then the student the params' sampler names), the command
    samples with it (`--student`)."""
    if count % 10:
        raise SystemExit(f"--counts: {count} is not 10 x a per-class count")
    root = work / (f"n{count}-student" if student else f"n{count}")
    root.mkdir(parents=True)
    raw = params_for(base, count // 10, root)
    params = parse_params(raw, where=f"params for {count}")
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"[{count}] ceiling ...", flush=True)
    top = ceiling(model, process, params.hardware, params.generate.sampler, args.ceiling_images)

    # --no-grade: the engine against its sampler's ceiling; grading a version is measured on its own
    flags = ["--params", str(root / "params.yaml"), "--no-grade", "--model", args.model]
    flags += ["--classifier", args.classifier, "--train", args.train, "--metrics", str(root / "metrics.json")]
    flags += ["--student", student] if student else []
    python = Path(sys.executable)
    if args.plain:
        argv = [str(python.with_name("digits")), "generate", *flags]
    else:
        argv = [str(python), "-m", "benchmarks.timed_cli", str(root / "marks.json"), "generate", *flags]
    env = dict(os.environ)
    if args.prefect_home:
        env["PREFECT_HOME"] = str(args.prefect_home)
    print(f"[{count}] {shlex.join(argv)}", flush=True)
    cmd = run_command(argv, root / "command.log", env)
    if cmd["exit_code"] != 0:
        tail = (root / "command.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"[{count}] the command failed ({cmd['exit_code']}):\n{tail}")

    # The machine's speed drifts (15 % within minutes on the 2-core VMs): the ceiling is drawn again after
    # the command, and the ratio is taken against the mean of both.
    print(f"[{count}] ceiling again ...", flush=True)
    after = ceiling(model, process, params.hardware, params.generate.sampler, args.ceiling_images)
    same = ("network_batch", "precision", "sampler", "thread")  # the settings, the same both times
    top = {
        **{k: top[k] for k in same},
        "images_per_s": (top["images_per_s"] + after["images_per_s"]) / 2,  # the mean: what ratios divide by
        "before": {k: v for k, v in top.items() if k not in same},  # images, seconds, warm-up, images/s
        "after": {k: v for k, v in after.items() if k not in same},
    }
    metrics = json.loads((root / "metrics.json").read_text())
    marks_file = root / "marks.json"
    marks = json.loads(marks_file.read_text()) if marks_file.is_file() else None
    row = figures(count, top, cmd, metrics, params.generate.task_runner.workers, marks)
    if not args.keep:
        shutil.rmtree(root / "published", ignore_errors=True)
        shutil.rmtree(root / "staging", ignore_errors=True)
    return row


def summary(row: dict[str, Any]) -> str:
    """One line: the flow against the ceiling, memory, and the biggest shares of the wall."""
    shares = row.get("phase_share") or row.get("share_of_wall") or {}
    sample = (row.get("share_of_wall") or {}).get("sample")
    top = sorted(((v, k) for k, v in shares.items() if k not in ("tasks", "rest")), reverse=True)[:3]
    parts = ", ".join(f"{k} {v:.0%}" for v, k in top)
    return (
        f"{row['count']:>6} digits: {row['accepted_per_s']:.2f} accepted/s over {row['command']['wall_seconds']:.1f} s"
        f" = {row['ratio']:.2f} x ceiling ({row['ceiling']['images_per_s']:.2f} images/s x acceptance "
        f"{row['acceptance_rate']:.3f}); peak RSS {row['command']['peak_rss_mib']:.0f} MiB; "
        f"sample {sample:.0%} of the wall; then {parts}"
        if sample is not None
        else f"{row['count']:>6} digits: {row['accepted_per_s']:.2f} accepted/s, ratio {row['ratio']:.2f}"
    )


def run_header(device: torch.device, smoke: bool) -> dict[str, Any]:
    """The JSON's first keys: machine (the CPU's model name or the card's), cores, torch, date, command."""
    return {
        "machine": cpu_model_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "smoke": smoke,
    }


# --------------------------------------------------------------------------- smoke mode
def smoke_setup(work: Path, base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Tiny random-weight models (tests/generate_fixtures.py) and params that use them, the filter off;
    the params' seed block and task size, so the run is cut into work as a real one is."""
    from tests.generate_fixtures import tiny_generate, write_tiny_models

    paths = write_tiny_models(work / "models")
    sizes = {k: base["generate"][k] for k in ("seed_block", "task_size") if k in base.get("generate", {})}
    cfg = tiny_generate(
        paths,
        work,
        filter={"min_clip_margin": None, "min_classifier_prob": None, "require_pred_match": False},
        **sizes,
    )
    return {**base, "generate": cfg.model_dump(mode="json")}, paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", default="data/models/diffusion")
    parser.add_argument("--classifier", default="data/models/classifier")
    parser.add_argument("--clip", default=None, help="generate.clip.pretrained (default: the params')")
    parser.add_argument("--train", default="data/prepared/train.parquet")
    parser.add_argument(
        "--counts", type=int, nargs="+", default=None, help="digits, 10 x per_class (default: 2000 20000)"
    )
    parser.add_argument(
        "--ceiling-images", type=int, default=None, help="timed, after one warm-up batch (default: 1000)"
    )
    parser.add_argument("--tag", default="cpu", help="benchmarks/results/generate-ceiling-<tag>.json")
    parser.add_argument("--out", type=Path, default=None, help="write here instead")
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary one)")
    parser.add_argument("--prefect-home", type=Path, default=None, help="PREFECT_HOME of the command")
    parser.add_argument("--plain", action="store_true", help="run <venv>/bin/digits itself (no phases)")
    parser.add_argument("--keep", action="store_true", help="keep the published versions and logs")
    parser.add_argument("--note", default="")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny random models (default: 20 and 40 digits, 20 ceiling images)",
    )
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="generate-ceiling-"))
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(args.params.read_text()) or {}
    if args.smoke:
        base, paths = smoke_setup(work, base)
        args.model, args.classifier, args.train = paths["model"], paths["classifier"], paths["train"]
        args.counts, args.ceiling_images = args.counts or [20, 40], args.ceiling_images or 20
        args.tag = "smoke" if args.tag == parser.get_default("tag") else args.tag
        args.prefect_home = args.prefect_home or work / "prefect-home"
    elif args.clip:
        generate = base.get("generate", {})
        clip = {**generate.get("clip", {}), "pretrained": args.clip}
        base = {**base, "generate": {**generate, "clip": clip}}
    args.counts, args.ceiling_images = args.counts or [2000, 20000], args.ceiling_images or 1000
    params = parse_params(base, where=str(args.params))
    device = torch.device(params.hardware.device)
    model, process = load_diffusion(args.model, device)
    model = compiled(model, params.hardware.compile)

    rows = []
    for count in args.counts:
        rows.append(measure(count, base, model, process, args, work))
        print(summary(rows[-1]), flush=True)
    small, large = min(rows, key=lambda r: r["count"]), max(rows, key=lambda r: r["count"])
    memory_ratio = large["command"]["peak_rss_mib"] / small["command"]["peak_rss_mib"]
    doc = {
        **run_header(device, args.smoke),
        "note": args.note,
        "setting": {
            "hardware": params.hardware.model_dump(mode="json"),
            "precision": params.hardware.resolved_precision(),
            "generate": {
                k: params.generate.model_dump(mode="json")[k]
                for k in ("sampler", "seed_block", "task_size", "best_of_n", "filter", "task_runner")
            },
            "model": args.model,
        },
        "runs": rows,
        "memory": {
            "smallest_count": small["count"],
            "largest_count": large["count"],
            "peak_rss_ratio": memory_ratio,
            f"within_{TARGET_MEMORY}x": memory_ratio <= TARGET_MEMORY,
        },
    }
    out = args.out or REPO / "benchmarks" / "results" / f"generate-ceiling-{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"peak RSS {large['count']} / {small['count']} digits: {memory_ratio:.2f}x; wrote {out}", flush=True
    )
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
