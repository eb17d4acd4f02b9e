"""The classifier judge: augmentation, a real (tiny) training run, saving apart from fitting, its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion.checkpoint import CheckpointError, read_checkpoint_config, save_checkpoint
from diffusion.config import ClassifierConfig
from diffusion.judges.classifier import (
    DigitClassifier,
    confusion_rows,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from diffusion.judges.training import accuracy_report, fit_cross_entropy, random_affine
from diffusion.precision import resolve_precision
from tests.judges_fixtures import digits_split, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ClassifierConfig(
    channels=(16, 32), hidden=32, train={"epochs": 6, "batch_size": 32, "lr": 3e-3, "seed": 0}
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A tiny classifier trained on 500 rendered digits, then saved: (result, checkpoint dir, test split)."""
    tmp = tmp_path_factory.mktemp("classifier")
    train, val, test = (
        digits_split(tmp, name, n, seed)
        for name, n, seed in [("train", 500, 0), ("val", 100, 1), ("test", 200, 2)]
    )
    before = sorted(tmp.iterdir())
    result = train_classifier(TINY, train, val, test, progress=False)
    assert sorted(tmp.iterdir()) == before  # fitting writes nothing
    save_classifier(tmp / "model", TINY, result.model, result.metrics)
    return result, tmp / "model", test


def test_random_affine_is_seeded_and_keeps_background() -> None:
    x = torch.full((6, 1, 28, 28), -1.0)
    x[:, :, 10:18, 12:16] = 1.0
    a = random_affine(x, torch.Generator().manual_seed(0))
    b = random_affine(x, torch.Generator().manual_seed(0))
    c = random_affine(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5
    assert torch.all(a[:, :, :2, :2] == -1)  # corners stay background, not zero-padded grey


def test_training_learns_and_reports(trained) -> None:
    result, _, test = trained
    m = result.metrics
    untrained = (predict(DigitClassifier.from_config(TINY), test.images) == test.labels).float().mean().item()
    assert m["test_accuracy"] > max(0.5, untrained + 0.3)
    assert m["test_accuracy"] == accuracy_report(predict(result.model, test.images), test.labels).accuracy
    assert set(m["per_class_accuracy"]) == {str(c) for c in range(10)}
    assert m["epochs"] == TINY.train.epochs and 1 <= m["best_epoch"] <= TINY.train.epochs
    assert m["val_accuracy"] == max(h["val"] for h in result.history)
    assert m["parameters"] == sum(p.numel() for p in DigitClassifier.from_config(TINY).parameters())
    assert len(result.confusion) == 100 and sum(r["count"] for r in result.confusion) == len(test)
    # what `precision: auto` resolved to on this device is recorded, not "auto"
    assert m["trained_on"] == {"device": "cpu", "precision": resolve_precision(TINY.train.precision, "cpu")}


def test_the_fit_records_what_auto_became(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusion.precision

    split = digits_split(tmp_path, "small", 32, 3)
    auto = TINY.train.model_copy(update={"precision": "auto"})
    build = lambda: DigitClassifier.from_config(TINY)  # noqa: E731
    for native, expected in [(True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(diffusion.precision, "native_bf16", lambda device, native=native: native)
        _, run = fit_cross_entropy(build, auto, 0.0, split, steps=2)
        assert run.precision == expected


def test_training_is_seeded_and_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    split = digits_split(tmp_path, "small", 64, 3)
    quick = TINY.model_copy(update={"train": TINY.train.model_copy(update={"epochs": 1})})
    state = torch.random.get_rng_state()
    a, b = (train_classifier(quick, split, split, split, progress=False) for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())


def test_checkpoint_holds_the_architecture_and_reloads_the_best_weights(trained) -> None:
    result, directory, test = trained
    doc = read_checkpoint_config(directory, "classifier")
    assert doc["config"] == {"channels": [16, 32], "hidden": 32, "dropout": TINY.dropout}
    assert doc["meta"]["settings"]["train"]["epochs"] == TINY.train.epochs
    assert doc["meta"]["test_accuracy"] == result.metrics["test_accuracy"]
    model = load_classifier(directory, "cpu")
    probs = model.probabilities(test.images)
    assert probs.shape == (len(test), 10) and torch.allclose(probs.sum(1), torch.ones(len(test)))
    accuracy = (probs.argmax(1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(result.metrics["test_accuracy"])
    assert model.features(test.images[:5]).shape == (5, TINY.hidden)


def test_accuracy_report_and_confusion_rows() -> None:
    predicted, actual = torch.tensor([0, 1, 3, 3, 2]), torch.tensor([0, 0, 3, 3, 3])
    report = accuracy_report(predicted, actual)
    assert report.accuracy == pytest.approx(0.6)
    assert report.per_class == {"0": 0.5, "3": pytest.approx(2 / 3)}  # classes without examples left out
    rows = confusion_rows(torch.tensor([0, 0, 3]), torch.tensor([0, 1, 3]))
    counts = {(r["actual"], r["predicted"]): r["count"] for r in rows}
    assert counts[(0, 0)] == 1 and counts[(0, 1)] == 1 and counts[(3, 3)] == 1 and sum(counts.values()) == 3


def test_missing_or_corrupt_checkpoint_raises_one_line(trained, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier(tmp_path / "nowhere")
    _, directory, _ = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((directory / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors") as err:
        load_classifier(broken)
    assert "\n" not in str(err.value)


def test_a_folder_whose_config_holds_the_earlier_flat_training_fields_loads(tmp_path: Path) -> None:
    net = DigitClassifier.from_config(TINY).eval()
    flat = {**TINY.architecture(), "epochs": 12, "batch_size": 128, "lr": 0.002, "label_smoothing": 0.05}
    save_checkpoint(tmp_path / "old", "classifier", flat, {"model": net.state_dict()})
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.equal(load_classifier(tmp_path / "old")(x), net(x))


def test_precision_auto_is_bf16_on_a_device_with_bf16_units(tmp_path: Path, monkeypatch) -> None:
    """`train.precision: auto` trains in bf16 where the device has bf16 units (faked here, so the test means the
    same on every CPU; bf16 autocast runs emulated where the units are missing) and in fp32 elsewhere."""
    import diffusion.precision

    train, val, test = (
        digits_split(tmp_path, name, n, n) for name, n in [("train", 64), ("val", 32), ("test", 32)]
    )

    def weights(precision: str) -> torch.Tensor:
        cfg = TINY.model_copy(
            update={"train": TINY.train.model_copy(update={"epochs": 1, "precision": precision})}
        )
        model = train_classifier(cfg, train, val, test, progress=False).model
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    fp32, bf16 = weights("fp32"), weights("bf16")
    assert not torch.equal(fp32, bf16)
    monkeypatch.setattr(diffusion.precision, "native_bf16", lambda device: True)
    assert torch.equal(weights("auto"), bf16)
    monkeypatch.setattr(diffusion.precision, "native_bf16", lambda device: False)
    assert torch.equal(weights("auto"), fp32)
