"""`digits`: the thin entry points that `dvc.yaml` calls, one subcommand per stage.

    train.py      prepare, train-classifier, train-evaluator, train-clip, train-diffusion,
                  distill-diffusion, evaluate-diffusion
    generate.py   generate, serve, evaluate, train-on, report, gc
    here          the wiring: each subcommand's function, path flags and help; `main` and `run`

Each subcommand validates the whole `params.yaml` first, takes its paths exactly as `dvc.yaml`
passes them, calls one library function and writes its outputs atomically. Any `DigitsError`
(bad params, data, checkpoint or model name) prints one line `error: ...` and exits with status 2; a
`QualityAlert` (a graded version outside the `monitor` bounds) prints `alert: ...` and exits with status 1.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from diffusion.checkpoint import OutputError, check_output, file_sha256
from diffusion.cli.generate import (
    cmd_evaluate,
    cmd_gc,
    cmd_generate,
    cmd_report,
    cmd_serve,
    cmd_train_on,
)
from diffusion.cli.train import (
    cmd_distill_diffusion,
    cmd_evaluate_diffusion,
    cmd_prepare,
    cmd_train_classifier,
    cmd_train_clip,
    cmd_train_diffusion,
    cmd_train_evaluator,
)
from diffusion.config import Params, load_params
from diffusion.errors import DigitsError, QualityAlert

# --------------------------------------------------------------------------- wiring
MODELS = {
    "model": "data/models/diffusion",
    "classifier": "data/models/classifier",
    "student": "data/models/distilled",
}
TRAIN = {"train": "data/prepared/train.parquet"}
GRADING = {
    "evaluator": "data/models/evaluator",
    "val": "data/prepared/val.parquet",
    "test": "data/prepared/test.parquet",
}
# stage -> (function, path flags (None: required), help)
STAGES: dict[str, tuple[Callable[[Params, argparse.Namespace], None], dict[str, str | None], str]] = {
    "prepare": (
        cmd_prepare,
        dict.fromkeys(["out", "metrics", "grid", "classes"]),
        "split a real source into Parquet files",
    ),
    "train-classifier": (
        cmd_train_classifier,
        dict.fromkeys(["train", "val", "test", "out", "metrics", "confusion"]),
        "train the filtering classifier judge (a small CNN on the real digits)",
    ),
    "train-evaluator": (
        cmd_train_evaluator,
        dict.fromkeys(["train", "val", "test", "out", "metrics", "confusion"]),
        "train the independent evaluator (never used for filtering)",
    ),
    "train-clip": (
        cmd_train_clip,
        dict.fromkeys(["train", "val", "test", "out", "metrics"]),
        "train the domain CLIP judge through open_clip",
    ),
    "train-diffusion": (
        cmd_train_diffusion,
        dict.fromkeys(["train", "val", "out", "resume_dir", "loss_plot"]),
        "train (or resume) the class-conditional diffusion model",
    ),
    "distill-diffusion": (
        cmd_distill_diffusion,
        dict.fromkeys(["teacher", "train", "out", "resume_dir", "metrics", "loss_plot"]),
        "distil the EMA teacher into few-step students (opt-in: dvc repro distill/dvc.yaml)",
    ),
    "evaluate-diffusion": (
        cmd_evaluate_diffusion,
        dict.fromkeys(["model", "classifier", "val", "metrics", "grid", "strip"]),
        "judge guided samples; sample grid and forward-diffusion strip",
    ),
    "generate": (
        cmd_generate,
        {**MODELS, **TRAIN, **GRADING}
        | {"output_root": "", "metrics": "", "classes": "", "rev": "", "published": ""},
        "run the generation flow: generate, filter, gate, publish and grade a dataset version",
    ),
    "evaluate": (
        cmd_evaluate,
        {
            "version": None,
            "classifier": MODELS["classifier"],
            **TRAIN,
            **GRADING,
        }
        | dict.fromkeys(["document", "metrics", "classes", "confusion"]),
        "grade one published version: evaluator accuracy, CAS, PRDC, DCR, label audit, monitor",
    ),
    "train-on": (
        cmd_train_on,
        {
            "data": None,
            "val": GRADING["val"],
            "test": GRADING["test"],
            "real": "",
            "real_fraction": "",
            "metrics": "",
        },
        "train the CAS classifier (evaluate.cas) on published version(s) until real val accuracy stops"
        " improving; real test accuracy",
    ),
    "report": (
        cmd_report,
        {"versions": None, "evaluation": "", "version": "", "out": "", "model": ""},
        "write the data-quality report page of every published version, and their index",
    ),
    "gc": (
        cmd_gc,
        {"older_than": None},
        "remove abandoned staging folders and unfinished version folders (untouched for more than"
        " --older-than days)",
    ),
    "serve": (
        cmd_serve,
        {**MODELS, **TRAIN, **GRADING},
        "serve the generation flow's deployment on the serve section's schedule (needs a Prefect server)",
    ),
}

# The path flags a command writes: each is checked writable before any work (a folder where a file goes, a
# file on the way, no permission), so a long run never ends in a traceback with its results unsaved.
OUTPUT_FILES = frozenset(
    {"metrics", "grid", "strip", "classes", "confusion", "loss_plot", "document", "published"}
)
OUTPUT_FOLDERS = frozenset({"out", "resume_dir"})
NOT_PATHS = frozenset({"rev", "real_fraction", "older_than"})  # flags of that table that name no path

# The libraries whose rules check the params their command reads (diffusion/library_rules.py); a command
# not named here checks every section's types and ranges but imports none of them.
LIBRARY_RULES: dict[str, frozenset[str]] = {
    "train-clip": frozenset({"open_clip"}),  # clip.context_length: the tokenizer it builds
    "generate": frozenset({"fsspec"}),  # generate.output_root
    "serve": frozenset({"prefect", "fsspec"}),  # serve: the deployment's cron and timezone; the output root
    "gc": frozenset({"fsspec"}),  # generate.output_root: its unfinished version folders
}

HELP = {
    "rev": "a git revision: generate from the diffusion checkpoint its dvc.lock pins",
    "output_root": "publish here instead of generate.output_root",
    "classes": "per-class CSV (DVC plot)",
    "versions": "the output root holding <name>/<version> folders",
    "version": "a published version folder, or the JSON file `digits generate --published` wrote",
    "published": "write the published version's path and name here (JSON; a local path relative to this"
    " file's folder, a URL as it is)",
    "older_than": "days since a staging folder (or an unfinished version folder) was last written",
    "data": "published version folders or URLs (or <root>/<name>/latest, or the JSON file generate --published"
    " wrote), comma-separated",
    "real": "real digits (Parquet) to mix in",
    "real_fraction": "share of real digits in the mix, in [0, 1) (with --real; default 0.5)",
    "evaluation": "the evaluation document (JSON) of one version (`digits evaluate --document`)",
    "document": "write the version's evaluation document here (JSON)",
    "model": "the diffusion model's checkpoint folder",
    "student": "the distilled student's folder, read only by generate.sampler.name: distilled",
    "teacher": "the EMA teacher's checkpoint folder (train_diffusion's output)",
    "evaluator": "the independent evaluator's folder (grading)",
    "classifier": "the filtering classifier judge's folder",
    "train": "the real training split (Parquet)",
    "val": "the real validation split (Parquet)",
    "test": "the real test split (Parquet)",
    "out": "the output folder",
    "metrics": "write the command's numbers here (JSON)",
    "confusion": "confusion-matrix CSV (DVC plot)",
    "grid": "sample grid (PNG)",
    "strip": "forward-diffusion picture (PNG)",
    "loss_plot": "training loss CSV (DVC plot)",
    "resume_dir": "resume state, written every checkpoint_every steps",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digits", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (_, paths, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "generate":
            p.add_argument(
                "--no-grade",
                action="store_true",
                help="publish only; do not evaluate, report or monitor the version (the DVC pipeline grades"
                " its version in its evaluate and report stages)",
            )
        p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
        for path, default in paths.items():
            flag = f"--{path.replace('_', '-')}"
            if default is None:
                p.add_argument(flag, dest=path, required=True, help=HELP.get(path))
            else:
                shown = f" (default: {default})" if default else ""
                p.add_argument(flag, dest=path, default=default or None, help=HELP.get(path, "") + shown)
    return parser


def _local_paths(args: argparse.Namespace) -> Iterator[tuple[str, Path, bool]]:
    """(flag, resolved path, is an output) of every local path the command was given (`--params` and each
    path flag; a comma-separated `--data` gives each of its paths; URLs are left out). `--output-root`, where
    versions are published, is an output."""
    yield "--params", Path(args.params).resolve(), False
    for name in [n for n in STAGES[args.stage][1] if n not in NOT_PATHS]:
        value = getattr(args, name, None)
        for path in str(value).split(",") if name == "data" and value else [value]:
            if path and "://" not in path:
                flag = f"--{name.replace('_', '-')}"
                yield flag, Path(path).resolve(), name in OUTPUT_FILES | OUTPUT_FOLDERS | {"output_root"}


def check_outputs(args: argparse.Namespace) -> None:
    """Every output path flag of the command is writable (`diffusion.checkpoint.check_output`), in the
    order the command lists them, and overwrites nothing the command was given: no output is the path of
    another flag or lies inside an input's folder, and no `--out` folder, which the command replaces
    whole, holds another flag's path (report's `--out` is updated in place: it keeps every version's page).
    An OutputError names the first that is not."""
    paths = list(_local_paths(args))
    for flag, out, is_output in paths:
        if not is_output:
            continue
        replaced_whole = flag == "--out" and args.stage != "report"
        for other, path, other_is_output in paths:
            if other == flag:
                continue
            if path == out:
                raise OutputError(f"{flag} {out}: the same path as {other}, which writing it would overwrite")
            if (out.is_relative_to(path) and not other_is_output) or (
                replaced_whole and path.is_relative_to(out)
            ):
                raise OutputError(
                    f"{flag} {out}: writing it would change {other} {path}; give a path outside"
                )
    for name in STAGES[args.stage][1]:
        path = getattr(args, name, None)
        if path and name in OUTPUT_FILES | OUTPUT_FOLDERS:
            check_output(path, f"--{name.replace('_', '-')}", folder=name in OUTPUT_FOLDERS)


# the real digits a command trains on, stops early on or tests on: never one file twice
SPLITS = ("train", "val", "test", "real")


def check_splits(args: argparse.Namespace) -> None:
    """No two of the command's real splits (`SPLITS`) are one file, or two files with the same bytes: a model
    would be stopped early on, or trained on, the digits it is tested on. A DigitsError names the pair."""
    given = [
        (n, Path(getattr(args, n)))
        for n in SPLITS
        if getattr(args, n, None) and "://" not in getattr(args, n)
    ]
    seen: list[tuple[str, Path]] = []
    for name, path in given:
        if not path.is_file():
            continue  # missing: the command's own checks name it
        for other, earlier in seen:
            same = path.resolve() == earlier.resolve() or (
                path.stat().st_size == earlier.stat().st_size and file_sha256(path) == file_sha256(earlier)
            )
            if same:
                raise DigitsError(
                    f"--{name} {path}: the same digits as --{other} {earlier}; give each split its own file"
                    " (a model would be stopped early on, or trained on, what it is tested on)"
                )
        seen.append((name, path))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params, LIBRARY_RULES.get(args.stage, frozenset()))
        check_outputs(args)
        check_splits(args)
        STAGES[args.stage][0](params, args)
    except DigitsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except QualityAlert as alert:
        print(f"alert: {alert}", file=sys.stderr)
        return 1
    return 0


def run(argv: list[str] | None = None) -> None:
    """The `digits` console script: `main`, then an exit that skips the final garbage collections.

    When `main` returns, every output is written (atomically) and Prefect's log and event workers are
    drained. What remains is the interpreter's teardown, whose collections walk every object torch, Prefect,
    Great Expectations and open_clip made: 2.8 s of a 2-core CPU for `digits generate`, paid again by
    every DVC stage. `gc.freeze()` moves those objects to the permanent generation, which collections skip
    (0.4 s; the OS takes the memory back); atexit handlers and open streams still run and flush.
    """
    code = main(argv)
    gc.freeze()
    sys.exit(code)
