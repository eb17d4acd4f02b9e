"""Paths a user gets wrong: output flags that cannot be written stop a command before any work, grading inputs
are checked before `digits generate` publishes, and version names (`latest`, handed-on JSON files, broken
manifests) fail in one line naming what to give instead. Real files, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from diffusion.checkpoint import save_checkpoint
from diffusion.cli import main
from diffusion.data.datasets import open_version
from diffusion.data.evaluations import quality_dir, write_document
from diffusion.data.handoff import published_path
from diffusion.errors import DataError, DigitsError
from diffusion.quality.grading import Grading
from tests.test_bad_input import _run
from tests.test_data_consumers import publish, real_digits


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "--versions=V", "--out=FILE"], "--out FILE: cannot be written (a file, not a folder)"),
        (
            ["train-on", "--data=V", "--metrics=DIR"],
            "--metrics DIR: cannot be written (a folder, not a file)",
        ),
        (
            [
                "prepare",
                "--out=NEW/prepared",
                "--metrics=NEW/m.json",
                "--grid=FILE/g.png",
                "--classes=NEW/c.csv",
            ],
            "--grid FILE/g.png: cannot be written (FILE is a file, not a folder)",
        ),
        (
            [
                "evaluate",
                "--version=V",
                "--document=NEW/doc.json",
                "--metrics=NEW/m.json",
                "--classes=NEW/c.csv",
                "--confusion=DIR",
            ],
            "--confusion DIR: cannot be written (a folder, not a file)",
        ),
    ],
)
def test_an_output_that_cannot_be_written_stops_the_command_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "FILE").write_text("")
    (tmp_path / "DIR").mkdir()
    before = sorted(tmp_path.rglob("*"))
    named = [a.replace("=", f"={tmp_path}/", 1) if a.startswith("--") else a for a in argv]
    err = _run(tmp_path, {}, named, capsys)
    assert (
        message.replace("FILE", f"{tmp_path}/FILE")
        .replace("DIR", f"{tmp_path}/DIR")
        .replace("NEW", f"{tmp_path}/NEW")
        in err
    )
    assert sorted(p for p in tmp_path.rglob("*") if p.name != "params.yaml") == before  # nothing written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (  # the review's case: the test split and the document overwritten after minutes of grading
            [
                "evaluate",
                "--version=V",
                "--test=T.parquet",
                "--classes=T.parquet",
                "--document=D",
                "--metrics=M",
            ]
            + ["--confusion=C"],
            "--classes T.parquet: the same path as --test, which writing it would overwrite",
        ),
        (
            ["evaluate", "--version=V", "--document=D", "--metrics=D", "--classes=C", "--confusion=F"],
            "--document D: the same path as --metrics",
        ),
        (
            ["train-classifier", "--train=P/train.parquet", "--val=v", "--test=t", "--out=P", "--metrics=m"]
            + ["--confusion=c"],
            "--out P: writing it would change --train P/train.parquet",
        ),
        (
            ["evaluate-diffusion", "--model=MODEL", "--classifier=c", "--val=v", "--metrics=MODEL/m.json"]
            + ["--grid=g", "--strip=s"],
            "--metrics MODEL/m.json: writing it would change --model MODEL",
        ),
        (
            [
                "train-diffusion",
                "--train=t",
                "--val=v",
                "--out=OUT",
                "--resume-dir=OUT/resume",
                "--loss-plot=l",
            ],
            "--out OUT: writing it would change --resume-dir OUT/resume",
        ),
        (
            ["train-on", "--data=V", "--metrics=params.yaml"],
            "--metrics params.yaml: the same path as --params",
        ),
    ],
)
def test_an_output_never_overwrites_another_flag_s_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    before = sorted(tmp_path.rglob("*"))
    named = [a.replace("=", f"={tmp_path}/", 1) for a in argv]
    err = _run(tmp_path, {}, named, capsys)
    for name in ("T.parquet", "D", "P", "MODEL", "OUT", "params.yaml"):
        message = message.replace(f" {name}", f" {tmp_path}/{name}")
    assert message in err
    assert sorted(p for p in tmp_path.rglob("*") if p.name != "params.yaml") == before  # nothing written


def test_a_split_given_twice_or_copied_stops_the_command(tmp_path: Path, capsys) -> None:
    """The review's cases: early stopping on the test split, and testing on the training digits."""
    import shutil

    (tmp_path / "val.parquet").write_bytes(b"PAR1 val")
    shutil.copy(tmp_path / "val.parquet", tmp_path / "copy.parquet")
    grading = [f"--{f}={tmp_path / f}.out" for f in ("document", "metrics", "classes", "confusion")]
    for val, test in [("val.parquet", "val.parquet"), ("val.parquet", "copy.parquet")]:
        argv = ["evaluate", "--version=V", f"--val={tmp_path / val}", f"--test={tmp_path / test}", *grading]
        said = f"--test {tmp_path / test}: the same digits as --val {tmp_path / val}; give each split its own"
        assert said in _run(tmp_path, {}, argv, capsys)
    argv = [
        "train-on",
        "--data=V",
        f"--val={tmp_path / 'val.parquet'}",
        f"--real={tmp_path / 'copy.parquet'}",
    ]
    assert "--real" in _run(tmp_path, {}, argv, capsys) and not list(tmp_path.glob("*.out"))


def test_report_checks_its_model_before_writing_any_page(tmp_path: Path, capsys) -> None:
    save_checkpoint(tmp_path / "judge", "classifier", {"hidden": 8}, {})
    out = tmp_path / "reports"
    argv = ["report", f"--versions={tmp_path / 'none'}", f"--out={out}", f"--model={tmp_path / 'judge'}"]
    assert "expected a 'diffusion' checkpoint, found 'classifier'" in _run(tmp_path, {}, argv, capsys)
    assert not out.exists()


def test_generate_checks_what_grading_reads_before_it_publishes(tmp_path: Path) -> None:
    """`digits generate` grades what it publishes: an evaluator of another kind or a val file that is not
    Parquet must stop it before any sampling, not after the version is out."""
    real_digits(tmp_path, 20)
    real = str(tmp_path / "real-20.parquet")
    save_checkpoint(tmp_path / "judge", "classifier", {"hidden": 8}, {})
    save_checkpoint(tmp_path / "evaluator", "evaluator", {"widths": [4]}, {})
    (tmp_path / "empty.parquet").write_bytes(b"")
    cases = [
        (str(tmp_path / "judge"), real, "expected a 'evaluator' checkpoint, found 'classifier'"),
        (
            str(tmp_path / "evaluator"),
            str(tmp_path / "empty.parquet"),
            "empty.parquet: not a digits Parquet file",
        ),
    ]
    for evaluator, val, message in cases:
        grading = Grading(evaluator=evaluator, val_data=val, test_data=real)
        with pytest.raises(DigitsError, match=message) as err:
            grading.check_inputs()
        assert "\n" not in str(err.value)
    Grading(evaluator=str(tmp_path / "evaluator"), val_data=real, test_data=real).check_inputs()


def test_latest_resolves_a_relative_dataset_folder(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "published"
    for i, version in enumerate(["v1", "v2"]):
        publish(str(root), version, 100 * i)
        write_document(
            quality_dir(str(root), "tagged"),
            {"version": version, "metrics": {"cas_ratio": 1.0}, "flags": [], "flagged": False},
        )
    monkeypatch.chdir(root)
    assert open_version("tagged/latest").version == "v2"
    assert open_version("./tagged/latest").version == "v2"


def test_broken_version_names_are_one_line_saying_what_to_give(tmp_path: Path) -> None:
    root = tmp_path / "published"
    good = publish(str(root), "v1", 0)
    (root / "tagged" / "v2").mkdir()
    (root / "tagged" / "v2" / "manifest.json").write_text("[]")
    with pytest.raises(DataError, match=r"v2/manifest\.json: not a version manifest \(a JSON list") as err:
        open_version(f"{root}/tagged/latest")
    assert str(err.value).count("publish the version again") == 1
    (root / "tagged" / "v2" / "manifest.json").write_text('{"files": [')
    with pytest.raises(DataError, match="not a version manifest") as err:
        open_version(root / "tagged" / "v2")
    assert str(err.value).count("publish the version again") == 1
    shard = next(Path(good).glob("data/*.parquet"))
    with pytest.raises(DataError, match="a file, not a published version's folder"):
        open_version(shard)
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"path": good, "version": "v1", "metrics": {}}))
    with pytest.raises(DataError, match="an evaluation document, not the file `digits generate --published`"):
        published_path(str(evaluation))


def test_train_on_names_an_empty_version_and_reports_what_latest_was(tmp_path: Path, capsys) -> None:
    err = _run(tmp_path, {}, ["train-on", f"--data={tmp_path / 'v1'},"], capsys)
    assert "--data: an empty name" in err
    root = tmp_path / "published"
    version = publish(str(root), "v1", 0)
    write_document(
        quality_dir(str(root), "tagged"),
        {"version": "v1", "metrics": {"cas_ratio": 1.0}, "flags": [], "flagged": False},
    )
    real_digits(tmp_path, 20), real_digits(tmp_path, 21)
    val, test, metrics = tmp_path / "real-20.parquet", tmp_path / "real-21.parquet", tmp_path / "m.json"
    params = tmp_path / "small.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"cas": {"max_epochs": 1, "seeds": [0], "batch_size": 8}}}))
    argv = [
        "train-on",
        f"--data={root}/tagged/latest",
        f"--val={val}",
        f"--test={test}",
        f"--metrics={metrics}",
    ]
    assert main([*argv, "--params", str(params)]) == 0
    assert json.loads(metrics.read_text())["versions"] == [version]
    assert f"digits of {version}: real test accuracy" in capsys.readouterr().out


def test_report_names_a_version_folder_that_is_not_one(tmp_path: Path, capsys) -> None:
    (tmp_path / "prepared").mkdir()
    argv = ["report", f"--versions={tmp_path}", f"--version={tmp_path / 'prepared'}"]
    assert "prepared: not a published version (no manifest.json)" in _run(tmp_path, {}, argv, capsys)
