"""The commands of the generation half: generate (the Prefect flow), serve it on a schedule, grade a
published version, train a classifier on versions, report, and clean up abandoned staging."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from diffusion.checkpoint import write_csv_atomic, write_json_atomic, write_metrics
from diffusion.config import Params, parse_params
from diffusion.data.handoff import handed_on_path, published_path, read_json_object
from diffusion.errors import DigitsError, QualityAlert

if TYPE_CHECKING:
    from diffusion.data.shards import PublishedVersion
    from diffusion.quality.grading import Grading
    from flows.generate import GenerationResult


def check_student_flag(params: Params, args: argparse.Namespace) -> None:
    """A `--student` other than the default, given to a sampler that is not `distilled`, would be read by
    nothing: the teacher would draw the digits. Refused in one line instead."""
    from diffusion.cli import MODELS

    name = params.generate.sampler.name
    if name != "distilled" and args.student != MODELS["student"]:
        raise DigitsError(
            f"--student {args.student}: only generate.sampler.name: distilled reads a student, and the sampler"
            f" is {name}; leave --student out, or set the sampler to distilled"
        )


def cmd_generate(params: Params, args: argparse.Namespace) -> None:
    from flows.server import temporary_api

    check_student_flag(params, args)
    with temporary_api() as api:  # Prefect's temporary server (if no API is set) starts beside what follows
        from diffusion.generate.pinned import fetch_pinned
        from diffusion.generate.run import prepare_run
        from flows.generate import generate_dataset

        cfg = params.generate
        if args.output_root:  # validated by the same rules as generate.output_root in params.yaml
            from diffusion.cli import LIBRARY_RULES

            raw = {
                **params.model_dump(mode="json"),
                "generate": {**cfg.model_dump(mode="json"), "output_root": args.output_root},
            }
            cfg = parse_params(raw, where="--output-root", libraries=LIBRARY_RULES["generate"]).generate
        model, revision = args.model, None
        if args.rev:
            folder, revision = fetch_pinned(
                args.rev, args.model, cache=Path(params.data.cache_dir) / "pinned"
            )
            model = str(folder)
        # bad input fails here in one line, before any flow runs; the flow takes the prepared run as it is
        grading = None if args.no_grade else grading_of(params, args)
        spec = prepare_run(cfg, params.hardware, model, args.classifier, args.train, args.student)
        try:
            with api.ready():
                result = generate_dataset(
                    cfg=cfg,
                    hardware=params.hardware,
                    model=model,
                    classifier=args.classifier,
                    train_data=args.train,
                    quality=params.quality,
                    model_revision=revision,
                    progress=True,
                    prepared=spec,
                    grading=grading,
                    student=args.student,
                )
        except QualityAlert as alert:  # flagged, but published (for audit): write what was published, exit 1
            if alert.result is not None:
                _write_generation(alert.result, args)
            raise
        _write_generation(result, args)


def _write_generation(result: GenerationResult, args: argparse.Namespace) -> None:
    """The generate command's outputs (metrics, per-class plot, the version handed on) and its summary line."""
    from diffusion.generate.run import named_rows, summary_line

    if args.metrics:
        write_metrics(args.metrics, result.metrics)
    if args.classes:
        write_csv_atomic(args.classes, named_rows(result.classes))
    if args.published:
        path = handed_on_path(result.version.path, args.published)
        write_json_atomic(args.published, {"path": path, "version": result.version.version})
    print(summary_line(result.version, result.metrics))


def grading_of(params: Params, args: argparse.Namespace) -> Grading:
    """The grading of a version from the `evaluate` and `monitor` sections and the command's paths, its
    inputs checked before any work."""
    from diffusion.quality.grading import Grading

    grading = Grading(
        evaluator=args.evaluator,
        val_data=args.val,
        test_data=args.test,
        evaluate=params.evaluate,
        monitor=params.monitor,
    )
    grading.check_inputs(", or --no-grade to publish without grading" if args.stage == "generate" else "")
    return grading


def cmd_evaluate(params: Params, args: argparse.Namespace) -> None:
    from diffusion.data.datasets import open_version
    from diffusion.data.evaluations import json_safe
    from diffusion.quality.grading import grade_version
    from diffusion.quality.monitor import raise_if_flagged

    version = open_version(args.version)
    for flag in ("document", "metrics", "classes", "confusion"):
        if inside(version.path, getattr(args, flag)):
            raise DigitsError(
                f"--{flag}: {getattr(args, flag)} is inside the published version {version.path}, whose files"
                " never change once published; write it elsewhere (the `evaluate` stage writes"
                " data/evaluation.json, metrics/evaluate.json and plots/evaluate_*.csv)"
            )
    grading = grading_of(params, args)
    doc = grade_version(version, params.generate.name, grading, params.hardware, args.train, args.classifier)
    m = doc["metrics"]
    write_json_atomic(args.document, json_safe(doc))
    write_metrics(args.metrics, {"version": version.version, **m, "flagged": int(doc["flagged"])})
    write_csv_atomic(args.classes, doc["per_class"])
    write_csv_atomic(args.confusion, doc["confusion"])
    print(
        f"{version.version}: evaluator accuracy {m['conditional_accuracy_published']:.4f}, "
        f"CAS ratio {m['cas_ratio']:.4f}, coverage {m['coverage']:.3f}, DCR share {m['dcr_share']:.3f}"
    )
    try:
        raise_if_flagged(doc)
    except QualityAlert as alert:  # the pipeline goes on: its metrics and report carry the flag
        print(f"alert: {alert}", file=sys.stderr)


def inside(folder: str, path: str | None) -> bool:
    """Whether `path` is `folder` or lies under it, in any spelling (`location`); None, or a URL whose
    filesystem is not installed: False."""
    from diffusion.data.shards import location

    if not path:
        return False
    try:
        (protocol, top), (other, inner) = location(folder), location(path)
    except DigitsError:  # a URL fsspec cannot open here: not a local folder's
        return False
    return protocol == other and (inner == top or inner.startswith(top.rstrip("/") + "/"))


def number_option(flag: str, given: str, expected: str, within: Callable[[float], bool]) -> float:
    """The option's value as a finite float inside `within`; else DigitsError "<flag>: expected <expected>,
    got <given>" (one line, exit 2)."""
    try:
        value = float(given)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and within(value)):
        raise DigitsError(f"{flag}: expected {expected}, got {given!r}")
    return value


def cmd_train_on(params: Params, args: argparse.Namespace) -> None:
    from diffusion.data.datasets import DigitsDataset, MixedDigits, open_version, published_dataset
    from diffusion.data.evaluations import json_safe
    from diffusion.quality.cas import t_interval
    from diffusion.quality.fits import FitPool

    if args.real_fraction is not None and not args.real:
        raise DigitsError("--real-fraction: give --real too, the real digits it is the share of")
    fraction = number_option(
        "--real-fraction", args.real_fraction or "0.5", "a number in [0, 1)", lambda x: 0.0 <= x < 1.0
    )
    names = args.data.split(",")
    if not all(name.strip() for name in names):
        raise DigitsError(f"--data: an empty name in {args.data!r}; give version folders separated by commas")
    versions = [open_version(name.strip()) for name in names]  # `latest` resolved once
    for version in versions:
        note_if_flagged(version)
    data = published_dataset(versions)
    if args.real:
        data = MixedDigits(data, DigitsDataset(args.real), fraction, seed=0)
    val, test = DigitsDataset(args.val), DigitsDataset(args.test)
    cfg = params.evaluate.cas
    with FitPool(params.hardware.device) as pool:  # the seeds' fits side by side on the CPU, as evaluate's
        fits = [pool.submit(data, val, test, cfg, seed) for seed in cfg.seeds]
        scores, epochs = zip(*(fit.result() for fit in fits), strict=True)
    result = {
        "test_accuracy": sum(scores) / len(scores),
        "interval": list(t_interval(list(scores))),
        "per_seed": list(scores),
        "epochs": list(epochs),
        "train_images": len(data),
        "versions": [v.path for v in versions],
    }
    if args.metrics:
        write_json_atomic(args.metrics, json_safe(result))
    real = f", {int(data.is_real.sum())} of them real from {args.real}" if args.real else ""
    low, high = result["interval"]
    spread = (
        f" [{low:.4f}, {high:.4f}] (95% t over seeds" if math.isfinite(low) else " (one seed: no interval"
    )
    print(
        f"trained on {len(data)} digits of {', '.join(v.path for v in versions)}{real}: real test accuracy"
        f" {result['test_accuracy']:.4f}{spread}; per seed {', '.join(f'{x:.4f}' for x in scores)})"
    )


def note_if_flagged(version: PublishedVersion) -> None:
    """A note on stderr when the monitor flagged `version` (its evaluation document beside the versions):
    `train-on` trains on what it is named, but `latest` would have passed over it."""
    from diffusion.data.evaluations import quality_dir, read_document
    from diffusion.quality.monitor import raise_if_flagged

    root, _, name = version.path.rsplit("/", 1)[0].rpartition("/")
    try:
        doc = read_document(quality_dir(root or ".", name), version.version)
        if doc is not None:
            raise_if_flagged(doc)
    except DigitsError:  # a broken document: `digits report` and `latest` name it; training goes on
        return
    except QualityAlert as alert:
        print(f"note: {alert}; training on it as named (`latest` skips it)", file=sys.stderr)


def cmd_report(params: Params, args: argparse.Namespace) -> None:
    from diffusion.data.evaluations import quality_dir
    from diffusion.quality.report import build_reports

    evaluation = None
    if args.evaluation:
        from diffusion.data.evaluations import check_document

        evaluation = check_document(
            read_json_object(args.evaluation, "an evaluation document"), args.evaluation
        )
    version = published_path(args.version) if args.version else None
    if version:  # a folder that is no published version fails here, naming it, not as a mismatch later
        from diffusion.data.datasets import open_version

        open_version(version)
    name = params.generate.name
    beside = quality_dir(args.versions, name)
    out = f"{args.out.rstrip('/')}/{name}" if args.out else beside
    dataset = f"{args.versions.rstrip('/')}/{name}"
    if out != beside and inside(dataset, out):
        raise DigitsError(
            f"--out: {args.out} puts pages inside the versions of {dataset}; leave --out out to"
            f" write them beside the versions ({beside}), or name a folder elsewhere"
        )
    if args.model:  # the trajectory pictures need it: checked before any page or document is written
        from diffusion.checkpoint import read_checkpoint_config
        from diffusion.model.student import is_student

        if not is_student(args.model):  # a student's folder draws the versions of its sampler
            read_checkpoint_config(args.model, "diffusion")
    index = build_reports(
        args.versions,
        name,
        out,
        version=version,
        evaluation=evaluation,
        model=args.model or None,
        device=params.hardware.device,
    )
    print(f"report index: {index}")


def cmd_gc(params: Params, args: argparse.Namespace) -> None:
    from diffusion.generate.staging import collect_garbage, collect_unfinished_publishes

    days = number_option("--older-than", args.older_than, "a number of days >= 0", lambda x: x >= 0)
    cfg = params.generate
    removed = collect_garbage(cfg.staging_dir, days)
    unfinished = collect_unfinished_publishes(cfg.output_root, cfg.name, days)
    print(
        f"removed {len(removed)} staging folder(s) from {cfg.staging_dir} and {len(unfinished)} unfinished"
        f" version folder(s) from {cfg.output_root}/{cfg.name}"
    )


def _release_device_memory() -> None:
    """Return what the start-up checks cached on an accelerator (torch's allocator keeps freed blocks)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cmd_serve(params: Params, args: argparse.Namespace) -> None:
    """Check what every scheduled run will read (as `digits generate` does, staging nothing), then serve."""
    from prefect.settings import get_current_settings

    # A temporary server would end with this process and share its database with any `prefect server
    # start` of the same PREFECT_HOME, whose deployment it would then take over.
    if not get_current_settings().api.url:
        raise DigitsError(
            "PREFECT_API_URL is not set: `digits serve` needs a running Prefect server (`prefect server"
            " start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`)"
        )
    from diffusion.generate import workers
    from diffusion.generate.inputs import check_run_inputs
    from flows.deploy import check_overlap, serve_generation

    check_overlap(params.serve.overlap)
    check_student_flag(params, args)
    grading = grading_of(params, args)
    check_run_inputs(params.generate, params.hardware, args.model, args.classifier, args.train, args.student)
    workers.clear()  # each scheduled run loads its own, in its own process; this one only serves
    _release_device_memory()
    serve_generation(params, args.model, args.classifier, args.train, grading, args.student)
