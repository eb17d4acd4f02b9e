"""The texts the CLIP judges tokenize: the zero-shot prompt and the domain CLIP's caption templates.

The one place they are defined: diffusion/judges/clip.py scores and trains with them, and the params check
(diffusion/library_rules.py) counts their tokens against `clip.context_length`. Imports no torch.
"""

from __future__ import annotations

from diffusion.data.schema import CLASS_NAMES

PROMPT = 'a photo of the number: "{c}".'  # the zero-shot prompt of every judge (the open_clip MNIST one)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (  # {c}: the digit, {w}: its name
    PROMPT,
    "a handwritten digit {c}",
    "the number {w}",
    "a drawing of a {c}",
    "a handwritten {w}",
    "an image of the digit {c}",
    "the digit {w}, written by hand",
    "a scan of the number {c}",
)


def prompts(template: str = PROMPT) -> list[str]:
    """The zero-shot prompt of each digit 0-9, `template.format(c="7")`."""
    return [template.format(c=c) for c in CLASS_NAMES]


def captions() -> list[str]:
    """All 10 x T training captions, class-major: caption `label * T + t` uses template t."""
    return [
        t.format(c=c, w=w) for c, w in zip(CLASS_NAMES, NUMBER_WORDS, strict=True) for t in CAPTION_TEMPLATES
    ]


def tokenized_texts() -> list[str]:
    """Every text the project tokenizes for a CLIP judge: the prompts and the captions, each once."""
    return list(dict.fromkeys(prompts() + captions()))
