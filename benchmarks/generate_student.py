"""`digits generate` with the distilled student against the teacher, side by side in one run (issue 16).

The target: accepted digits/s of `digits generate` with the few-step student >= 5x the teacher's, over the
whole command's wall time, on the same machine.

    python benchmarks/generate_student.py --counts 2000 --student data/models/distilled --steps 4 \
        --out benchmarks/results/generate-student-cpu.json
    python benchmarks/generate_student.py --smoke --out /tmp/student.json    # tiny random models, a minute or two

For each count N, in this order, with benchmarks/generate_ceiling.py's `measure` (the sampler-only
ceiling, then `digits generate --no-grade` as a subprocess from a cold staging folder, its phases and
peak memory):
1. the teacher: params.yaml's generate.sampler (the shipped DPM-Solver++);
2. the student: the same params with generate.sampler = {name: distilled, steps: --steps, guidance: the
   teacher's w} and `--student`, its ceiling drawn with the `--steps` student itself.
Then `speedup` = the student's accepted digits/s over the wall / the teacher's, and the same for the
sampler-only ceilings. JSON (--out): machine, date, command, settings, one row per count with both runs.
The ceilings are drawn on a worker thread, as the flow's tasks sample (since 2026-12-06 night: runs before
drew them on the main thread, a median 6 % lower on the Zen 3 VM; their `ceiling.thread` is absent).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))

from benchmarks.generate_ceiling import measure, run_header, summary  # noqa: E402
from diffusion.config import parse_params  # noqa: E402
from diffusion.model.compile import compiled  # noqa: E402
from diffusion.model.saved import load_diffusion  # noqa: E402
from diffusion.model.student import load_student  # noqa: E402


def with_student(base: dict[str, Any], steps: int, guidance: float) -> dict[str, Any]:
    """`base` (raw params) with generate.sampler the `steps`-step student at the teacher's `guidance`."""
    generate = base.get("generate", {})
    sampler = {"name": "distilled", "steps": steps, "guidance": guidance}
    return {**base, "generate": {**generate, "sampler": sampler}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", default="data/models/diffusion", help="the teacher")
    parser.add_argument("--student", default="data/models/distilled")
    parser.add_argument("--steps", type=int, default=4, help="the student's steps")
    parser.add_argument("--classifier", default="data/models/classifier")
    parser.add_argument("--train", default="data/prepared/train.parquet")
    parser.add_argument("--counts", type=int, nargs="+", default=[2000])
    parser.add_argument("--ceiling-images", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the published versions and logs")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny random models, a tiny student (a minute or two)"
    )
    args = parser.parse_args()
    args.plain, args.prefect_home = False, None  # what generate_ceiling.measure reads besides the above

    work = args.work or Path(tempfile.mkdtemp(prefix="generate-student-"))
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(args.params.read_text()) or {}
    if args.smoke:  # generate_ceiling's tiny models and params, and a student distilled from them
        from benchmarks.generate_ceiling import smoke_setup
        from tests.generate_fixtures import distill_tiny_student

        base, paths = smoke_setup(work, base)
        args.model, args.classifier, args.train = paths["model"], paths["classifier"], paths["train"]
        args.student = distill_tiny_student(paths, work / "student", work / "resume")
        args.counts, args.ceiling_images, args.steps = [20], 20, 2
        args.prefect_home = work / "prefect-home"
    teacher_sampler = parse_params(base, where=str(args.params)).generate.sampler
    student_base = with_student(base, args.steps, teacher_sampler.guidance)
    params = parse_params(student_base, where=str(args.params))  # the student's params, checked
    device = torch.device(params.hardware.device)
    teacher, process = load_diffusion(args.model, device)  # compiled as a worker compiles them
    teacher = compiled(teacher, params.hardware.compile)
    student, student_process = load_student(args.student, args.steps, device)
    student = compiled(student, params.hardware.compile)

    rows = []
    for count in args.counts:
        a = measure(count, base, teacher, process, args, work)
        print("teacher", summary(a), flush=True)
        b = measure(count, student_base, student, student_process, args, work, student=args.student)
        print("student", summary(b), flush=True)
        rows.append(
            {
                "count": count,
                "teacher": a,
                "student": b,
                "speedup": b["accepted_per_s"] / a["accepted_per_s"],
                "ceiling_speedup": b["ceiling"]["images_per_s"] / a["ceiling"]["images_per_s"],
            }
        )
        print(
            f"{count} digits: student {rows[-1]['speedup']:.2f}x the teacher over the wall "
            f"(sampler-only {rows[-1]['ceiling_speedup']:.2f}x)",
            flush=True,
        )
    doc = {
        **run_header(device, args.smoke),
        "setting": {
            "hardware": params.hardware.model_dump(mode="json"),
            "precision": params.hardware.resolved_precision(),
            "teacher_sampler": teacher_sampler.model_dump(mode="json"),
            "student_sampler": params.generate.sampler.model_dump(mode="json"),
            "teacher": args.model,
            "student": args.student,
        },
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
