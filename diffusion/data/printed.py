"""Printed digits rendered from real fonts, drawn the way MNIST digits were prepared.

    fonts = default_fonts()                              # the text faces matplotlib installs with the project
    raw = render_font_digits(fonts, per_font=20, seed=0) # RawDigits, source "fonts", details = font family

Each digit is drawn white on black at a large size, with a seeded small rotation, scale and stroke width,
then prepared as LeCun et al. (1998) describe MNIST's: the glyph's bounding box fitted into a 20x20 box
(aspect ratio kept, anti-aliased), placed in a 28x28 image so that its centre of mass sits at pixel (14, 14),
where MNIST's digits have theirs.

A font that cannot be loaded, lacks a glyph for one of the ten digits, or maps a digit to a glyph named as
something else (a symbol font), raises DataError naming the file. Every face of a collection (.ttc) is a font
of its own. A family given twice (matplotlib's DejaVu Sans and a system copy of it) is drawn once, from its
first file: rows are named by family, and one family is one style of printing.
Nothing here reads the network or the system's font folders: the default fonts are files inside the
matplotlib package (DejaVu Sans, Serif and Mono with their bold and oblique cuts, STIX General, Computer
Modern), so rendering needs no system package. Extra fonts are any TrueType/OpenType files or folders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fontTools.ttLib import TTCollection, TTFont, TTLibError
from PIL import Image, ImageDraw, ImageFont

from diffusion.checkpoint import file_sha256
from diffusion.data.images import BOX, mnist_layout
from diffusion.data.sources import RawDigits
from diffusion.errors import DataError

DIGITS = "0123456789"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
CANVAS = 160  # pixels of the large drawing; the glyph is drawn at half of it


@dataclass(frozen=True)
class Jitter:
    """Seeded variation of each rendering: rotation (degrees, +-), scale of the 20x20 box, extra stroke
    (pixels of the large drawing, 0 to this)."""

    rotation: float = 8.0
    min_scale: float = 0.8
    stroke: int = 3


@dataclass(frozen=True)
class Font:
    """One font (a file, or face `index` of a .ttc collection) and the family name each of its rows keeps
    (e.g. "DejaVu Sans Bold")."""

    path: Path
    family: str
    index: int = 0

    @property
    def slug(self) -> str:
        """The family as it appears in row ids: lower case, words joined by '-'."""
        return "-".join(self.family.lower().split())


def _digit_glyphs(font: TTFont) -> list[str | None]:
    """The glyph name each digit maps to in the font's best Unicode cmap (None where it has none)."""
    cmap = font.getBestCmap() or {}
    return [cmap.get(ord(d)) for d in DIGITS]


# Glyph names that say nothing about the glyph (numbered glyphs, CID-keyed fonts): not "clearly not a digit".
ANONYMOUS_GLYPH = re.compile(r"(glyph|gid|cid|g|index)\d+", re.IGNORECASE)


def _named_as_digit(glyph: str, digit: int) -> bool:
    """Whether a glyph name can be `digit`'s: its English name ("seven", also "sevenoldstyle" and suffixed
    "seven.lf", "seven.tosf"), its code point ("uni0037", "u0037"), or an anonymous name ("glyph23")."""
    base = glyph.split(".")[0]
    code = f"{ord(DIGITS[digit]):04X}"
    return (
        base.lower() in (DIGIT_NAMES[digit], f"{DIGIT_NAMES[digit]}oldstyle")  # not "onehalf", "zerosuperior"
        or base.upper() in (f"UNI{code}", f"U{code}", f"U0{code}", f"U00{code}")
        or ANONYMOUS_GLYPH.fullmatch(base) is not None
    )


def _has_glyph_names(font: TTFont) -> bool:
    """Whether the font names its glyphs: a TrueType font with a version 3 'post' table names none (the
    names fontTools then makes up come from the cmap itself and prove nothing)."""
    post = font.get("post")
    return "CFF " in font or "CFF2" in font or (post is not None and post.formatType != 3.0)


def _misnamed_digit(font: TTFont) -> tuple[str, str] | None:
    """(digit, glyph name) of the first digit the font maps to a glyph whose name is clearly not a digit's,
    as symbol fonts do (cmex10 draws '0' as "parenlefttp"); None when every digit's glyph is named as a digit,
    or the font names no glyphs. A missing glyph is `load_font`'s to report."""
    if not _has_glyph_names(font):
        return None
    for digit, glyph in enumerate(_digit_glyphs(font)):
        if glyph is not None and not _named_as_digit(glyph, digit):
            return DIGITS[digit], glyph
    return None


def _family(font: TTFont) -> str:
    """The family and subfamily from the font's name table ("DejaVu Sans Bold"), "Regular"/"Book" left out."""
    names = font["name"]
    parts = (names.getDebugName(1), names.getDebugName(2))
    return " ".join(" ".join(p.split()) for p in parts if p and p.strip() not in ("Regular", "Book"))


def load_font(path: str | Path, index: int = 0) -> Font:
    """A font (face `index` of a collection) whose every digit has a glyph named as a digit; DataError (one
    line naming the file) otherwise, so a symbol font never becomes training digits labelled 0-9."""
    path = Path(path)
    return _checked(path, _open(path, index), index)


def load_fonts(path: str | Path) -> list[Font]:
    """Every face of a font file: one for a .ttf or .otf, each of a collection (.ttc), each `load_font`."""
    path = Path(path)
    if path.suffix.lower() != ".ttc":
        return [load_font(path)]
    try:
        with TTCollection(str(path), lazy=True) as collection:
            faces = len(collection.fonts)
    except (TTLibError, OSError, AssertionError) as err:
        raise DataError(
            f"{path}: cannot load the font collection ({err}); give a TrueType collection"
        ) from None
    return [load_font(path, i) for i in range(faces)]


def _open(path: Path, index: int = 0) -> TTFont:
    """The font file (face `index` of a collection), its tables read lazily; DataError naming the file
    when it is no font."""
    try:
        return TTFont(str(path), lazy=True, fontNumber=index)
    except (TTLibError, OSError) as err:
        raise DataError(f"{path}: cannot load the font ({err}); give a TrueType or OpenType file") from None


def _checked(path: Path, tt: TTFont, index: int = 0) -> Font:
    """`load_font`'s checks on an open font (its tables are read here, lazily)."""
    try:
        glyphs = _digit_glyphs(tt)
        family = _family(tt)
        misnamed = _misnamed_digit(tt)
    except (TTLibError, OSError, KeyError, AssertionError) as err:
        raise DataError(f"{path}: cannot load the font ({err}); give a TrueType or OpenType file") from None
    missing = [d for d, g in zip(DIGITS, glyphs, strict=True) if g is None]
    if missing:
        raise DataError(f"{path}: the font has no glyph for the digit(s) {', '.join(missing)}; leave it out")
    if misnamed is not None:
        digit, glyph = misnamed
        raise DataError(
            f"{path}: the font draws the digit {digit} (U+{ord(digit):04X}) with the glyph {glyph!r}, which is"
            " not a digit (a symbol font?); leave it out"
        )
    return Font(path, family or path.stem, index)


def default_fonts() -> list[Font]:
    """The text faces matplotlib installs: its fonts whose digits are glyphs named as digits ("zero",
    "sevenoldstyle"), which leaves out symbol and fallback faces that map 0-9 to other signs (the rule
    `load_font` applies to every font, here also requiring the names). Each file is opened once."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = []
    for path in sorted(folder.glob("*.ttf")):
        tt = _open(path)
        if all(_digit_glyphs(tt)) and _has_glyph_names(tt) and _misnamed_digit(tt) is None:
            fonts.append(_checked(path, tt))
    return fonts


def font_files(paths: Iterable[str | Path]) -> list[Font]:
    """Fonts from files and folders (a folder: its .ttf, .otf and .ttc files, recursively, sorted; every
    face of a collection)."""
    fonts = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(p for p in entry.rglob("*") if p.suffix.lower() in FONT_SUFFIXES)
            if not found:
                raise DataError(f"{entry}: no font files ({', '.join(FONT_SUFFIXES)}) in this folder")
            fonts += [face for p in found for face in load_fonts(p)]
        elif entry.is_file():
            fonts += load_fonts(entry)
        else:
            raise DataError(f"{entry}: font file or folder not found")
    return fonts


def distinct_families(fonts: Iterable[Font]) -> list[Font]:
    """`fonts` with each family once (by its `slug`), from its first file: the default faces come first, so a
    system copy of DejaVu Sans adds nothing, and a file listed twice is drawn once."""
    seen: dict[str, Font] = {}
    for font in fonts:
        seen.setdefault(font.slug, font)
    return list(seen.values())


def _first_line(text: str | None, limit: int = 160) -> str | None:
    """The first line of a name-table string, white space collapsed, cut at `limit` characters."""
    if not text or not text.strip():
        return None
    line = " ".join(text.strip().splitlines()[0].split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def font_provenance(font: Font) -> dict[str, str | None]:
    """What a font says of itself in its OpenType `name` table, for the dataset card: {family, file, sha256
    (of the file: which copy was drawn), copyright (name ID 0), licence (ID 13), licence_url (ID 14)}, each
    string its first line cut at 160 characters; None where it says nothing (matplotlib's Computer Modern
    faces name no licence)."""
    names = _open(font.path, font.index)["name"]
    return {
        "family": font.family,
        "file": font.path.name,
        "sha256": file_sha256(font.path),
        "copyright": _first_line(names.getDebugName(0)),
        "licence": _first_line(names.getDebugName(13)),
        "licence_url": _first_line(names.getDebugName(14)),
    }


def render_digit(font: Font, digit: int, rng: np.random.Generator, jitter: Jitter = Jitter()) -> np.ndarray:
    """One digit in one font, uint8 (28, 28), with this generator's rotation, scale and stroke."""
    angle = rng.uniform(-jitter.rotation, jitter.rotation)
    scale = rng.uniform(jitter.min_scale, 1.0)
    stroke = int(rng.integers(0, jitter.stroke + 1))
    face = ImageFont.truetype(str(font.path), size=CANVAS // 2, index=font.index)
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(canvas).text(
        (CANVAS / 2, CANVAS / 2), DIGITS[digit], fill=255, font=face, anchor="mm", stroke_width=stroke,
        stroke_fill=255,
    )  # fmt: skip
    canvas = canvas.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=0)
    return mnist_layout(np.asarray(canvas), box=max(1, round(BOX * scale)))


def render_font_digits(fonts: list[Font], per_font: int, seed: int, jitter: Jitter = Jitter()) -> RawDigits:
    """`per_font` renderings of each digit in each font of a distinct family (`distinct_families`): 10 x
    per_font rows a family, labels balanced.

    The rendering of (font i, digit d, copy k) comes from its own generator, seeded by (seed, i, d, k), so
    adding a font or copies leaves the others' images as they were. ids are "font-<family>-<d>-<k>" with the
    family slugged; `details` holds each row's family, `provenance["fonts"]` each font drawn
    (`font_provenance`).
    """
    fonts = distinct_families(fonts)
    if not fonts:
        raise DataError("fonts: no font to render (give at least one font file or folder)")
    if per_font < 1:
        raise DataError(f"fonts: per_font must be >= 1, got {per_font}")
    images, labels, ids, details = [], [], [], []
    for i, font in enumerate(fonts):
        for digit in range(10):
            for k in range(per_font):
                rng = np.random.default_rng([seed, i, digit, k])
                images.append(render_digit(font, digit, rng, jitter))
                labels.append(digit)
                ids.append(f"font-{font.slug}-{digit}-{k}")
                details.append(font.family)
    provenance = {"fonts": [font_provenance(font) for font in fonts]}
    return RawDigits(np.stack(images), np.asarray(labels, np.int64), ids, "fonts", details, provenance)
