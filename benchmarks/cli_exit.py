"""The `digits` console script's exit, with and without the final garbage collections, side by side.

    python benchmarks/cli_exit.py --out benchmarks/results/cli-exit-cpu.json -- report --params params.yaml ...

Runs one `digits` command (the arguments after `--`, from the current folder) once untimed (the cold file
cache), then --repeats times each way, alternating so that the machine's drift hits both alike:
- `main`: `sys.exit(diffusion.cli.main(argv))`, the console script before `diffusion.cli.run`;
- `run`: `python -m diffusion.cli`, which calls `run` as the `digits` script does: `main`, then
  `gc.freeze()`, then the same exit.
Each run's wall time from spawn to exit; the difference of the medians is what the fast exit saves. The
command runs 1 + 2 x --repeats times, so it must leave the folder as it found it (a stage that rewrites its
outputs in place, a report, a check). JSON: machine, date, command, every run, and the median of each way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from benchmarks.compile_sampler import cpu_model_name  # noqa: E402

COMMANDS = {
    "main": ["-c", "import sys\nfrom diffusion.cli import main\nsys.exit(main(sys.argv[1:]))"],
    "run": ["-m", "diffusion.cli"],
}


def one(way: str, argv: list[str]) -> float:
    """Wall seconds of one run of the command, from spawn to exit."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *COMMANDS[way], *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{way}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the digits command's arguments")
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise SystemExit("give the digits command after --")
    one("run", argv)  # untimed: the first run pays the cold file cache, whichever way it is
    runs: dict[str, list[float]] = {"main": [], "run": []}
    for i in range(args.repeats):
        for way in ("main", "run") if i % 2 == 0 else ("run", "main"):
            runs[way].append(one(way, argv))
            print(f"{way}: {runs[way][-1]:.2f} s", flush=True)
    median = {way: statistics.median(walls) for way, walls in runs.items()}
    doc = {
        "machine": cpu_model_name(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "digits": argv,
        "runs": runs,
        "median": median,
        "saved_seconds": median["main"] - median["run"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(median), f"saved {doc['saved_seconds']:.2f} s a command", sep="\n")


if __name__ == "__main__":
    main()
