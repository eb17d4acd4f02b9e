"""Generation per (digit, style): a two-condition model asked for exact counts per pair publishes them, the
gate checks them, the card lists them; a digits-only model asked for a style stops before any work."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from diffusion.config import (
    ConfigError,
    EvaluateConfig,
    GenerateConfig,
    HardwareConfig,
    MonitorConfig,
    parse_params,
)
from diffusion.data.evaluations import quality_dir
from diffusion.data.shards import version_files
from diffusion.generate.plan import GenerationError
from diffusion.generate.run import prepare_run
from diffusion.model.saved import new_model, save_diffusion
from diffusion.quality.grading import Grading
from diffusion.quality.headline import METRICS
from diffusion.quality.report_page import write_page
from diffusion.styles import STYLES, cell, cell_name
from tests.generate_fixtures import TINY_DIFFUSION, run_generate, tiny_generate

PER_STYLE = {"printed": {0: 3, 7: 2}, "handwritten-mnist": {7: 2}}


@pytest.fixture(scope="module")
def styled_models(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tiny judges and data, with a random-weight two-condition U-Net."""
    cfg = TINY_DIFFUSION.model_copy(
        update={"unet": TINY_DIFFUSION.unet.model_copy(update={"num_styles": len(STYLES)})}
    )
    folder = tmp_path_factory.mktemp("styled") / "diffusion"
    unet = new_model(cfg, torch.device("cpu"))
    save_diffusion(folder, cfg, unet.state_dict(), unet.state_dict(), {"steps": 0}, list(STYLES))
    return {**tiny_models, "model": str(folder)}


def test_counts_are_per_digit_and_style() -> None:
    cfg = GenerateConfig(per_style=PER_STYLE)
    assert cfg.counts() == {7: 2, cell(0, 1): 3, cell(7, 1): 2}
    assert [cell_name(c) for c in cfg.counts()] == ["7", "printed/0", "printed/7"]
    assert GenerateConfig(per_class={3: 4}).counts() == {3: 4}  # handwritten-mnist: the digits themselves


def test_a_per_style_mapping_survives_a_json_round_trip() -> None:
    """What `--output-root` and a served deployment do with the params: dump to JSON (digit keys become
    strings) and validate again."""
    params = parse_params({"generate": {"per_class": None, "per_style": PER_STYLE}})
    again = parse_params(json.loads(json.dumps(params.model_dump(mode="json"))))
    assert again.generate.counts() == params.generate.counts()


@pytest.mark.parametrize(
    ("generate", "expected"),
    [
        ({"per_style": {"cursive": 3}}, "generate: per_style: unknown style 'cursive'"),
        (
            {"per_style": {"printed": 3}, "per_class": 2},
            "generate: set per_class: null when per_style is given",
        ),
        ({"per_class": None}, "generate: per_class: give a count"),
        ({"per_style": {}, "per_class": None}, "generate: per_style: ask for at least one digit"),
        ({"per_style": {"printed": {11: 3}}}, "generate: per_style.printed: class 11 is outside 0-9"),
        ({"per_style": {"printed": 0}}, "generate: per_style.printed must be >= 1"),
        ({"per_style": {"printed": {3: 0}}}, "generate: per_style.printed: ask for at least one digit"),
        (
            {"per_style": {"printed": {3: 0}, "handwritten-uci": 5}},
            "generate: per_style.printed: ask for at least one digit, or leave the style out",
        ),
        ({"per_style": {"printed": 2.5}}, "generate.per_style: 'printed' takes a whole count or a mapping"),
        ({"per_style": {"printed": {"seven": 5}}}, "generate.per_style: 'printed' takes a whole count"),
        ({"per_style": {"printed": True}}, "generate.per_style: 'printed' takes a whole count"),
        (
            {"sampler": {"name": "distilled", "steps": 4, "guide": "style"}},
            "generate.sampler: guide: style needs a teacher's sampler",
        ),
    ],
)
def test_bad_style_requests_are_one_line(generate: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"generate": generate})
    assert str(err.value).startswith(f"params: {expected}") and "\n" not in str(err.value)


@pytest.mark.slow
def test_exact_counts_per_digit_and_style_are_published(
    prefect_server, styled_models: dict[str, str], tmp_path: Path
) -> None:
    cfg = tiny_generate(styled_models, tmp_path, per_class=None, per_style=PER_STYLE)
    grading = Grading(
        evaluator=styled_models["evaluator"],
        val_data=styled_models["val"],
        test_data=styled_models["test"],
        evaluate=EvaluateConfig.model_validate({"cas": {"seeds": [0], "max_epochs": 1, "patience": 1}}),
        monitor=MonitorConfig(floors={}, ceilings={}),  # random-weight models: no bound to hold them to
    )
    # the training split with the sources `prepare` records beside it: a font and its licence
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    shutil.copy(styled_models["train"], prepared / "train.parquet")
    font = {
        "family": "DejaVu Sans",
        "file": "DejaVuSans.ttf",
        "sha256": "0" * 64,
        "copyright": "(c) Bitstream",
        "licence": "Bitstream",
        "licence_url": "https://d",
    }
    sources = [{"kind": "fonts", "style": "printed", "weight": 1.0, "rows": 20, "fonts": [font]}]
    (prepared / "sources.json").write_text(json.dumps({"sources": sources}))
    models = {**styled_models, "train": str(prepared / "train.parquet")}
    result = run_generate(cfg, models, hardware=HardwareConfig(precision="fp32"), grading=grading)
    rows = pd.concat([pd.read_parquet(f) for f in version_files(result.version)], ignore_index=True)
    pairs = Counter(zip(rows["label"], rows["style"], strict=True))
    assert pairs == {(0, 1): 3, (7, 1): 2, (7, 0): 2}
    manifest = result.version.manifest
    assert manifest["counts"]["17"] == {
        **manifest["counts"]["17"],
        "digit": 7,
        "style": "printed",
        "requested": 2,
    }
    card = (Path(result.version.path) / "README.md").read_text()
    assert "| printed/7 | 2 |" in card and "| 7 | 2 |" in card and "rendered from font files" in card
    assert manifest["training_sources"] == sources  # carried on from prepare's record to the card
    assert "| DejaVu Sans | DejaVuSans.ttf | Bitstream (https://d) |" in card
    styles = json.loads((Path(result.version.path) / "manifest.json").read_text())["counts"]
    assert {v["style"] for v in styles.values()} == {"printed", "handwritten-mnist"}
    assert manifest["model"]["styles"] == list(STYLES)
    # the gate counts near-copies and repeats per style too: the shares among each style's rows
    per_style = manifest["gate"]["per_style"]
    assert set(per_style) == {"printed", "handwritten-mnist"}
    assert all(0 <= r[k] <= 1 for r in per_style.values() for k in ("memorization_rate", "duplicate_rate"))
    # the page: a grid per published style, the interpolation between the model's first two styles, and no
    # per-style measures (the tiny real digits are of one style: no style judge to fit)
    assert "per_style" not in result.evaluation
    page_dir = Path(quality_dir(cfg.output_root, cfg.name)) / result.version.version
    page = (page_dir / "index.html").read_text()
    assert (
        'data-style-grid="printed" data-count="5"' in page and 'data-style-grid="handwritten-mnist"' in page
    )
    assert 'id="per-style-status"' in page and 'data-from="handwritten-mnist" data-to="printed"' in page
    assert (page_dir / "style-printed.png").is_file() and (page_dir / "style-interpolation.png").is_file()
    # built without the model: the grids, and a line saying why there is no interpolation
    bare = (write_page(result.version, result.evaluation, tmp_path / "bare")).read_text()
    assert 'data-style-grid="printed"' in bare and 'id="style-interpolation-status"' in bare
    assert "not drawn: the report was built without the network that drew" in bare
    # the headline measures compare a version with real digits of its own styles: real splits of another
    # style only leave nothing to compare with, said in one line before any measure
    import pyarrow as pa
    import pyarrow.parquet as pq

    from diffusion.errors import DataError
    from diffusion.quality.grading import grade_version

    other = {}
    for split in ("train", "val", "test"):
        table = pq.read_table(styled_models[split])
        uci = pa.array([STYLES.index("handwritten-uci")] * len(table), table.schema.field("style").type)
        other[split] = str(tmp_path / f"uci-{split}.parquet")
        pq.write_table(table.set_column(table.schema.get_field_index("style"), "style", uci), other[split])
    elsewhere = grading.model_copy(update={"val_data": other["val"], "test_data": other["test"]})
    with pytest.raises(DataError, match="no real digits of the style.s. handwritten-mnist, printed"):
        grade_version(
            result.version, cfg.name, elsewhere, HardwareConfig(), other["train"], styled_models["classifier"]
        )
    # real digits of both published styles (every other row called printed): every headline metric per
    # style, the gate's rates among the style's rows, and the page's table of them
    mixed = {}
    for split in ("train", "val", "test"):
        table = pq.read_table(styled_models[split])
        codes = pa.array([i % 2 for i in range(len(table))], table.schema.field("style").type)
        mixed[split] = str(tmp_path / f"mixed-{split}.parquet")
        pq.write_table(table.set_column(table.schema.get_field_index("style"), "style", codes), mixed[split])
    both = grading.model_copy(update={"val_data": mixed["val"], "test_data": mixed["test"]})
    doc = grade_version(
        result.version,
        cfg.name,
        both,
        HardwareConfig(precision="fp32"),
        mixed["train"],
        styled_models["classifier"],
    )
    assert set(doc["per_style"]) == {"printed", "handwritten-mnist"}
    for style, measures in doc["per_style"].items():
        assert set(METRICS) <= set(measures)
        assert measures["memorization_rate"] == per_style[style]["memorization_rate"]
    page = write_page(result.version, doc, tmp_path / "mixed-page").read_text()
    for style in ("printed", "handwritten-mnist"):
        for metric in METRICS:
            assert f'id="style-{style}-{metric}"' in page
        assert f'id="style-{style}-augmentation_gain-interval"' in page
        for reference in ("coverage_real", "dcr_share_real", "frechet_distance_real"):  # real vs real
            assert f'id="style-{style}-{reference}"' in page
    assert "DCR share" in page and 'id="per-style-status"' not in page


def test_a_style_asked_of_a_digits_only_model_stops_before_any_work(
    tiny_models: dict[str, str], tmp_path: Path
) -> None:
    cfg = tiny_generate(tiny_models, tmp_path, per_class=None, per_style={"printed": 2})
    with pytest.raises(
        GenerationError, match=r"per_style asks for printed/0, but the model .* handwritten-mnist only"
    ):
        prepare_run(
            cfg, HardwareConfig(), tiny_models["model"], tiny_models["classifier"], tiny_models["train"]
        )
    assert not (tmp_path / "staging").exists() and not (tmp_path / "published").exists()


def test_style_guidance_is_asked_only_of_a_model_of_digit_and_style(
    tiny_models: dict[str, str], styled_models: dict[str, str], tmp_path: Path
) -> None:
    sampler = {"name": "ddim", "steps": 4, "guidance": 2.0, "guide": "style"}
    digits_only = tiny_generate(tiny_models, tmp_path / "a", sampler=sampler)
    with pytest.raises(GenerationError, match=r"guide is style, but the model .* takes digits only"):
        prepare_run(
            digits_only, HardwareConfig(), *(tiny_models[k] for k in ("model", "classifier", "train"))
        )
    assert not (tmp_path / "a" / "staging").exists()
    styled = tiny_generate(
        styled_models, tmp_path / "b", per_class=None, per_style=PER_STYLE, sampler=sampler
    )
    spec = prepare_run(
        styled, HardwareConfig(), *(styled_models[k] for k in ("model", "classifier", "train"))
    )
    joint = prepare_run(
        tiny_generate(
            styled_models,
            tmp_path / "c",
            per_class=None,
            per_style=PER_STYLE,
            sampler=sampler | {"guide": "all"},
        ),
        HardwareConfig(),
        *(styled_models[k] for k in ("model", "classifier", "train")),
    )
    assert spec.key != joint.key  # another guidance, other digits: another run


def test_a_model_trained_on_other_styles_refuses_the_digits_it_never_saw(
    tiny_models: dict[str, str], tmp_path: Path
) -> None:
    cfg = TINY_DIFFUSION.model_copy(
        update={"unet": TINY_DIFFUSION.unet.model_copy(update={"num_styles": len(STYLES)})}
    )
    folder = tmp_path / "printed-only"
    unet = new_model(cfg, torch.device("cpu"))
    save_diffusion(folder, cfg, unet.state_dict(), unet.state_dict(), {"steps": 0}, styles=["printed"])
    models = {**tiny_models, "model": str(folder)}
    args = (HardwareConfig(), models["model"], models["classifier"], models["train"])
    with pytest.raises(
        GenerationError,
        match=r"per_class asks for handwritten-mnist digits \(the digit 0 first\), but .* printed only",
    ):
        prepare_run(tiny_generate(models, tmp_path), *args)
    spec = prepare_run(tiny_generate(models, tmp_path, per_class=None, per_style={"printed": 2}), *args)
    assert spec.trained_styles == ("printed",)
