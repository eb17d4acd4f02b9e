"""What every section model shares: one-line errors, no unknown keys, immutable values."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from diffusion.errors import DigitsError


class ConfigError(DigitsError):
    """A params file or section is invalid. The message is one line naming the key."""


class Section(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable, and a float is finite
    (`.inf` or `.nan` in YAML is an error naming the key, not a crash or a saturated image later)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def over_default(model: type[BaseModel], field: str, raw: object) -> object:
    """A mapping given for a sub-section field, laid over that field's own default: keys left out keep this
    section's defaults for it, not the sub-section model's (a `mode="before"` validator's body)."""
    if isinstance(raw, dict):
        return {**model.model_fields[field].default.model_dump(), **raw}
    return raw
