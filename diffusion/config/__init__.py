"""Typed models of every `params.yaml` section, validated before any work starts.

Each section of `params.yaml` has exactly one model, in the module of its part:

    base.py       ConfigError, Section (no unknown keys, immutable values)
    data.py       data: the real sources (each one style), their weights, the split
    model.py      diffusion (U-Net, process, training, sampler, evaluation) and distill
    judges.py     classifier, evaluator, clip: the judges, and the training settings they share
    generate.py   generate: a generation run, its filter and task runner; serve: its schedule
    quality.py    quality (the publish gate), evaluate (the measures), monitor (drift alarms)
    hardware.py   hardware: device, precision, network batch, compile
    params.py     Params (every section and the rules across them), parse_params, load_params
    yaml_file.py  read_params_file: the file's YAML (no repeated keys, at least one section)

Unknown keys, wrong types and out-of-range values raise `ConfigError` with one line naming the key and
what was expected. Keys a library reads later (a cron, a timezone, an fsspec URL, the CLIP context
length) are checked by that library's own rules (`diffusion.library_rules`, which imports each library
only when needed, in the commands that read the key). The package imports `diffusion.errors`,
`diffusion.library_rules`, `diffusion.precision` and `diffusion.styles`, and in validators
`diffusion.device`, `diffusion.model.compile` and `diffusion.quality.headline` (which import only `errors`).

    from diffusion.config import load_params
    params = load_params("params.yaml")          # every section checked, or one ConfigError line
"""

from diffusion.config.base import ConfigError, Section
from diffusion.config.data import DataConfig, SourceConfig, SplitConfig
from diffusion.config.generate import (
    ClipChoice,
    FilterConfig,
    GenerateConfig,
    ServeConfig,
    TaskRunnerConfig,
)
from diffusion.config.hardware import HardwareConfig
from diffusion.config.judges import (
    ClassifierConfig,
    ClipConfig,
    EvaluatorConfig,
    JudgeSection,
    JudgeTraining,
)
from diffusion.config.model import (
    DiffusionConfig,
    DiffusionEvalConfig,
    DiffusionTrainConfig,
    DistillConfig,
    ProcessConfig,
    SamplerConfig,
    UNetConfig,
)
from diffusion.config.params import Params, load_params, parse_params
from diffusion.config.quality import CasConfig, EvaluateConfig, MonitorConfig, QualityConfig

__all__ = [
    "CasConfig",
    "ClassifierConfig",
    "ClipChoice",
    "ClipConfig",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "DiffusionEvalConfig",
    "DiffusionTrainConfig",
    "DistillConfig",
    "EvaluateConfig",
    "EvaluatorConfig",
    "FilterConfig",
    "GenerateConfig",
    "HardwareConfig",
    "JudgeSection",
    "JudgeTraining",
    "MonitorConfig",
    "Params",
    "ProcessConfig",
    "QualityConfig",
    "SamplerConfig",
    "ServeConfig",
    "Section",
    "SourceConfig",
    "SplitConfig",
    "TaskRunnerConfig",
    "UNetConfig",
    "load_params",
    "parse_params",
]
