"""`digits generate` with a stopwatch: the CLI's own entry point, plus the wall-clock time each phase ends.

    python -m benchmarks.timed_cli MARKS.json generate --params ... --metrics ...   # = digits generate ...

This runs `diffusion.cli.run`, which is all the `digits` console script does, unchanged but for two
things that add no work:
- the --metrics file keeps `task_seconds` and `task_share` (where each task's time went), the nested
  mappings the CLI leaves out of DVC's metrics file (`diffusion.checkpoint.write_metrics`);
- MARKS.json gets `time.time()` marks (comparable with the parent process's clock) of: `start` (the
  interpreter is up, no project module imported), `imported` (the CLI module; it imports the run and flow
  modules itself inside `cmd_generate`, after starting Prefect's temporary server, and the marks below are
  hooked into them as they load, so the order of the work is the CLI's own), `params` (params.yaml loaded and checked), `prepare_start` / `prepare_end` (`prepare_run`:
  checksums, judges loaded, staging folder), `flow_start` (the flow body's first API call: Prefect's
  temporary server and the flow run are up), `tasks` ([start, end] of every `make_task`, on its thread),
  `publish_start` / `publish_end` (`publish_run`: trim, Great Expectations gate, card, manifest, publish),
  `end` (`main` returned: artifacts, metrics and class files written). The parent adds process exit.
Functions are wrapped where the CLI and the flow look them up (module attributes), so nothing else changes.
"""

from __future__ import annotations

import time

START = time.time()

import functools  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

_LOCK = threading.Lock()
MARKS: dict[str, Any] = {"start": START, "tasks": []}


def _mark(name: str) -> None:
    with _LOCK:
        MARKS.setdefault(name, time.time())  # the first time only


def _around(module: Any, name: str, before: str | None, after: str | None) -> None:
    """Wrap `module.name` so that it marks `before` on entry and `after` on return (first call of each)."""
    inner: Callable[..., Any] = getattr(module, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            _mark(before)
        try:
            return inner(*args, **kwargs)
        finally:
            if after:
                _mark(after)

    setattr(module, name, wrapper)


def _timed_task(module: Any) -> None:
    """Record [start, end] of every `make_task` call (each Prefect task's own work, on its thread)."""
    inner = module.make_task

    @functools.wraps(inner)
    def wrapper(job: Any) -> Any:
        began = time.time()
        try:
            return inner(job)
        finally:
            with _LOCK:
                MARKS["tasks"].append([began, time.time()])

    module.make_task = wrapper


class _AfterImport(importlib.abc.MetaPathFinder):
    """Run `hooks[name](module)` right after `name` is first imported, wherever the CLI imports it.

    The CLI imports the run and flow modules inside `cmd_generate`, after Prefect's temporary server has been
    started (flows/server.py): importing them here first would change the order whose timing is measured.
    """

    def __init__(self, hooks: dict[str, Callable[[Any], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.hooks:
            return None
        sys.meta_path.remove(self)  # let the normal finders find it
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        exec_module, hook = spec.loader.exec_module, self.hooks.pop(name)

        def exec_then_hook(module: Any) -> None:
            exec_module(module)
            hook(module)

        spec.loader.exec_module = exec_then_hook
        return spec


def _hook_run(run: Any) -> None:
    _around(run, "prepare_run", "prepare_start", "prepare_end")


def _hook_flow(flow: Any) -> None:
    _around(flow, "create_progress_artifact", "flow_start", None)
    _around(flow, "publish_run", "publish_start", "publish_end")
    _timed_task(flow)


def main(argv: list[str]) -> None:
    marks_path, cli_args = Path(argv[0]), argv[1:]
    sys.meta_path.insert(0, _AfterImport({"diffusion.generate.run": _hook_run, "flows.generate": _hook_flow}))
    import diffusion.cli as cli
    import diffusion.cli.generate as commands
    from diffusion.checkpoint import write_json_atomic
    from diffusion.data.evaluations import json_safe

    _mark("imported")
    # keep task_seconds / task_share in the --metrics file
    commands.write_metrics = lambda path, metrics: write_json_atomic(path, json_safe(metrics))
    _around(cli, "load_params", None, "params")
    try:
        cli.run(cli_args)  # exits, as the console script does
    finally:
        _mark("end")
        marks_path.write_text(json.dumps(MARKS, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(
            f"usage: python -m benchmarks.timed_cli MARKS.json generate [digits generate flags]\n{__doc__}"
        )
    main(sys.argv[1:])
