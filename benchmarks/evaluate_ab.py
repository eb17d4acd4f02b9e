"""`digits evaluate` with CAS's fits one after another in its own process, or side by side (FitPool's default).

    python benchmarks/evaluate_ab.py here OUT.json evaluate --params params.yaml --version ... --document ...
    python benchmarks/evaluate_ab.py side OUT.json evaluate --params params.yaml --version ... --document ...

Runs `diffusion.cli.main` with the arguments after OUT.json, unchanged but for one thing in `here` mode:
every `FitPool` is made with `in_process=True`, so each fit runs in the command's process on torch's threads,
as grading ran before diffusion/quality/fits.py. OUT.json gets {mode, seconds (`diffusion.cli.main`'s, the
interpreter's start and the CLI module's import excluded), rc}. Run the
two modes one after another on a quiet machine, and write the evaluation documents to two paths (`--document`)
to compare their numbers. The `if __name__` guard below is what every program that grades needs: FitPool's
spawned workers import the main module again.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))


def main() -> int:
    from diffusion.cli import main as digits
    from diffusion.quality import fits

    mode, out, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if mode not in ("here", "side"):
        raise SystemExit("mode: here or side")
    if mode == "here":
        pool_init = fits.FitPool.__init__

        def in_process(self: Any, device: Any = "cpu", workers: int | None = None, **_: Any) -> None:
            pool_init(self, device, workers, in_process=True)

        fits.FitPool.__init__ = in_process  # type: ignore[method-assign]
    start = time.perf_counter()
    rc = digits(argv)
    seconds = time.perf_counter() - start
    out.write_text(json.dumps({"mode": mode, "seconds": seconds, "rc": rc, "argv": argv}))
    print(f"{mode}: {seconds:.1f} s, exit {rc}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
