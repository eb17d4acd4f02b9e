"""Time `make run` end to end on a fresh clone, stage by stage.

    python benchmarks/pipeline_timing.py --out benchmarks/results/make-run-cpu.json [--clone /tmp/fresh]

Clones the repository's HEAD into a new folder (or uses `--clone`, which must not exist yet), runs
`make run` there (the virtualenv install, then `dvc repro`), and stamps each line of its output with the
seconds since the start. A stage's time runs from its "Running stage" line to the next stage's (the last
to the end); the install is everything before the first stage. The JSON also holds the run's
`metrics/*.json`, so a fresh clone's figures can be compared with the committed ones. `--from-log LOG`
runs nothing: it reads the figures from an earlier run's log and its --clone (exit status unknown, null).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

STAGE = re.compile(r"Running stage '([\w@.-]+)'")


def timed_run(command: list[str], cwd: Path, log: Path) -> tuple[int, list[tuple[float, str]]]:
    """Run `command`, copy its output to `log`; return its exit code and the (seconds, stage) starts."""
    starts: list[tuple[float, str]] = []
    start = time.perf_counter()
    with (
        log.open("w") as sink,
        subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - start
            sink.write(f"{now:8.1f} {line}")
            if match := STAGE.search(line):
                starts.append((now, match.group(1)))
        code = proc.wait()
    starts.append((time.perf_counter() - start, "<end>"))
    return code, starts


def read_log(log: Path) -> list[tuple[float, str]]:
    """The (seconds, stage) starts of a `timed_run` log, and its last line's seconds as the end (the exit
    itself is not logged: the total is short by the time from the last line to the exit)."""
    starts: list[tuple[float, str]] = []
    last = 0.0
    for line in log.read_text().split("\n"):  # not splitlines: progress bars hold other line breaks
        head = line[:8].strip()
        if not head:
            continue
        last = float(head)
        if match := STAGE.search(line):
            starts.append((last, match.group(1)))
    return [*starts, (last, "<end>")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clone", type=Path, default=Path("/tmp/digits-fresh-clone"))
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument(
        "--from-log",
        type=Path,
        default=None,
        help="no run: the figures from this earlier run's log (its --out .log) and its --clone",
    )
    args = parser.parse_args()
    if importlib.util.find_spec("torch") is None:  # needed after the run, for the machine's name
        raise SystemExit("run this with the project's Python (.venv/bin/python): torch is not importable")
    if args.from_log:
        code, starts = None, read_log(args.from_log)  # the log does not hold the exit status
    else:
        subprocess.run(["git", "clone", "-q", str(args.source), str(args.clone)], check=True)
        code, starts = timed_run(["make", "run"], args.clone, args.out.with_suffix(".log"))
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=args.clone, capture_output=True, text=True, check=True
    ).stdout.strip()
    stages = {name: round(nxt - at, 1) for (at, name), (nxt, _) in zip(starts, starts[1:], strict=False)}
    metrics = {p.stem: json.loads(p.read_text()) for p in sorted((args.clone / "metrics").glob("*.json"))}
    import torch  # after the run: the timed `make run` shares the machine with nothing of ours

    from benchmarks.samplers import machine
    from diffusion.precision import native_bf16

    doc = {
        "machine": machine(torch.device("cpu")),
        "native_bf16": native_bf16("cpu"),  # what hardware.precision: auto picks
        "cpus": len(os.sched_getaffinity(0)),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "make run",
        "commit": commit,
        "exit_code": code,
        "install_seconds": round(starts[0][0], 1),
        "stage_seconds": stages,
        "total_seconds": round(starts[-1][0], 1),
        "metrics": metrics,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("exit_code", "install_seconds", "stage_seconds", "total_seconds")}))


if __name__ == "__main__":
    main()
