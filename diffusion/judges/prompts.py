"""The texts the CLIP judges tokenize: the zero-shot prompt and the domain CLIP's caption templates.

The one place they are defined: diffusion/judges/clip.py scores and trains with them, and the params check
(diffusion/library_rules.py) counts their tokens against `clip.context_length`. Imports no torch.
"""

from __future__ import annotations

from diffusion.data.schema import CLASS_NAMES

PROMPT = 'a photo of the number: "{c}".'  # the zero-shot prompt of every judge (the open_clip MNIST one)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# How captions name a style of diffusion/styles.py: {a} its adjective, {p} a phrase. The two handwritten
# styles read alike ("a handwritten digit 7" is true of both); with MNIST alone the captions are the ones
# the domain CLIP was always trained on.
STYLE_WORDS = {
    "handwritten-mnist": {"a": "handwritten", "p": "written by hand"},
    "printed": {"a": "printed", "p": "set in type"},
    "handwritten-uci": {"a": "handwritten", "p": "written by hand"},
}
CAPTION_TEMPLATES = (  # {c}: the digit, {w}: its name, {a} and {p}: its style (STYLE_WORDS)
    PROMPT,
    "a {a} digit {c}",
    "the number {w}",
    "a drawing of a {c}",
    "a {a} {w}",
    "an image of the digit {c}",
    "the digit {w}, {p}",
    "a scan of the number {c}",
)
WORDINGS = tuple(dict.fromkeys(tuple(w.items()) for w in STYLE_WORDS.values()))  # distinct, in STYLES order


def caption_group(style: str) -> int:
    """The caption wording (index into WORDINGS) of a style name."""
    return WORDINGS.index(tuple(STYLE_WORDS[style].items()))


def prompts(template: str = PROMPT) -> list[str]:
    """The zero-shot prompt of each digit 0-9, `template.format(c="7")`."""
    return [template.format(c=c) for c in CLASS_NAMES]


def captions() -> list[str]:
    """All len(WORDINGS) x 10 x T training captions, wording-major then class-major: caption
    `(wording * 10 + label) * T + t` uses template t."""
    return [
        t.format(c=c, w=w, **dict(wording))
        for wording in WORDINGS
        for c, w in zip(CLASS_NAMES, NUMBER_WORDS, strict=True)
        for t in CAPTION_TEMPLATES
    ]


def tokenized_texts() -> list[str]:
    """Every text the project tokenizes for a CLIP judge: the prompts and the captions, each once."""
    return list(dict.fromkeys(prompts() + captions()))
