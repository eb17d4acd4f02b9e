"""Publishing for real (Prefect, Great Expectations, `datasets`): retries that really retry I/O failures,
a gate over every split a version holds, a card `datasets` reads without complaint, staging garbage
collection, and one-line errors from the stages around publishing (evaluate, report, gc)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from diffusion.cli import main
from diffusion.config import QualityConfig
from diffusion.data.handoff import published_path
from diffusion.data.shards import list_versions
from diffusion.errors import DataError, is_transient
from diffusion.generate import staging
from diffusion.quality.expectations import GateError
from flows.generate import generate_dataset
from tests.generate_fixtures import LOOSE, run_generate, tiny_generate

_run = run_generate


class OneFault:
    """Fails the first write or rename whose file name matches, with a transient EIO, then lets all pass."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, what: str, match: str):
        self.match, self.fired = match, 0
        original = getattr(Path, what)

        def faulty(path: Path, *args, **kwargs):
            if not self.fired and self.match in path.name:
                self.fired += 1
                raise OSError(errno.EIO, "Input/output error (injected)", str(path))
            return original(path, *args, **kwargs)

        monkeypatch.setattr(Path, what, faulty)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("what", "match"),
    [
        ("write_bytes", "train-00000"),  # a data shard
        ("write_bytes", "README.md"),  # the card
        ("write_bytes", "manifest.json"),  # the manifest
        ("rename", ".tmp-"),  # the version folder's final rename
    ],
)
def test_a_transient_io_error_at_each_write_of_publish_is_retried_and_publishes_once(
    prefect_server, tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, match: str
) -> None:
    cfg = tiny_generate(tiny_models, tmp_path, per_class={3: 2})
    fault = OneFault(monkeypatch, what, match)
    result = _run(cfg, tiny_models)
    assert fault.fired == 1 and not result.version.reused
    (version,) = list_versions(cfg.output_root, cfg.name)
    assert version.version == result.version.version
    assert not [p for p in Path(cfg.output_root).rglob(".*")]  # nothing half-written is left


@pytest.mark.slow
def test_a_transient_io_error_reading_a_staged_shard_is_retried(
    prefect_server, tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_generate(tiny_models, tmp_path, per_class={3: 2})
    fired, read_table = [], pq.read_table

    def flaky(path, *args, **kwargs):  # the staged shard's disk hiccups once
        if not fired and "c3-j00000" in str(path) and Path(path).is_file():  # publish reads it
            fired.append(path)
            raise OSError(errno.EIO, "Input/output error (injected)")
        return read_table(path, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", flaky)
    result = _run(cfg, tiny_models)
    assert len(fired) == 1 and [v.version for v in list_versions(cfg.output_root, cfg.name)] == [
        result.version.version
    ]


@pytest.mark.slow
def test_bad_input_at_publish_is_not_retried(
    prefect_server, tiny_models, tmp_path: Path, monkeypatch
) -> None:
    cfg = tiny_generate(tiny_models, tmp_path, per_class={3: 2})
    first = _run(cfg, tiny_models)
    calls = []
    original = generate_dataset.fn.__globals__["publish_run"]
    monkeypatch.setitem(
        generate_dataset.fn.__globals__, "publish_run", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    manifest = Path(first.version.path) / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"content_sha256": "', '"content_sha256": "0'))
    with pytest.raises(DataError, match="'files' no longer hashes to its 'content_sha256'"):
        _run(cfg, tiny_models)
    assert len(calls) == 1  # a DataError with no I/O cause fails once, never retried


@pytest.mark.slow
def test_a_tampered_staged_shard_is_stopped_by_the_unfiltered_splits_gate(
    prefect_server, tiny_models, tmp_path: Path
) -> None:
    cfg = tiny_generate(tiny_models, tmp_path, per_class={3: 2, 5: 1})
    everything_copies = QualityConfig(copy_distance=10.0, max_memorization=0.0)
    with pytest.raises(GateError):  # gated out: the staging stays for a rerun
        _run(cfg, tiny_models, everything_copies)
    (shard,) = Path(cfg.staging_dir).glob("*/c5-j*.parquet")
    table = pq.read_table(shard)
    labels, accepted = table.column("label").to_pylist(), table.column("accepted").to_pylist()
    assert sum(accepted) >= 2, "the loose tiny filter accepts most digits"
    labels[max(i for i, a in enumerate(accepted) if a)] = 10  # an accepted row past the one published
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))
    pq.write_table(table, shard)
    with pytest.raises(GateError, match=r"unfiltered: expect_column_values_to_be_in_set\(label\)") as err:
        _run(cfg, tiny_models)
    assert "\n" not in str(err.value)
    assert not list_versions(cfg.output_root, cfg.name)


@pytest.mark.slow
def test_the_card_loads_with_datasets_without_a_warning(
    prefect_server, tiny_models, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import datasets

    result = _run(tiny_generate(tiny_models, tmp_path, per_class={1: 2, 2: 2}), tiny_models)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = datasets.load_dataset(result.version.path, cache_dir=str(tmp_path / "hf-cache"))
        streamed = datasets.load_dataset(result.version.path, streaming=True)
        assert len(list(streamed["train"])) == 4
    assert ds["train"].num_rows == 4 and ds["unfiltered"].num_rows >= 4
    card = (Path(result.version.path) / "README.md").read_text()
    splits = yaml.safe_load(card.split("---")[1])["dataset_info"]["splits"]
    assert [s["name"] for s in splits] == ["train", "unfiltered"]
    assert all(s["num_bytes"] > 0 and s["num_examples"] > 0 for s in splits)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.message for r in caplog.records
    ]


def test_garbage_collection_removes_abandoned_and_trashed_staging(tmp_path: Path, capsys) -> None:
    root = tmp_path / "staging"
    old, fresh, trash = root / "aaaa", root / "bbbb", root / f"{staging.TRASH}cccc-1234"
    for folder in (old, fresh, trash):
        folder.mkdir(parents=True)
        (folder / "c1-j00000.parquet").write_bytes(b"x")
        (folder / "run.json").write_text("{}")
    (root / "diffusion-resume").mkdir()  # not a run's folder: gc leaves it alone, however old
    orphan = root / "0123456789ab"  # a run id's folder restaged without its run.json (removed under it)
    orphan.mkdir()
    (orphan / "c2-j00001.parquet").write_bytes(b"x")
    os.utime(root / "diffusion-resume", (0, 0))
    week_ago = time.time() - 7 * 86400
    for path in (old, old / "c1-j00000.parquet", old / "run.json", orphan, orphan / "c2-j00001.parquet"):
        os.utime(path, (week_ago, week_ago))
    assert staging.collect_garbage(root, older_than_days=3) == [trash, orphan, old]
    assert sorted(p.name for p in root.iterdir()) == ["bbbb", "diffusion-resume"]
    staging.discard(fresh)  # a published run's folder: renamed away, then removed
    assert [p.name for p in root.iterdir()] == ["diffusion-resume"]
    params = tmp_path / "params.yaml"
    published = tmp_path / "published"
    params.write_text(f"generate:\n  staging_dir: {root}\n  output_root: {published}\n  name: ds\n")
    for bad in ("-1", "nan", "x"):
        assert main(["gc", "--params", str(params), "--older-than", bad]) == 2
        assert "--older-than: expected a number of days >= 0" in capsys.readouterr().err
    # a run killed while it wrote its version leaves a .tmp- folder in the output root: gone once old enough
    unfinished, version = published / "ds" / ".tmp-20261207-000000-abcd1234-0f0f0f0f", published / "ds" / "v1"
    for folder in (unfinished, version):
        (folder / "data").mkdir(parents=True)
    assert main(["gc", "--params", str(params), "--older-than", "1"]) == 0
    assert unfinished.is_dir()  # fresh: perhaps a publish under way
    assert main(["gc", "--params", str(params), "--older-than", "0"]) == 0
    assert "and 1 unfinished version folder(s) from" in capsys.readouterr().out
    assert not unfinished.exists() and version.is_dir()
    unfinished.mkdir()  # a file:// root is a local folder too; an object store has no such folders
    assert staging.collect_unfinished_publishes(f"file://{published}", "ds", 0) == [unfinished]
    assert staging.collect_unfinished_publishes("nope://bucket/datasets", "ds", 0) == []


def test_transient_means_an_io_error_somewhere_in_the_causes() -> None:
    def chain(*errors: BaseException, suppress: bool = False) -> BaseException:
        """errors[0] raised from errors[1] raised from ..., the last one raised first."""
        for outer, inner in zip(errors, errors[1:], strict=False):
            outer.__cause__ = inner
        if suppress:
            errors[0].__suppress_context__ = True
        return errors[0]

    eio = OSError(errno.EIO, "Input/output error")
    assert is_transient(eio) and is_transient(chain(GateError("x"), DataError("y"), eio))  # two levels deep
    implicit = DataError("while handling")
    implicit.__context__ = OSError(errno.EIO, "disk")
    assert is_transient(implicit)  # raised inside an `except OSError:` block
    hidden = DataError("from None")
    hidden.__context__, hidden.__suppress_context__ = OSError(errno.EIO, "disk"), True
    assert not is_transient(hidden)  # `raise ... from None` ends the chain: bad input
    for bad in (FileNotFoundError("x"), PermissionError("x"), IsADirectoryError("x"), DataError("bad")):
        assert not is_transient(bad) and not is_transient(chain(DataError("wrapped"), bad))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--version", "{tmp}/not-a-version"], "not a published version (no manifest.json)"),
        (["evaluate", "--version", "{tmp}/missing.json"], "missing.json: no such file"),
        (["evaluate", "--version", "{tmp}/bad.json"], "bad.json: cannot read"),
        (["evaluate", "--version", "{tmp}/list.json"], "list.json: expected the version"),
        (["evaluate", "--version", "{tmp}/folder.json"], "folder.json: cannot read"),  # a folder named .json
        (
            ["report", "--versions", "{tmp}", "--evaluation", "{tmp}/missing.json"],
            "missing.json: no such file",
        ),
        (
            ["report", "--versions", "{tmp}", "--evaluation", "{tmp}/list.json"],
            "list.json: expected an evaluation",
        ),
        (["report", "--versions", "{tmp}/nothing"], "no published versions"),
        (["report", "--versions", "{tmp}/nothing", "--version", "{tmp}/v1"], "v1: not a published version"),
    ],
)
def test_stages_around_publishing_give_one_line_on_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "not-a-version").mkdir()
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1]")
    args = [a.format(tmp=tmp_path) for a in argv]
    if args[0] == "evaluate":
        args += ["--metrics", str(tmp_path / "m.json"), "--classes", str(tmp_path / "c.csv")]
        args += ["--confusion", str(tmp_path / "x.csv"), "--document", str(tmp_path / "doc.json")]
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    assert main([*args[:1], "--params", str(params), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "doc.json").exists()


@pytest.mark.slow
def test_one_cli_run_prepares_once(prefect_server, tiny_models, tmp_path: Path, monkeypatch) -> None:
    import yaml

    import diffusion.generate.run as run_module
    import flows.generate as flow_module

    cfg = tiny_generate(tiny_models, tmp_path, per_class={2: 2})
    params = tmp_path / "params.yaml"
    raw = {"generate": cfg.model_dump(mode="json"), "quality": LOOSE.model_dump(mode="json")}
    params.write_text(yaml.safe_dump({**raw, "hardware": {"precision": "fp32"}}))
    calls, prepare = [], run_module.prepare_run
    counted = lambda *a, **k: calls.append(1) or prepare(*a, **k)  # noqa: E731
    monkeypatch.setattr(run_module, "prepare_run", counted)
    monkeypatch.setattr(flow_module, "prepare_run", counted)
    models = ["--model", tiny_models["model"], "--classifier", tiny_models["classifier"]]
    handed = tmp_path / "generated.json"
    argv = [
        "generate",
        "--params",
        str(params),
        "--no-grade",
        *models,
        "--train",
        tiny_models["train"],
        "--published",
        str(handed),
    ]
    assert main(argv) == 0
    assert len(calls) == 1
    named = json.loads(handed.read_text())
    assert named["version"] == list_versions(cfg.output_root, cfg.name)[0].version
    # the folder is named relative to the JSON file's, so a checkout moved elsewhere still finds its own copy
    assert not Path(named["path"]).is_absolute()
    assert Path(published_path(str(handed))).resolve() == Path(
        list_versions(cfg.output_root, cfg.name)[0].path
    )
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path, moved, ignore=shutil.ignore_patterns("moved"))
    found = Path(published_path(str(moved / "generated.json"))).resolve()
    assert found.is_relative_to(moved.resolve()) and (found / "manifest.json").is_file()
