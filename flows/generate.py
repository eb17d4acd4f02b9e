"""The generation flow: rounds of tasks of seed blocks, then the gate and an atomic publish.

    generate_dataset(cfg, hardware, model="data/models/diffusion", classifier="data/models/classifier")

Each task makes up to `generate.task_size` digits as whole seed blocks (of any classes)
(`diffusion.generate.task.make_task`, the same function any other caller uses) and stages a shard per
block; after each round the flow counts accepted digits per class and plans blocks only for classes still
short. A rerun with the same params reuses every staged block, so a crash costs at most the tasks in
flight. Tasks run on threads or on a Dask cluster (`generate.task_runner`); each worker process loads the
models once (`diffusion.generate.workers`).

With `grading` (every run `digits generate` and `digits serve` start), the flow then grades what it
published: task `evaluate` writes the version's evaluation document beside the versions, task `report` its
page and the index (`diffusion.data.evaluations` has the layout), and a version outside the `monitor`
section's bounds ends the run Failed with one line naming the metric and the version (it stays published).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from tqdm.auto import tqdm

from diffusion.config import GenerateConfig, HardwareConfig, QualityConfig, TaskRunnerConfig
from diffusion.data.evaluations import quality_dir, write_document
from diffusion.data.shards import PublishedVersion
from diffusion.errors import DigitsError, QualityAlert, is_transient
from diffusion.generate import staging
from diffusion.generate.plan import GenerationError, TaskKey, plan_round
from diffusion.generate.run import (
    RunSpec,
    class_rows,
    named_rows,
    prepare_run,
    publish_run,
    published_progress,
    published_run,
    run_metrics,
    summary_line,
    tally,
)
from diffusion.generate.task import BlockOutcome, TaskJob, TaskOutcome, make_task
from diffusion.quality.grading import Grading, grade_version
from diffusion.quality.monitor import raise_if_flagged


def task_runner(cfg: TaskRunnerConfig) -> TaskRunner:
    """Threads, a temporary local Dask cluster of `workers` processes, or an existing one at `address`: what
    the flow's generation tasks run on (the flow enters it itself, from its `cfg`)."""
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True}
    )


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures however they were wrapped, never bad input (a failed gate, an existing version):
    those fail the same way again (`diffusion.errors.is_transient`)."""
    return is_transient(state.result(raise_on_failure=False))


@task(name="generate-task", task_run_name="task-{job.task.name}", cache_policy=NO_CACHE)
def generate_task(job: TaskJob) -> TaskOutcome:
    """Sample, score, filter and stage one task's seed blocks (compute: no retries; a rerun reuses them)."""
    return make_task(job)


@task(name="publish", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def publish(
    spec: RunSpec,
    blocks: list[BlockOutcome],
    logical_date: datetime,
    quality: QualityConfig,
    model_revision: str | None,
) -> PublishedVersion:
    """Trim to exact counts, run the Great Expectations gate, publish the version atomically."""
    return publish_run(spec, blocks, logical_date, quality, model_revision)


@task(name="evaluate", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def evaluate(
    version: PublishedVersion,
    name: str,
    grading: Grading,
    hardware: HardwareConfig,
    train_data: str,
    classifier: str,
    out: str,
) -> dict[str, Any]:
    """Grade the published version (`grade_version`, what `digits evaluate` calls) and write its evaluation
    document into the report folder `out`; the document."""
    doc = grade_version(version, name, grading, hardware, train_data, classifier)
    write_document(out, doc)
    return doc


@task(name="report", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def report(version: PublishedVersion, output_root: str, name: str, out: str, model: str, device: str) -> str:
    """Write the version's report page from its document in `out`, and the index over every version (what
    `digits report` calls); the index's path or URL."""
    from diffusion.quality.report import build_reports

    return build_reports(output_root, name, out, version=version.path, model=model, device=device)


@dataclass(frozen=True)
class GenerationResult:
    """The published version, the run's metrics (`metrics/generate.json`), per-class table and tasks;
    `evaluation`: its evaluation document when the run graded it (else None)."""

    version: PublishedVersion
    metrics: dict[str, Any]
    classes: list[dict[str, Any]]
    tasks: list[TaskOutcome]
    evaluation: dict[str, Any] | None = None


def _key(name: str, what: str) -> str:
    """An artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{name}-{what}".lower())


def _one_line_failures(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with a verdict raised in the flow's own body returned as the run's Failed state instead of raised:
    a QualityAlert (a flagged version, published) or a DigitsError (bad input, a class that cannot reach its
    count, a failed gate). Raised, Prefect's flow engine logs it with a traceback, and a verdict is no crash:
    its one line says it all. Calling the flow in-process (`digits generate`, the DVC stage) still raises it,
    `state.result()` too, so the CLI prints it and exits 1 or 2; a served run's engine re-raises it and logs
    that once. An I/O failure wrapped in a DigitsError (`is_transient`) is raised as it is, with its
    traceback and cause."""

    # Prefect reads the parameters through __wrapped__ but resolves their (string) annotations in the
    # globals of `run`: this decorator must live in the flow's own module.
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QualityAlert as alert:
            return Failed(message=str(alert), data=alert)
        except DigitsError as err:
            if is_transient(err):
                raise
            return Failed(message=str(err), data=err)

    return run


@flow(name="generate-dataset")
@_one_line_failures
def generate_dataset(
    cfg: GenerateConfig,
    hardware: HardwareConfig = HardwareConfig(),  # noqa: B008  (frozen, immutable)
    model: str = "data/models/diffusion",
    classifier: str = "data/models/classifier",
    train_data: str = "data/prepared/train.parquet",
    quality: QualityConfig = QualityConfig(),  # noqa: B008  (frozen, immutable)
    logical_date: datetime | None = None,
    seed_from_date: bool = False,
    model_revision: str | None = None,
    progress: bool = False,
    prepared: RunSpec | None = None,
    grading: Grading | None = None,
    student: str | None = None,
) -> GenerationResult | State:
    """Generate, filter, gate and publish `cfg.counts()` digits per class as a new dataset version.

    Args:
        cfg: the `generate` section of params.yaml.
        hardware: the `hardware` section (device, precision, network batch, compile).
        model, classifier: checkpoint folders of the diffusion model and of the filtering classifier.
        train_data: the real training split, for the gate's memorisation check.
        quality: the gate's limits (the `quality` section).
        logical_date: the run's date, written to every row and the version name; default: the flow
            run's scheduled start time (now for a run started by hand).
        seed_from_date: add the logical date (seconds since 1970) to cfg.seed, so every scheduled run
            draws new digits while a retried run of the same slot resumes its own.
        model_revision: the git revision whose dvc.lock pinned `model`, for the manifest.
        progress: show a progress bar (accepted digits, rate, ETA) on stderr.
        prepared: the run as `prepare_run` already checked it (the CLI checks before Prefect starts);
            None prepares it here. Either way it is prepared once per run, and the run (grading included)
            uses the spec's generate and hardware sections, classifier and training digits.
        grading: grade the published version (evaluate, report, monitor); None: publish only (the DVC
            pipeline grades its version in its own evaluate and report stages).
        student: the distilled student's folder, for `generate.sampler.name: distilled` (the digits come
            from it; `model` is its teacher, whose checksum it must carry).

    Returns the GenerationResult, or the run's Failed state holding the QualityAlert (a flagged version) or
    the DigitsError (below), which calling the flow raises: Prefect logs no traceback for a verdict.

    Raises:
        QualityAlert: the graded version broke a floor or ceiling of `grading.monitor` (after its
            document, page and index are written).
        DigitsError: bad input (found before any sampling), a class that `generate.max_attempts` cannot
            fill (GenerationError) or a failed gate (GateError), when nothing is published; from grading,
            after the version is published.
    """
    start = time.perf_counter()
    logical = (logical_date or flow_run.scheduled_start_time).astimezone(UTC).replace(microsecond=0)
    if seed_from_date:
        if prepared is not None:
            raise GenerationError("seed_from_date needs the flow to prepare the run: pass no prepared run")
        cfg = cfg.model_copy(update={"seed": cfg.seed + int(logical.timestamp())})
    spec = prepared or prepare_run(cfg, hardware, model, classifier, train_data, student)
    tasks: list[TaskOutcome] = []
    # a run of this key that published before (killed before grading, or the same params again): graded,
    # not sampled and published a second time
    with staging.run_lock(spec.staging):  # one run of a run key at a time samples and publishes
        version, made = published_run(spec, quality), None
        if version is None:
            _sample(spec, tasks, progress)
            version = publish(spec, _blocks(tasks), logical, quality, model_revision)
        else:
            made = published_progress(version)  # per class, as that run recorded it
    metrics = run_metrics(spec, tasks, time.perf_counter() - start, made)
    classes = class_rows(spec, _blocks(tasks), made)
    create_table_artifact(
        named_rows(classes), key=_key(spec.cfg.name, "classes"), description="accepted digits per class"
    )
    create_markdown_artifact(
        f"## {spec.cfg.name} {version.version}\n\n{summary_line(version, metrics)}.\n\n"
        f"Dataset card: `{version.path}/README.md`; Data Docs: `{version.path}/data_docs/index.html`.",
        key=_key(spec.cfg.name, "summary"),
    )
    if grading is None:
        return GenerationResult(version, metrics, classes, tasks)
    name, root = spec.cfg.name, spec.cfg.output_root
    out = grading.out or quality_dir(root, name)
    # graded with the inputs the run was checked with (the spec's, also when the CLI prepared it)
    doc = evaluate(version, name, grading, spec.hardware, spec.train_data, spec.classifier_dir, out)
    result = GenerationResult(version, metrics, classes, tasks, doc)
    report_error: Exception | None = None
    try:
        # the page draws from the folder that drew the digits: the student's for the distilled sampler
        _grading_artifact(doc, out, report(version, root, name, out, spec.model_dir, spec.hardware.device))
    except Exception as err:  # a failed report never hides the verdict: the alert wins, this is its context
        if not doc.get("flagged"):
            raise
        report_error = err
    try:
        raise_if_flagged(doc)
    except QualityAlert as alert:
        alert.result = result  # what the run published, for the CLI's outputs
        alert.__context__ = report_error
        raise  # the run's Failed state (`_one_line_failures`)
    return result


def _sample(spec: RunSpec, tasks: list[TaskOutcome], progress: bool) -> None:
    """Rounds of tasks until every class has its count (`_plan`), each outcome appended to `tasks`; a
    progress artifact (and with `progress` a bar on stderr) of the accepted digits."""
    requested = sum(spec.cfg.counts().values())
    progress_id = create_progress_artifact(
        0.0, key=_key(spec.cfg.name, "progress"), description="accepted / requested"
    )
    # The tasks run on the run's own `generate.task_runner`, entered here rather than set on the flow with
    # `with_options`: a served run imports this flow anew from its entrypoint, where such a setting is lost.
    with (
        task_runner(spec.cfg.task_runner) as runner,
        tqdm(total=requested, disable=not progress, desc=f"generate {spec.cfg.name}", unit="digit") as bar,
    ):
        while keys := _plan(spec, tasks):
            _run_round(spec, keys, tasks, bar, runner)
            done = sum(row["accepted"] for row in class_rows(spec, _blocks(tasks)))
            update_progress_artifact(progress_id, 100.0 * done / requested)


def _grading_artifact(doc: dict[str, Any], out: str, index: str) -> None:
    """A markdown artifact with the headline numbers, the monitor's verdict and where the report is."""
    m = doc["metrics"]
    verdict = (
        "**Flagged**: " + "; ".join(f"{f['metric']} {f['kind']} {f['bound']:g}" for f in doc["flags"])
        if doc["flagged"]
        else "Within every monitor bound."
    )
    shown = ("conditional_accuracy_published", "cas_ratio", "coverage_ratio", "dcr_share", "label_issue_rate")
    rows = "\n".join(
        f"| {k} | {m[k]:.4f} |" if isinstance(m.get(k), float) else f"| {k} | n/a |" for k in shown
    )
    create_markdown_artifact(
        f"## {doc['name']} {doc['version']}: evaluation\n\n{verdict}\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"Evaluation: `{out}/{doc['version']}/evaluation.json`; report index: `{index}`.",
        key=_key(doc["name"], "evaluation"),
    )


def _blocks(tasks: list[TaskOutcome]) -> list[BlockOutcome]:
    return [b for t in tasks for b in t.blocks]


def _plan(spec: RunSpec, tasks: list[TaskOutcome]) -> list[TaskKey]:
    """The next round's tasks; on a class that cannot finish, record the per-class table, then fail."""
    try:
        return plan_round(
            tally(spec, _blocks(tasks)), spec.cfg.seed_block, spec.task_blocks, spec.cfg.max_attempts
        )
    except GenerationError:
        create_table_artifact(
            named_rows(class_rows(spec, _blocks(tasks))), key=_key(spec.cfg.name, "classes")
        )
        raise


def _run_round(
    spec: RunSpec, keys: list[TaskKey], tasks: list[TaskOutcome], bar: tqdm, runner: TaskRunner
) -> None:
    """Submit one task per key to `runner` and append each outcome to `tasks` as it lands (the bar counts
    accepted digits up to each class's request); wait for every task, failed or not, before returning or
    raising."""
    futures = [runner.submit(generate_task, {"job": spec.job(k)}) for k in keys]
    error: Exception | None = None
    for future in as_completed(futures):
        try:
            outcome = future.result()
        except Exception as err:  # noqa: BLE001  (kept, and raised once every future is resolved)
            error = error or err
            continue
        tasks.append(outcome)
        bar.n = sum(row["accepted"] for row in class_rows(spec, _blocks(tasks)))
        bar.refresh()
    if error is not None:
        raise error
