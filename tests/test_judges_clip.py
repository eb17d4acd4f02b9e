"""The CLIP judge: a real (tiny) training run, loading it through open_clip, and one-line errors."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a download attempt fails at once

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from diffusion.config import ClipConfig
from diffusion.data.datasets import to_uint8
from diffusion.judges.clip import (
    CAPTION_TEMPLATES,
    OPEN_CLIP_CONFIG,
    PROMPT,
    ClipJudge,
    JudgeError,
    caption_classes,
    captions,
    domain_model_config,
    load_clip,
    train_clip,
)
from diffusion.judges.prompts import WORDINGS, caption_group
from diffusion.precision import resolve_precision
from tests.judges_fixtures import digits_split, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "tiny-digit-clip"
TINY = ClipConfig(  # the shipped ResNet tower, narrower
    model=NAME,
    embed_dim=64,
    width=8,
    text_width=64,
    text_layers=1,
    train={"epochs": 8, "batch_size": 16, "lr": 2e-3, "augment": False},
)
TINY_VIT = ClipConfig(
    model="tiny-digit-clip-vit",
    embed_dim=64,
    vision="vit",
    image_size=28,
    patch_size=4,
    width=64,
    layers=2,
    text_width=64,
    text_layers=1,
    train={"epochs": 8, "batch_size": 16, "lr": 2e-3, "augment": False},
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A tiny domain CLIP trained on 600 rendered digits: (result, out dir, test split)."""
    tmp = tmp_path_factory.mktemp("clip")
    splits = [
        digits_split(tmp, name, n, seed)
        for name, n, seed in [("train", 600, 0), ("val", 100, 1), ("test", 100, 2)]
    ]
    result = train_clip(TINY, *splits, out_dir=tmp / "clip", progress=False)
    return result, tmp / "clip", splits[2]


def test_captions_cover_every_digit_template_and_style_wording() -> None:
    texts, t = captions(), len(CAPTION_TEMPLATES)
    assert len(texts) == len(WORDINGS) * 10 * t and len(set(texts[: 10 * t])) == 10 * t
    assert texts[7 * t] == PROMPT.format(c="7")
    assert "the number seven" in texts and "the digit seven, written by hand" in texts
    printed = caption_group("printed")
    assert caption_group("handwritten-uci") == caption_group("handwritten-mnist") == 0 and printed == 1
    assert texts[(printed * 10 + 7) * t + 1] == "a printed digit 7"  # the template's style named
    rows = caption_classes(torch.tensor([7, 7, 7]), torch.tensor([0, 1, 2]))  # what training draws from
    assert [texts[r * t + 1] for r in rows] == [
        "a handwritten digit 7",
        "a printed digit 7",
        "a handwritten digit 7",
    ]
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=TINY.context_length)
    assert (tokenizer(texts)[:, -1] == 0).all()  # every caption fits the context, end token included


def test_training_learns_to_match_digits_and_captions(trained) -> None:
    result, _, _ = trained
    m = result.metrics
    assert m["zero_shot_accuracy"] > 0.25  # chance is 0.1
    assert m["mean_true_caption_score"] > m["mean_wrong_caption_score"] + 5
    assert m["val_zero_shot_accuracy"] == max(h["val"] for h in result.history)
    assert m["epochs"] == TINY.train.epochs and m["parameters"] > 0
    assert set(m["per_class_zero_shot_accuracy"]) == {str(c) for c in range(10)}
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert m["trained_on"] == {"device": "cpu", "precision": resolve_precision(TINY.train.precision, "cpu")}


def test_saved_folder_loads_through_open_clip(trained) -> None:
    result, directory, test = trained
    judge = load_clip(NAME, str(result.weights), "cpu")
    scores = judge.class_scores(test.images)  # (N, 10)
    accuracy = (scores.argmax(1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(result.metrics["zero_shot_accuracy"])

    # Plain open_clip: the registered config plus pretrained=<file> gives the same embeddings ...
    open_clip.add_model_config(directory / f"{NAME}.json")
    model, _, _ = open_clip.create_model_and_transforms(NAME, pretrained=str(result.weights))
    x = judge.preprocess(test.images[:8])
    with torch.no_grad():
        same = model.eval().encode_image(x, normalize=True)
    assert torch.allclose(same, judge.encode_images(test.images[:8]), atol=1e-5)

    # ... and local-dir: carries the normalisation, so its PIL preprocessing matches ours (PIL resizes
    # 28 -> 32 px in uint8: within one grey level, scaled by the normalisation's std).
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    assert (
        json.loads((directory / OPEN_CLIP_CONFIG).read_text())["trained_on"] == result.metrics["trained_on"]
    )
    pil = torch.stack([preprocess(Image.fromarray(img, mode="L")) for img in to_uint8(test.images[:8])])
    assert torch.allclose(pil, x, atol=1.01 / 255 / judge.std.min().item())


def test_a_fresh_process_loads_by_name_and_file(trained) -> None:
    result, _, _ = trained
    code = (
        "import sys; from diffusion.judges.clip import load_clip; "
        "j = load_clip(sys.argv[1], sys.argv[2], 'cpu'); print(j.class_embeddings().shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, NAME, str(result.weights.parent)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"torch.Size([10, {TINY.embed_dim}])"


@pytest.mark.parametrize("cfg", [TINY, TINY_VIT.model_copy(update={"image_size": 32})], ids=["resnet", "vit"])
def test_preprocess_resizes_to_the_model_input(cfg: ClipConfig, tmp_path: Path) -> None:
    cfg = cfg.model_copy(update={"model": f"{cfg.model}-32"})
    path = tmp_path / f"{cfg.model}.json"
    path.write_text(json.dumps(domain_model_config(cfg)))
    open_clip.add_model_config(path)
    model = open_clip.create_model(cfg.model)
    tower = type(model.visual).__name__
    assert tower == {"resnet": "ModifiedResNet", "vit": "VisionTransformer"}[cfg.vision]
    judge = ClipJudge(model, open_clip.get_tokenizer(cfg.model), "cpu")
    x = judge.preprocess(torch.rand(5, 1, 28, 28) * 2 - 1)
    raw = x * judge.std + judge.mean  # undo the model's own normalisation
    assert x.shape == (5, 3, 32, 32) and torch.allclose(raw[:, 0], raw[:, 2], atol=1e-5)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert judge.encode_images(torch.zeros(5, 1, 28, 28), batch_size=2).shape == (5, cfg.embed_dim)


@pytest.mark.parametrize(
    ("model", "pretrained", "named"),
    [
        ("no-such-clip", "openai", "no-such-clip"),
        ("ViT-B-32", None, "ViT-B-32"),
        ("ViT-B-32", "/nowhere/weights.safetensors", "/nowhere/weights.safetensors"),
        ("ViT-B-32", "laion2b_s34b_b79k", "laion2b_s34b_b79k"),  # needs a download; offline in tests
    ],
)
def test_bad_model_or_weights_raise_one_line(model: str, pretrained: str | None, named: str) -> None:
    with pytest.raises(JudgeError) as err:
        load_clip(model, pretrained, "cpu")
    assert named in str(err.value) and "\n" not in str(err.value)


def test_corrupt_weights_raise_one_line(trained, tmp_path: Path) -> None:
    _, directory, _ = trained
    for name in (f"{NAME}.json", "open_clip_config.json"):
        (tmp_path / name).write_text((directory / name).read_text())
    bad = tmp_path / "open_clip_model.safetensors"
    bad.write_bytes(b"\x00garbage, not a safetensors file")
    with pytest.raises(JudgeError) as err:
        load_clip(NAME, str(bad), "cpu")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def _saved_stub(folder: Path, name: str) -> Path:
    """A folder laid out as `save_clip` writes it, enough for the name check (the weights are never read)."""
    folder.mkdir()
    (folder / f"{name}.json").write_text("{}")
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": {}, "train_cfg": {"model": name}}))
    (folder / "open_clip_model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize("model", ["ViT-Nope", "digit-clip", "ViT-B-32"])
def test_a_saved_folder_must_hold_the_model_named(tmp_path: Path, model: str) -> None:
    """Provenance: the run records generate.clip.model, so it must be the model the saved folder holds."""
    folder = _saved_stub(tmp_path / "clip", NAME)
    for pretrained in (folder, folder / "open_clip_model.safetensors"):
        with pytest.raises(JudgeError) as err:
            load_clip(model, str(pretrained), "cpu")
        text = str(err.value)
        assert text.startswith(f"generate.clip.model: '{model}' is not the CLIP saved in '{folder}'")
        assert f"which holds '{NAME}'" in text and "\n" not in text


@pytest.mark.parametrize(
    ("model", "pretrained"),
    [("digit-clip", "data/models/nope"), ("digit-clip", "nope"), ("ViT-Nope", "models/clip")],
)
def test_a_missing_saved_folder_is_named(model: str, pretrained: str) -> None:
    with pytest.raises(JudgeError) as err:
        load_clip(model, pretrained, "cpu")
    text = str(err.value)
    assert text.startswith(f"generate.clip.pretrained: the folder '{pretrained}' does not exist ('{model}'")
    assert "\n" not in text


def test_an_unknown_model_with_a_published_tag_stays_an_unknown_model() -> None:
    with pytest.raises(JudgeError, match=r"^unknown open_clip model 'no-such-clip' \(not built in"):
        load_clip("no-such-clip", "openai", "cpu")
