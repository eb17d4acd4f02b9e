"""`dvc repro` for real, in a temporary git + DVC copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import copy_repo


def _dvc(repo: Path, *args: str, imports: Path | None = None) -> str:
    """`dvc <args>` in `repo`; with `imports`, every `digits` process it starts logs the modules it loaded there
    (`_log_imports`)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if imports is not None:
        env |= {"PYTHONPATH": str(imports), "DIGITS_IMPORT_LOG": str(imports)}
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# A sitecustomize for the test's processes alone: at exit, a `digits` process writes its argv and the files
# of every module it imported, so the test sees what each stage really ran.
_LOG_IMPORTS = """
import atexit, json, os, sys

def _log():
    if os.path.basename(sys.argv[0]) != "digits":
        return
    files = sorted({str(getattr(m, "__file__", None)) for m in list(sys.modules.values())} - {"None"})
    with open(os.path.join(os.environ["DIGITS_IMPORT_LOG"], f"{os.getpid()}.json"), "w") as f:
        json.dump({"argv": sys.argv, "files": files}, f)

atexit.register(_log)
"""


def _uncovered_code(repo: Path, imports: Path) -> dict[str, list[str]]:
    """Per DVC stage (both pipelines), the project's source files its `digits` command imported that none
    of its `deps` names (a file, or a folder above it): code that could change without DVC rerunning it."""
    import diffusion

    source = Path(diffusion.__file__).resolve().parents[1]  # where `digits` imports the project from
    loaded: dict[str, set[str]] = {}
    for log in imports.glob("*.json"):
        entry = json.loads(log.read_text())
        for file in map(Path, entry["files"]):
            ours = any(file.resolve().is_relative_to(source / package) for package in ("diffusion", "flows"))
            if ours and file.suffix == ".py" and file.stat().st_size:  # an empty __init__.py runs nothing
                loaded.setdefault(entry["argv"][1], set()).add(file.resolve().relative_to(source).as_posix())
    missing = {}
    for pipeline in ("dvc.yaml", "distill/dvc.yaml"):
        for stage, spec in yaml.safe_load((repo / pipeline).read_text())["stages"].items():
            command = spec["cmd"].split()[1]
            deps = [d.rstrip("/") for d in spec["deps"]]
            assert command in loaded, f"{stage}: `digits {command}` never ran"
            gaps = [f for f in loaded[command] if not any(f == d or f.startswith(f"{d}/") for d in deps)]
            if gaps:
                missing[stage] = sorted(gaps)
    return missing


@pytest.mark.slow
def test_dvc_repro_prepare(tmp_path: Path, npm_cache: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["cache_dir"] = str(npm_cache.parent)  # reuse the session's npm tarball
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    _dvc(repo, "repro", "prepare")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {o["path"]: o for o in lock["stages"]["prepare"]["outs"]}
    # the three splits and sources.json, one DVC directory output
    assert outs["data/prepared"]["nfiles"] == 4 and outs["data/prepared"]["md5"].endswith(".dir")
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["data"]["seed"] == 0
    assert pq.read_metadata(repo / "data/prepared/train.parquet").num_rows == 8000
    metrics = json.loads((repo / "metrics/data.json").read_text())
    assert metrics["test_count"] == 1001 and not any(isinstance(v, dict) for v in metrics.values())
    rows = (repo / "plots/data_classes.csv").read_text().splitlines()
    assert rows[0] == "class,train,val,test" and len(rows) == 11
    assert "up to date" in _dvc(repo, "status", "prepare")
    assert "didn't change, skipping" in _dvc(repo, "repro", "prepare")
    # A changed seed makes the stage out of date; the output is identical for the same seed.
    first = (repo / "data/prepared/train.parquet").read_bytes()
    _dvc(repo, "repro", "-f", "prepare")
    assert (repo / "data/prepared/train.parquet").read_bytes() == first


TINY = {
    "data": {"split": {"train": 0.1, "val": 0.05, "test": 0.85}},
    "classifier": {"train": {"epochs": 1}, "channels": [8, 16], "hidden": 32},
    "clip": {
        "train": {"epochs": 1},
        "width": 4,
        "text_width": 32,
        "text_layers": 1,
        "embed_dim": 16,
    },
    "evaluator": {"train": {"epochs": 1}, "widths": [8, 8, 16]},
    "evaluate": {"cas": {"batch_size": 16, "max_epochs": 1, "patience": 1, "seeds": [0]}},
    "diffusion": {
        "unet": {"base_channels": 8, "channel_mults": [1, 2], "attention": False},
        "train": {"steps": 12, "batch_size": 16, "checkpoint_every": 5, "log_every": 4, "val_batches": 1},
        "sampler": {"steps": 3},
        "eval": {"n_samples": 20, "grid_per_class": 2},
    },
    "generate": {
        "per_class": 2,
        "seed_block": 4,
        "task_size": 8,
        "sampler": {"steps": 2, "guidance": 1.0},
        "filter": {"require_pred_match": False, "min_clip_margin": None, "min_classifier_prob": None},
        "shard_rows": 8,
    },
    "distill": {
        "guidance_range": [1.0, 3.0],  # w an input of the students: generation below asks for 1.5
        "teacher_steps": 4,
        "min_steps": 1,  # students for 4, 2 and 1 steps (params.yaml stops at 4)
        "guidance_steps": 3,
        "round_steps": 2,
        "batch_size": 8,
        "checkpoint_every": 2,
        "log_every": 1,
    },
}


def _merge(base: dict, over: dict) -> dict:
    return {k: _merge(base[k], v) if isinstance(v, dict) else v for k, v in over.items()} | {
        k: v for k, v in base.items() if k not in over
    }


@pytest.mark.slow
def test_dvc_repro_whole_pipeline_on_a_tiny_config(tmp_path: Path, npm_cache: Path) -> None:
    """Every stage runs through `dvc repro`; dvc.lock pins each checkpoint; the metrics are DVC metrics."""
    repo = copy_repo(tmp_path / "repo")
    params = _merge(yaml.safe_load((repo / "params.yaml").read_text()), TINY)
    params["data"]["cache_dir"] = str(npm_cache.parent)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    imports = tmp_path / "imports"
    imports.mkdir()
    (imports / "sitecustomize.py").write_text(_LOG_IMPORTS)
    _dvc(repo, "repro", imports=imports)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage, folder in [
        ("train_classifier", "data/models/classifier"),
        ("train_clip", "data/models/clip"),
        ("train_diffusion", "data/models/diffusion"),
        ("train_evaluator", "data/models/evaluator"),
    ]:
        (out,) = [o for o in lock[stage]["outs"] if o["path"] == folder]
        assert out["md5"].endswith(".dir") and out["nfiles"] >= 2, (stage, out)
    assert lock["train_diffusion"]["params"]["params.yaml"]["diffusion.train"]["steps"] == 12
    diffusion = json.loads((repo / "metrics/diffusion.json").read_text())
    assert {"train_loss", "val_loss", "steps", "images_per_second", "sample_judge_accuracy"} <= set(diffusion)
    assert diffusion["steps"] == 12 and 0.0 <= diffusion["sample_judge_accuracy"] <= 1.0
    evaluated = json.loads((repo / "metrics/evaluate.json").read_text())
    assert {"cas_ratio", "conditional_accuracy_published", "frechet_distance", "memorization_rate"} <= set(
        evaluated
    )
    assert {"coverage_ratio", "dcr_share", "label_issue_rate"} <= set(evaluated)
    # a dozen training steps draw noise: the default monitor floors flag it, and the pipeline goes on
    document = json.loads((repo / "data/evaluation.json").read_text())
    assert evaluated["flagged"] == 1 and document["flagged"] is True
    assert "conditional_accuracy_published" in {f["metric"] for f in document["flags"]}
    report = repo / "reports" / "synthetic-digits" / evaluated["version"] / "index.html"
    assert 'id="cas_ratio"' in report.read_text() and (repo / "reports/synthetic-digits/index.html").is_file()
    assert (report.parent / "trajectory.png").is_file()  # drawn by the folder the manifest names
    generated = json.loads((repo / "metrics/generate.json").read_text())
    assert generated["requested"] == generated["accepted"] == 20
    (version,) = (repo / "data/generated/synthetic-digits").iterdir()
    assert (version / "manifest.json").is_file() and (version / "data_docs/index.html").is_file()
    (out,) = [o for o in lock["generate"]["outs"] if o["path"] == "data/generated"]
    assert out["md5"].endswith(".dir")
    for file in (repo / "metrics").glob("*.json"):  # one value per key: `dvc metrics show` draws a row
        values = json.loads(file.read_text()).values()
        assert all(v is None or isinstance(v, int | float | str) for v in values), file.name
    shown = _dvc(repo, "metrics", "show", "--json")
    assert "sample_judge_accuracy" in shown and "zero_shot_accuracy" in shown and "test_accuracy" in shown
    for picture in ["diffusion_samples.png", "forward_diffusion.png", "data_samples.png"]:
        assert (repo / "plots" / picture).stat().st_size > 0
    # evaluate and report take the version generate handed on, even when a newer one is published
    handed = json.loads((repo / "data/generated.json").read_text())
    assert handed["version"] == evaluated["version"] == version.name
    newer = version.with_name("29991231-000000-newer")
    shutil.copytree(version, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(
        json.dumps({**manifest, "version": newer.name, "created_at": "2999-12-31T00:00:00+00:00"})
    )
    _dvc(repo, "repro", "-f", "-s", "evaluate")  # this stage alone, on what generate handed on
    assert json.loads((repo / "metrics/evaluate.json").read_text())["version"] == version.name
    assert not list((repo / "data/cache/generate").iterdir())  # published: the run's staging is gone
    shutil.rmtree(newer)
    _dvc(repo, "repro")
    # A value the evaluate stage refuses: DVC removes the stage's outs before its command fails; the grading,
    # minutes of work, comes back from the DVC cache with the good params.
    graded = (repo / "data/evaluation.json").read_bytes()
    bad = _merge(params, {"monitor": {"floors": {"conditional_accuracy_published": 1.5}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(bad))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    failed = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "monitor" in failed.stdout + failed.stderr
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _dvc(repo, "checkout", "data/evaluation.json")
    assert (repo / "data/evaluation.json").read_bytes() == graded
    _dvc(repo, "repro")  # the metrics and plots, git's to restore in a real clone, written again
    # A network batch never changes a model: hardware.network_batch re-runs no training stage.
    params["hardware"]["network_batch"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    status = json.loads(_dvc(repo, "status", "--json"))
    assert not {s for s in status if s.startswith(("train_", "prepare"))}, status
    params["hardware"]["network_batch"] = 250
    # The serve section says when versions are made, never what they hold: it reruns nothing.
    params["serve"] = {"cron": "*/5 * * * *", "timezone": "Europe/Berlin", "overlap": "skip"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    status = json.loads(_dvc(repo, "status", "--json"))
    assert not {s for s in status if not s.startswith("distill/")}, status
    # A sampler change re-runs only the evaluation, never the training.
    params["diffusion"]["sampler"]["guidance"] = 2.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    status = json.loads(_dvc(repo, "status", "--json"))
    main = {s for s in status if not s.startswith("distill/")}  # the opt-in pipeline has not run yet
    assert main == {"evaluate_diffusion"}  # generate has its own sampler section

    # the opt-in distillation pipeline, then generation with its 2-step student
    assert "distill_diffusion" not in lock  # `dvc repro` (make run) never pays for it
    _dvc(repo, "repro", "distill/dvc.yaml", imports=imports)
    # every stage's deps name all the project code its command imported: an edit to it reruns the stage
    assert not _uncovered_code(repo, imports), _uncovered_code(repo, imports)
    distilled = yaml.safe_load((repo / "distill/dvc.lock").read_text())["stages"]["distill_diffusion"]
    (out,) = [o for o in distilled["outs"] if o["path"] == "data/models/distilled"]
    assert (
        out["path"] == "data/models/distilled" and out["nfiles"] == 4
    )  # config + students for 4, 2, 1 steps
    assert set(json.loads((repo / "metrics/distill.json").read_text())) >= {"loss_4", "loss_2", "loss_1"}
    params["generate"]["sampler"] = {"name": "distilled", "steps": 2, "guidance": 1.5}
    (repo / "distilled.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(
        ["digits", "generate", "--params", "distilled.yaml", "--no-grade", "--output-root", "students"]
        + ["--metrics", "students.json"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((repo / "students.json").read_text())
    assert metrics["requested"] == metrics["accepted"] == 20
    (student_version,) = (repo / "students/synthetic-digits").iterdir()
    manifest = json.loads((student_version / "manifest.json").read_text())
    assert manifest["params"]["sampler"]["name"] == "distilled"
