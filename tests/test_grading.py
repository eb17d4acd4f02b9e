"""Every run grades what it publishes: the flow's evaluate and report tasks, the monitor's floors and
ceilings, and "latest" meaning the newest version not flagged. Real Prefect (a temporary server), real
Great Expectations, open_clip, prdc and cleanlab, on the tiny random-weight models."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from diffusion.config import ConfigError, EvaluateConfig, MonitorConfig, parse_params
from diffusion.data.datasets import open_version
from diffusion.data.evaluations import latest_version, quality_dir, read_document
from diffusion.errors import DataError, QualityAlert
from diffusion.quality.grading import Grading
from diffusion.quality.headline import METRICS
from diffusion.quality.monitor import check
from tests.generate_fixtures import DATE, run_generate, tiny_generate

REPO = Path(__file__).resolve().parents[1]
TINY_EVALUATE = EvaluateConfig.model_validate(
    {"cas": {"batch_size": 16, "max_epochs": 2, "patience": 1, "seeds": [0, 1]}, "prdc_k": 3}
)


def _grading(models: dict[str, str], **monitor: dict[str, float]) -> Grading:
    return Grading(
        evaluator=models["evaluator"],
        val_data=models["val"],
        test_data=models["test"],
        evaluate=TINY_EVALUATE,
        monitor=MonitorConfig(**{"floors": {}, "ceilings": {}, **monitor}),  # only the bounds given
    )


@pytest.fixture(scope="module")
def graded(prefect_server, tiny_models, tmp_path_factory):
    """Two runs into one output root: the first within its (empty) bounds, the second, a day later with
    another seed, below an evaluator-accuracy floor no random-weight model can reach."""
    root = tmp_path_factory.mktemp("graded")
    cfg = tiny_generate(tiny_models, root, per_class=2)
    first = run_generate(cfg, tiny_models, grading=_grading(tiny_models))
    state = run_generate(
        cfg.model_copy(update={"seed": 1}),
        tiny_models,
        logical_date=DATE + timedelta(days=1),
        grading=_grading(tiny_models, floors={"conditional_accuracy_published": 0.99}),
        return_state=True,
    )
    return cfg, first, state


@pytest.mark.slow
def test_a_run_publishes_evaluates_and_reports_beside_its_versions(graded) -> None:
    cfg, first, _ = graded
    out = quality_dir(cfg.output_root, cfg.name)
    doc = read_document(out, first.version.version)
    assert doc == first.evaluation and doc["flagged"] is False and doc["flags"] == []
    assert set(METRICS) <= set(doc["metrics"])  # every headline metric is measured
    assert doc["path"] == first.version.path and doc["monitor"] == {"floors": {}, "ceilings": {}}
    # beside the versions, never inside one: the published files are only those the manifest lists
    assert not any(p.name == "evaluation.json" for p in Path(first.version.path).rglob("*"))
    index = (Path(out) / "index.html").read_text()
    assert first.version.version in index
    assert (Path(out) / first.version.version / "index.html").is_file()
    # the card's quality section points at them, by paths that resolve from the version's folder
    card = (Path(first.version.path) / "README.md").read_text()
    quality = card[card.index("## Quality") :]
    for rel in ("evaluation.json", "index.html"):
        link = f"../_quality/{first.version.version}/{rel}"
        assert link in quality and (Path(first.version.path) / link).is_file()


@pytest.mark.slow
def test_a_version_below_a_floor_fails_the_run_naming_metric_and_version(graded) -> None:
    cfg, first, state = graded
    assert state.is_failed()
    with pytest.raises(QualityAlert) as alert:
        state.result()
    message = str(alert.value)
    assert "conditional_accuracy_published" in message and "below its floor 0.99" in message
    assert "\n" not in message
    # the run's state is the verdict itself, returned by the flow, not "Flow run encountered an exception"
    # (a raised exception, whose traceback Prefect logs, as it would for a crash)
    assert state.message == message
    flagged = [v for v in latest_version_all(cfg) if v.version != first.version.version]
    assert len(flagged) == 1 and flagged[0].version in message  # published, for audit
    doc = read_document(quality_dir(cfg.output_root, cfg.name), flagged[0].version)
    assert doc["flagged"] is True and doc["flags"][0]["metric"] == "conditional_accuracy_published"
    index = (Path(quality_dir(cfg.output_root, cfg.name)) / "index.html").read_text()
    assert flagged[0].version in index and "flagged" in index.lower()


def latest_version_all(cfg) -> list:
    from diffusion.data.shards import list_versions

    return list_versions(cfg.output_root, cfg.name)


@pytest.mark.slow
def test_latest_skips_flagged_versions_unless_asked(graded) -> None:
    cfg, first, _ = graded
    newest = latest_version_all(cfg)[-1]
    assert newest.version != first.version.version
    assert latest_version(cfg.output_root, cfg.name).version == first.version.version
    assert latest_version(cfg.output_root, cfg.name, include_flagged=True).version == newest.version
    assert open_version(f"{cfg.output_root}/{cfg.name}/latest").version == first.version.version


def test_monitor_flags_each_broken_bound_and_unmeasured_metrics() -> None:
    monitor = MonitorConfig(floors={"cas_ratio": 0.97, "coverage_ratio": 0.8}, ceilings={"dcr_share": 0.6})
    metrics = {"cas_ratio": 0.99, "coverage_ratio": math.nan, "dcr_share": 0.61}
    flags = check(metrics, monitor)
    assert [(f.metric, f.kind) for f in flags] == [("coverage_ratio", "floor"), ("dcr_share", "ceiling")]
    assert flags[1].describe() == "dcr_share 0.61 above its ceiling 0.6"
    assert "not measured" in flags[0].describe()
    assert check({"cas_ratio": 0.97, "coverage_ratio": 0.8, "dcr_share": 0.6}, monitor) == []


@pytest.mark.parametrize(
    ("monitor", "expected"),
    [
        ({"floors": {"accuracy": 0.9}}, "monitor: floors.accuracy: not a headline metric"),
        (
            {"ceilings": {"dcr_share": 1.2}},
            "monitor: ceilings.dcr_share: 1.2 lies outside the metric's range",
        ),
        (
            {"floors": {"cas_ratio": 0.99}, "ceilings": {"cas_ratio": 0.9}},
            "monitor: floors.cas_ratio (0.99) is above ceilings.cas_ratio (0.9)",
        ),
        ({"floors": {"cas_ratio": "high"}}, "monitor.floors.cas_ratio: Input should be a valid number"),
    ],
)
def test_bad_monitor_keys_are_one_line(monitor: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"monitor": monitor})
    assert expected in str(err.value) and "\n" not in str(err.value)


def _digits(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffusion.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_evaluating_a_folder_that_is_not_a_version_exits_2(tmp_path: Path, tiny_models) -> None:
    (tmp_path / "not-a-version").mkdir()
    proc = _digits(
        "evaluate",
        "--version",
        str(tmp_path / "not-a-version"),
        "--document",
        str(tmp_path / "doc.json"),
        "--metrics",
        str(tmp_path / "m.json"),
        "--classes",
        str(tmp_path / "c.csv"),
        "--confusion",
        str(tmp_path / "x.csv"),
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip()
        == f"error: {tmp_path / 'not-a-version'}: not a published version (no manifest.json)"
    )
    assert not any((tmp_path / f).exists() for f in ("doc.json", "m.json", "c.csv", "x.csv"))


def test_a_missing_evaluator_stops_generate_before_any_work(tmp_path: Path) -> None:
    proc = _digits(
        "generate", "--evaluator", str(tmp_path / "nope"), "--output-root", str(tmp_path), cwd=REPO
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: --evaluator: {tmp_path / 'nope'} not found")
    assert list(tmp_path.iterdir()) == []  # nothing staged or published


def test_latest_of_nothing_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no published version"):
        latest_version(str(tmp_path), "none")


def test_the_shipped_automation_installs_on_a_prefect_server(prefect_server) -> None:
    """flows/automations/pause-on-failed-run.yaml, created with Prefect's own CLI on a real server, reads
    back as a trigger on Failed runs of the scheduled deployment that pauses it."""
    import asyncio
    import os

    from prefect.client.orchestration import get_client

    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "prefect"),
            "automation",
            "create",
            "--from-file",
            "flows/automations/pause-on-failed-run.yaml",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    async def read() -> list:
        async with get_client() as client:
            return await client.read_automations_by_name("digits-pause-on-failed-generation")

    (automation,) = asyncio.run(read())
    assert automation.trigger.expect == {"prefect.flow-run.Failed"}
    assert automation.trigger.match_related.root["prefect.resource.name"] == "synthetic-digits-scheduled"
    assert [a.type for a in automation.actions] == ["pause-deployment"]


@pytest.mark.slow
def test_digits_generate_grades_by_default_and_exits_1_on_a_flag(
    prefect_server, tiny_models, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The command users and schedules run: publish, grade, and one `alert:` line with exit 1."""
    import yaml

    from diffusion.cli import main

    cfg = tiny_generate(tiny_models, tmp_path, per_class={1: 3, 8: 3})  # > prdc_k + 1 digits
    params = {
        "generate": cfg.model_dump(mode="json"),
        "quality": {"copy_distance": 0.01, "max_memorization": 1.0},
        "hardware": {"precision": "fp32"},
        "evaluate": TINY_EVALUATE.model_dump(mode="json"),
        "monitor": {"ceilings": {"label_issue_rate": 0.0}, "floors": {"coverage_ratio": 10.0}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    paths = [f"--{k}={tiny_models[k]}" for k in ("model", "classifier", "train", "evaluator", "val", "test")]
    handed = tmp_path / "generated.json"
    argv = ["generate", "--params", str(tmp_path / "params.yaml"), *paths, f"--published={handed}"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    (version,) = latest_version_all(cfg)
    assert json.loads(handed.read_text())["version"] == version.version  # published, and said where
    assert err.startswith(f"alert: tiny-digits {version.version} flagged: coverage_ratio")
    assert "below its floor 10" in err
    doc = read_document(quality_dir(cfg.output_root, cfg.name), version.version)
    assert doc["flagged"] and {f["metric"] for f in doc["flags"]} >= {"coverage_ratio"}


def _fake_versions(root: Path, name: str, count: int) -> list[str]:
    """`count` tiny published versions of `name`, oldest first (real publish_version, real schema)."""
    from diffusion.data.schema import digits_table
    from diffusion.data.shards import publish_version
    from tests.judges_fixtures import render_digits

    images, labels = render_digits(4, seed=0)
    paths = []
    for i in range(count):
        table = digits_table([f"v{i}-{j}" for j in range(4)], images, labels, "rendered")
        manifest = {"created_at": f"2026-12-0{i + 1}T00:00:00+00:00"}
        paths.append(publish_version(str(root), name, f"v{i}", {"train": table}, 10, "card", manifest).path)
    return paths


def test_latest_wants_a_graded_unflagged_version_and_ignores_stray_files(tmp_path: Path) -> None:
    from diffusion.data.evaluations import write_document

    _fake_versions(tmp_path, "ds", 3)
    out = quality_dir(str(tmp_path), "ds")
    (tmp_path / "ds" / "index.html").write_text("a page someone left here")  # not a version
    with pytest.raises(DataError, match=r"none of its 3 published versions .* \(3 not graded\)"):
        latest_version(str(tmp_path), "ds")
    assert latest_version(str(tmp_path), "ds", include_ungraded=True).version == "v2"
    write_document(
        out, {"name": "ds", "version": "v0", "metrics": {"cas_ratio": 1.0}, "flagged": False, "flags": []}
    )
    write_document(
        out,
        {
            "name": "ds",
            "version": "v1",
            "metrics": {"cas_ratio": 1.0},
            "flagged": True,
            "flags": [{"metric": "x"}],
        },
    )
    assert latest_version(str(tmp_path), "ds").version == "v0"  # v2 ungraded, v1 flagged
    assert latest_version(str(tmp_path), "ds", include_flagged=True).version == "v1"
    assert open_version(f"file://{tmp_path}/ds/latest").path == f"file://{tmp_path}/ds/v0"  # keeps its root
    with pytest.raises(DataError, match="nope://x: cannot open .Protocol not known"):
        open_version("nope://x/ds/latest")


def test_latest_passes_over_a_broken_manifest_or_another_version_s_document(tmp_path: Path) -> None:
    from diffusion.data.evaluations import write_document

    _fake_versions(tmp_path, "ds", 3)
    out = quality_dir(str(tmp_path), "ds")
    for version in ("v0", "v1"):
        doc = {"name": "ds", "version": version, "metrics": {"cas_ratio": 1.0}, "flagged": False, "flags": []}
        write_document(out, doc)
    (tmp_path / "ds" / "v0" / "manifest.json").write_text("{")  # an old version broken: no one's problem
    misfiled = Path(out) / "v2" / "evaluation.json"  # v1's grading copied to v2, which nobody graded
    misfiled.parent.mkdir()
    misfiled.write_text((Path(out) / "v1" / "evaluation.json").read_text())
    assert latest_version(str(tmp_path), "ds").version == "v1"
    with pytest.raises(DataError, match="the evaluation document of version 'v1', not of 'v2'"):
        read_document(out, "v2")
    shutil.rmtree(Path(out) / "v1")
    with pytest.raises(DataError, match=r"none of its 3 published versions .*\(1 not graded, 2 broken;"):
        latest_version(str(tmp_path), "ds")


def test_report_pages_never_go_inside_the_versions(tmp_path: Path) -> None:
    from diffusion.cli import main

    _fake_versions(tmp_path / "pub", "synthetic-digits", 1)
    assert main(["report", "--versions", str(tmp_path / "pub"), "--out", str(tmp_path / "pub")]) == 2
    assert not (tmp_path / "pub" / "synthetic-digits" / "index.html").exists()


def test_the_label_audit_of_a_single_class_version_flags_nothing() -> None:
    import numpy as np

    from diffusion.quality.measures import label_issues

    probs = np.full((5, 10), 0.1)
    assert label_issues(np.full(5, 3), probs).tolist() == [False] * 5


def test_a_flagged_old_flat_document_is_one_alert_line() -> None:
    from diffusion.errors import QualityAlert
    from diffusion.quality.monitor import raise_if_flagged

    with pytest.raises(QualityAlert, match="flagged: no bound recorded"):
        raise_if_flagged({"flagged": 1, "cas_ratio": 0.5, "version": "v0"})


def test_only_a_grading_can_be_reported_as_one_and_a_flat_flag_still_counts(tmp_path: Path, capsys) -> None:
    from diffusion.cli import main
    from diffusion.data.evaluations import is_flagged, write_document

    pub = tmp_path / "pub"
    (v0,) = _fake_versions(pub, "synthetic-digits", 1)
    out = quality_dir(str(pub), "synthetic-digits")
    graded = {"name": "synthetic-digits", "version": "v0", "metrics": {"cas_ratio": 0.9}}
    write_document(out, {**graded, "flags": [{"metric": "cas_ratio"}], "flagged": True})
    before = Path(out, "v0", "evaluation.json").read_bytes()
    flat = tmp_path / "evaluate.json"  # what `digits evaluate --metrics` writes: not a document
    flat.write_text(json.dumps({"version": "v0", "cas_ratio": 0.9, "flagged": 1}))
    edited = tmp_path / "edited.json"  # a hand-cleared flag that still lists its flags
    edited.write_text(json.dumps({**graded, "flags": [{"metric": "cas_ratio"}], "flagged": False}))
    for given, says in ((flat, "'metrics' should be a JSON object"), (edited, "'flagged' is false but")):
        code = main(["report", "--versions", str(pub), "--version", v0, "--evaluation", str(given)])
        assert code == 2 and says in capsys.readouterr().err
    elsewhere = tmp_path / "other"  # a version of the same name under another root is not this one
    (other,) = _fake_versions(elsewhere, "synthetic-digits", 1)
    assert main(["report", "--versions", str(pub), "--version", other]) == 2
    assert f"{other}: not a version of {pub}/synthetic-digits" in capsys.readouterr().err
    assert Path(out, "v0", "evaluation.json").read_bytes() == before
    assert not Path(out, "index.html").exists()  # nothing written by the refused commands
    with pytest.raises(DataError, match="none of its 1 published versions"):
        latest_version(str(pub), "synthetic-digits")  # still flagged
    assert is_flagged({"cas_ratio": 0.9, "flagged": 1}) and not is_flagged({"cas_ratio": 0.9, "flagged": 0})


def test_an_evaluation_is_never_written_inside_the_version_it_grades(tmp_path: Path, capsys) -> None:
    from diffusion.cli import main

    (v0,) = _fake_versions(tmp_path / "pub", "synthetic-digits", 1)
    files = [f"--{f}={tmp_path / f}.out" for f in ("metrics", "classes", "confusion")]
    code = main(["evaluate", "--version", v0, "--document", f"{v0}/evaluation.json", *files])
    said = f"--document {v0}/evaluation.json: writing it would change --version {v0}; give a path outside"
    assert code == 2 and said in capsys.readouterr().err  # every command's check of its output flags
    assert not Path(v0, "evaluation.json").exists() and not list(tmp_path.glob("*.out"))
    named = tmp_path / "generated.json"  # a version named through the JSON file generate hands on
    named.write_text(json.dumps({"path": v0, "version": Path(v0).name}))
    code = main(["evaluate", "--version", str(named), "--document", f"{v0}/evaluation.json", *files])
    said = f"--document: {v0}/evaluation.json is inside the published version"
    assert code == 2 and said in capsys.readouterr().err  # the version it names, opened: cmd_evaluate's check
    assert not Path(v0, "evaluation.json").exists() and not list(tmp_path.glob("*.out"))


def test_a_json_file_without_metrics_is_no_grading_and_a_home_root_is_one_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusion.quality.report import build_reports

    monkeypatch.setenv("HOME", str(tmp_path))
    (v0,) = _fake_versions(tmp_path / "pub", "ds", 1)
    out = Path(quality_dir(str(tmp_path / "pub"), "ds"))
    (out / "v0").mkdir(parents=True)
    (out / "v0" / "evaluation.json").write_text(json.dumps({"path": "generated/ds/v0", "version": "v0"}))
    with pytest.raises(DataError, match="not an evaluation document .no metrics."):
        read_document(str(out), "v0")  # a copied generated.json is no old flat document either
    (out / "v0" / "evaluation.json").unlink()
    index = build_reports("~/pub", "ds", str(out), version=v0)  # fsspec expands ~: the same root
    assert Path(index).is_file()


def test_a_dask_address_without_a_valid_port_is_one_line() -> None:
    from diffusion.config.generate import TaskRunnerConfig
    from diffusion.generate.inputs import check_task_runner
    from diffusion.generate.plan import GenerationError

    for address in ("tcp://127.0.0.1:abc", "tcp://127.0.0.1:70000"):
        with pytest.raises(GenerationError, match="generate.task_runner.address: .* has no valid port"):
            check_task_runner(TaskRunnerConfig(kind="dask", address=address))
    check_task_runner(TaskRunnerConfig(kind="dask"))  # a local cluster: nothing to reach


def test_a_root_is_one_root_in_any_spelling_and_a_bad_manifest_is_one_line(tmp_path: Path, capsys) -> None:
    from diffusion.cli import main
    from diffusion.data.datasets import published_dataset

    (v0,) = _fake_versions(tmp_path / "pub", "synthetic-digits", 1)
    (tmp_path / "link").symlink_to(tmp_path / "pub")
    (tmp_path / "x").mkdir()
    out = tmp_path / "reports"
    for root in (f"{tmp_path}/pub/", f"{tmp_path}/link", f"{tmp_path}/x/../pub"):  # slash, symlink, ..
        assert main(["report", "--versions", root, "--version", v0, "--out", str(out)]) == 0, root
    capsys.readouterr()
    with pytest.raises(DataError, match="named twice"):
        published_dataset([v0, f"{tmp_path}/link/synthetic-digits/v0"])
    bad = tmp_path / "bad" / "synthetic-digits" / "v9"
    bad.mkdir(parents=True)
    for files in ("[{}]", '["x"]', '[{"path": "data/train-0.parquet"}]'):
        (bad / "manifest.json").write_text(f'{{"files": {files}}}')
        with pytest.raises(DataError, match="'files' should list objects with a 'path' and a 'sha256'"):
            open_version(bad)
    from diffusion.data.evaluations import is_flagged  # a boolean is no metric of an old flat document

    (out / "synthetic-digits" / "v0" / "evaluation.json").write_text('{"version": "v0", "ok": true}')
    with pytest.raises(DataError, match="no metrics"):
        read_document(str(out / "synthetic-digits"), "v0")
    assert not is_flagged(None)


def test_a_versions_root_of_an_unknown_protocol_is_one_line(tmp_path: Path, capsys) -> None:
    from diffusion.cli import main

    code = main(["report", "--versions", "nope://b", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.startswith("error: nope://b: cannot open (Protocol not known")
        and err.count("\n") == 1
    )
    with pytest.raises(DataError, match="nope://b: cannot open"):
        latest_version("nope://b", "ds")
