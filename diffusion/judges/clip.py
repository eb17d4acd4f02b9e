"""CLIP judges through open_clip: our small domain CLIP for 28 px digits, or any published open_clip model.

The domain CLIP is an ordinary open_clip model: its architecture is a model-config JSON registered with
`open_clip.add_model_config`, and its weights load through `open_clip.create_model_and_transforms(name,
pretrained=<file>)`. `save_clip` writes one folder that also loads as `local-dir:<folder>`:

    <dir>/<name>.json                  the model config (embed_dim, vision_cfg, text_cfg), registered by name
    <dir>/open_clip_config.json        {"model_cfg", "preprocess_cfg" (mean/std), "train_cfg"}
    <dir>/open_clip_model.safetensors  the weights

A judge sees images the project's way, (N, 1, H, W) in [-1, 1], and preprocesses them batched on their
device: to [0, 1], resized to the model's input size, grey copied to 3 channels, normalised by its mean/std.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from diffusion.checkpoint import atomic_path
from diffusion.config import ClipConfig
from diffusion.data.datasets import DigitsDataset
from diffusion.data.schema import CLASS_NAMES
from diffusion.errors import DigitsError
from diffusion.judges.prompts import CAPTION_TEMPLATES, PROMPT, caption_group, captions, prompts
from diffusion.judges.training import accuracy_report, fit
from diffusion.styles import STYLES

WEIGHTS_FILE = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
MNIST_MEAN, MNIST_STD = (0.1307,) * 3, (0.3081,) * 3  # of [0, 1] pixels, grey copied to RGB


class JudgeError(DigitsError):
    """A judge cannot be built: unknown model, missing or corrupt weights, unavailable tag. One line."""


def domain_model_config(cfg: ClipConfig) -> dict[str, Any]:
    """The open_clip model config of our domain CLIP: a small vision tower over digits and a small text tower.

    open_clip builds its ModifiedResNet (the tower of CLIP's RN models: a 3-conv stem, 4 bottleneck stages,
    attention pooling) when `layers` is a list, and its VisionTransformer when it is an int.
    """
    if cfg.vision == "resnet":
        vision_cfg: dict[str, Any] = {
            "image_size": cfg.image_size,
            "layers": list(cfg.layers),
            "width": cfg.width,
            "head_width": 32,
        }
    else:
        vision_cfg = {
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "width": cfg.width,
            "layers": cfg.layers,
            "head_width": 32,
            "mlp_ratio": 2.0,
            "pool_type": "avg",
            "pos_embed_type": "sin_cos_2d",
        }
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": vision_cfg,
        "text_cfg": {
            "context_length": cfg.context_length,
            "vocab_size": 49408,  # open_clip's default BPE tokenizer
            "width": cfg.text_width,
            "heads": cfg.text_width // 32,
            "layers": cfg.text_layers,
            "mlp_ratio": 2.0,
        },
    }


class ClipJudge:
    """An open_clip model in eval mode with its tokenizer and batched tensor preprocessing."""

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device | str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        pp = model.visual.preprocess_cfg
        size = pp["size"]
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.interpolation = "bicubic" if pp.get("interpolation") == "bicubic" else "bilinear"
        self.mean = torch.tensor(pp["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pp["std"], device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [-1, 1] -> (N, 3, S, S) normalised model input, on the judge's device."""
        x = (images.to(self.device, torch.float32) + 1) / 2
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode=self.interpolation, align_corners=False)
            x = x.clamp(0, 1)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> token ids (T, context_length) on the judge's device."""
        return self.tokenizer(texts).to(self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(N, 1, H, W) in [-1, 1] -> unit embeddings (N, D), in chunks of `batch_size`."""
        chunks = [
            self.model.encode_image(self.preprocess(c), normalize=True) for c in images.split(batch_size)
        ]
        return torch.cat(chunks).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """T texts -> unit embeddings (T, D)."""
        return self.model.encode_text(self.tokenize(texts), normalize=True).float()

    def class_embeddings(self, template: str = PROMPT) -> torch.Tensor:
        """Unit embeddings (10, D) of the prompt for each digit, `template.format(c="7")`."""
        return self.encode_texts(prompts(template))

    def class_scores(self, images: torch.Tensor, template: str = PROMPT) -> torch.Tensor:
        """CLIPScore of every image against every digit's prompt: (N, 1, H, W) -> (N, 10), 100 x cosine."""
        return 100 * self.encode_images(images) @ self.class_embeddings(template).T


def save_clip(
    directory: str | Path, cfg: ClipConfig, model: nn.Module, trained_on: dict[str, str] | None = None
) -> Path:
    """Write the domain CLIP folder atomically; return the weights file to pass as `pretrained=`.
    `trained_on`: the device and precision the training ran in, kept beside the training settings (as the
    other judges keep theirs in their checkpoint's meta)."""
    model_cfg = domain_model_config(cfg)
    preprocess_cfg = {"mean": list(MNIST_MEAN), "std": list(MNIST_STD), "interpolation": "bilinear"}
    doc = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "train_cfg": cfg.model_dump(mode="json")}
    if trained_on is not None:
        doc["trained_on"] = trained_on
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS_FILE))
        (tmp / f"{cfg.model}.json").write_text(json.dumps(model_cfg, indent=2) + "\n")
        (tmp / OPEN_CLIP_CONFIG).write_text(json.dumps(doc, indent=2) + "\n")
    return Path(directory) / WEIGHTS_FILE


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _saved_folder(pretrained: str) -> Path | None:
    """The `save_clip` folder that `pretrained` names (the folder itself or its weights file), else None."""
    path = Path(pretrained)
    folder = path if path.is_dir() else path.parent
    if (folder / OPEN_CLIP_CONFIG).is_file() and (path.is_dir() or path.name == WEIGHTS_FILE):
        return folder
    return None


def _saved_model_name(folder: Path) -> str | None:
    """The model name a `save_clip` folder was saved under: `train_cfg.model` of its open_clip_config.json,
    else the stem of its one model-config JSON; None when the folder does not say (its load reports why)."""
    try:
        doc = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
        saved = doc.get("train_cfg", {}).get("model")
    except (OSError, ValueError, AttributeError):
        saved = None
    if isinstance(saved, str):
        return saved
    configs = [p.stem for p in folder.glob("*.json") if p.name != OPEN_CLIP_CONFIG]
    return configs[0] if len(configs) == 1 else None


def _check_saved_name(model: str, folder: Path, key: str) -> None:
    """A saved folder brings its own model: the name asked for must be that one, or the run would record a
    model it did not use (provenance). JudgeError naming `<key>.model` otherwise."""
    saved = _saved_model_name(folder)
    if saved is not None and saved != model:
        raise JudgeError(
            f"{key}.model: '{model}' is not the CLIP saved in '{folder}', which holds '{saved}';"
            f" set {key}.model: {saved} (or point {key}.pretrained at a folder of '{model}')"
        )


def _looks_like_folder(pretrained: str) -> bool:
    """Whether `pretrained` can only mean a saved folder, given a model that is not built into open_clip:
    it holds a path separator, or it is no pretrained tag of any open_clip model (a tag would mean the
    model name is the mistake)."""
    separators = {"/", os.sep, os.altsep} - {None}
    tags = {tag for _, tag in open_clip.list_pretrained()}
    return any(sep in pretrained for sep in separators) or pretrained not in tags


def _unknown_model(model: str, pretrained: str, key: str) -> JudgeError:
    """The error for a model open_clip does not build: a saved folder that does not exist, or a model name
    that is unknown."""
    if not Path(pretrained).exists() and _looks_like_folder(pretrained):
        return JudgeError(
            f"{key}.pretrained: the folder '{pretrained}' does not exist ('{model}' is not built into"
            " open_clip, so it loads from a saved CLIP folder: train one with `digits train-clip`, or fix"
            " the path)"
        )
    return JudgeError(
        f"unknown open_clip model '{model}' (not built in, and '{pretrained}' is no saved folder)"
    )


def load_clip(
    model: str, pretrained: str | None, device: torch.device | str = "cpu", key: str = "generate.clip"
) -> ClipJudge:
    """Build a CLIP judge with its weights, leaving open_clip's model registry as it was (thread-safe).

    Args:
        model: an open_clip model name ("ViT-B-32", our "digit-clip"), or "hf-hub:org/repo" / "local-dir:path",
            which carry their own weights. With a saved folder, the name it was saved under.
        pretrained: a pretrained tag of `model` (downloaded unless cached), a weights file of a built-in
            model (.safetensors preferred; .pt/.bin load with torch.load(weights_only=True)), or a folder
            written by `save_clip` (or its weights file), which loads as `local-dir:<folder>` with its own
            model config and preprocessing. None only for the schema names above: a judge never runs on
            random weights.
        device: where the model and every tensor it returns live.
        key: the params section that names `model` and `pretrained`, for the messages.

    Raises:
        JudgeError: unknown model, missing saved folder, a model name other than the saved folder's,
            missing/corrupt weights file, or a tag that cannot be downloaded.
    """
    name, weights = model, pretrained
    if model.startswith(("hf-hub:", "local-dir:")):
        weights = None
    elif pretrained is None:
        raise JudgeError(f"open_clip model '{model}': no weights given (pass a pretrained tag or file)")
    elif (folder := _saved_folder(pretrained)) is not None:
        _check_saved_name(model, folder, key)
        name, weights = f"local-dir:{folder}", None
    elif model not in open_clip.list_models():
        raise _unknown_model(model, pretrained, key)
    elif not (open_clip.is_pretrained_cfg(model, pretrained) or Path(pretrained).is_file()):
        tags = open_clip.list_pretrained_tags_by_model(model)
        shown = ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "")
        raise JudgeError(
            f"{pretrained}: no such weights file, nor a pretrained tag of '{model}' (tags: {shown or 'none'})"
        )
    try:
        net, _, _ = open_clip.create_model_and_transforms(
            name, pretrained=weights, device=device, require_pretrained=True
        )
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as err:  # open_clip raises RuntimeError, OSError, SafetensorError, ...: make it one line
        raise JudgeError(f"open_clip model '{model}' with weights '{pretrained}': {_one_line(err)}") from None
    return ClipJudge(net, tokenizer, device)


# --------------------------------------------------------------------------- training the domain CLIP
# The prompt and the caption templates live in diffusion/judges/prompts.py (the params check counts their tokens).


@dataclass
class ClipResult:
    """metrics: zero_shot_accuracy and per_class_zero_shot_accuracy (test), mean_true_caption_score and
    mean_wrong_caption_score (100 x cosine, test), val_zero_shot_accuracy, parameters, epochs, best_epoch.
    weights: the file for `pretrained=`."""

    metrics: dict[str, Any]
    weights: Path
    history: list[dict[str, float]]


def caption_classes(labels: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """(N,) digits and (N,) style codes -> (N,) rows of `captions()` divided by T: wording * 10 + digit,
    so each digit is captioned in the words of its style (prompts.STYLE_WORDS): "a printed digit 7"."""
    wording = torch.tensor([caption_group(s) for s in STYLES], device=styles.device)[styles]
    return wording * len(CLASS_NAMES) + labels


def _create_domain_model(cfg: ClipConfig, device: torch.device) -> ClipJudge:
    """Register the architecture under `cfg.model` and build it, randomly initialised, through open_clip."""
    if cfg.model in open_clip.list_models() and open_clip.list_pretrained_tags_by_model(cfg.model):
        raise JudgeError(f"'{cfg.model}' is a published open_clip model; name the domain CLIP something else")
    with tempfile.TemporaryDirectory() as tmp:  # the registry keeps the config once scanned
        path = Path(tmp) / f"{cfg.model}.json"
        path.write_text(json.dumps(domain_model_config(cfg)))
        open_clip.add_model_config(path)
    net, _, _ = open_clip.create_model_and_transforms(
        cfg.model, device=device, image_mean=MNIST_MEAN, image_std=MNIST_STD, image_interpolation="bilinear"
    )
    return ClipJudge(net, open_clip.get_tokenizer(cfg.model), device)


def train_clip(
    cfg: ClipConfig,
    train: DigitsDataset,
    val: DigitsDataset,
    test: DigitsDataset,
    out_dir: Path,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> ClipResult:
    """Train the domain CLIP with open_clip's ClipLoss on (digit, random caption) pairs; keep the best
    val zero-shot epoch, score it once on test, save it with `save_clip`."""
    device = torch.device(device)
    # Weight init draws from the global RNG: seeded inside fork_rng, the caller's is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return _train(cfg, train, val, test, out_dir, progress, device)


def _train(
    cfg: ClipConfig,
    train: DigitsDataset,
    val: DigitsDataset,
    test: DigitsDataset,
    out_dir: Path,
    progress: bool,
    device: torch.device,
) -> ClipResult:
    generator = torch.Generator().manual_seed(cfg.train.seed)
    judge = _create_domain_model(cfg, device)
    net, n_templates = judge.model, len(CAPTION_TEMPLATES)
    # The 49,408-row token table is most of the parameters, and our captions use a few dozen rows:
    # it stays at its (saved) random init, which saves a dense gradient and AdamW update per step.
    net.token_embedding.requires_grad_(False)
    tokens = judge.tokenize(captions())  # (wordings * 10 * T, L)
    loss_fn = open_clip.ClipLoss()
    caption_class = caption_classes(train.labels, train.styles)

    def batch_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y: caption classes (wording * 10 + digit); a random template of each."""
        pick = y * n_templates + torch.randint(n_templates, y.shape, generator=generator).to(device)
        unique, inverse = torch.unique(pick, return_inverse=True)  # encode each distinct caption once
        image = net.encode_image(judge.preprocess(x), normalize=True)
        text = net.encode_text(tokens[unique], normalize=True)[inverse]
        return loss_fn(image, text, net.logit_scale.exp().clamp(max=100))

    def zero_shot(data: DigitsDataset) -> torch.Tensor:
        """(N, 10) CLIPScores of `data` against the 10 prompts, in eval mode."""
        net.eval()
        return judge.class_scores(data.images)

    def val_accuracy() -> float:
        return accuracy_report(zero_shot(val).argmax(1), val.labels).accuracy

    run = fit(
        net,
        batch_loss,
        train.images.to(device),
        caption_class.to(device),
        cfg.train,
        generator,
        evaluate=val_accuracy,
        grad_clip=1.0,
        progress=progress,
        desc="clip",
    )
    net.load_state_dict(run.best_state)
    scores, y = zero_shot(test).cpu(), test.labels
    true = F.one_hot(y, len(CLASS_NAMES)).bool()
    report = accuracy_report(scores.argmax(1), y)
    metrics = {
        "zero_shot_accuracy": report.accuracy,
        "per_class_zero_shot_accuracy": report.per_class,
        "mean_true_caption_score": scores[true].mean().item(),
        "mean_wrong_caption_score": scores[~true].mean().item(),
        "val_zero_shot_accuracy": run.best_score,
        "parameters": sum(p.numel() for p in net.parameters()),
        "epochs": cfg.train.epochs,
        "best_epoch": run.best_epoch,
        "trained_on": {"device": str(device), "precision": run.precision},  # what "auto" became
    }
    weights = save_clip(out_dir, cfg, net, metrics["trained_on"])
    return ClipResult(metrics=metrics, weights=weights, history=run.history)
