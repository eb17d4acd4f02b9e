"""Digit sources of other styles read real files: the fonts pip installs with matplotlib (printed digits) and
scikit-learn's bundled UCI handwritten digits, both brought to the MNIST layout."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from fontTools.ttLib import TTFont

from diffusion.data.images import mnist_layout
from diffusion.data.printed import (
    Jitter,
    _named_as_digit,
    default_fonts,
    distinct_families,
    font_files,
    load_font,
    render_font_digits,
)
from diffusion.data.sources import load_uci_digits
from diffusion.errors import DataError

MATPLOTLIB_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
DEBIAN_FONTS = Path("/usr/share/fonts/truetype")  # fonts-liberation2, fonts-freefont-ttf, ... when installed


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    weights = image.astype(np.float64)
    rows, cols = np.indices(image.shape)
    return (rows * weights).sum() / weights.sum(), (cols * weights).sum() / weights.sum()


def assert_mnist_layout(images: np.ndarray) -> None:
    """uint8 28x28, ink inside a 20x20 box (+1 for Lanczos ringing), centre of mass within half a pixel of
    (14, 14), where MNIST's digits have theirs (`test_mnist_digits_have_their_centre_of_mass_at_14`)."""
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    for image in images:
        rows, cols = np.nonzero(image > 0)
        assert np.ptp(rows) + 1 <= 21 and np.ptp(cols) + 1 <= 21
        cy, cx = centre_of_mass(image)
        assert abs(cy - 14) <= 0.55 and abs(cx - 14) <= 0.55


def test_mnist_digits_have_their_centre_of_mass_at_14(npm_cache: Path) -> None:
    """The target the other sources are brought to: the mean centre of mass of real MNIST digits."""
    from diffusion.data.sources import load_npm_mnist

    raw = load_npm_mnist(npm_cache)
    centres = np.array([centre_of_mass(image) for image in raw.images[:2000]])
    assert np.allclose(centres.mean(axis=0), 14.0, atol=0.05), centres.mean(axis=0)


def test_default_fonts_are_the_text_faces_matplotlib_installs() -> None:
    fonts = default_fonts()
    families = [f.family for f in fonts]
    assert len(fonts) >= 20 and len(set(families)) == len(families)
    assert all(f.path.parent == MATPLOTLIB_FONTS for f in fonts)
    assert {"DejaVu Sans", "DejaVu Serif Bold", "DejaVu Sans Mono Oblique", "STIXGeneral", "cmr10"} <= set(
        families
    )
    names = {f.path.name for f in fonts}
    # symbol and fallback faces map 0-9 to other signs (or none): left out
    assert not names & {"cmsy10.ttf", "cmex10.ttf", "LastResortHE-Regular.ttf", "STIXSizOneSymReg.ttf"}


def test_renderings_are_mnist_shaped_balanced_and_seeded() -> None:
    fonts = default_fonts()[:3]
    raw = render_font_digits(fonts, per_font=2, seed=7)
    assert raw.source == "fonts" and len(raw.ids) == len(set(raw.ids)) == 60
    assert np.bincount(raw.labels).tolist() == [6] * 10
    assert raw.details is not None and set(raw.details) == {f.family for f in fonts}
    assert_mnist_layout(raw.images)
    again = render_font_digits(fonts, per_font=2, seed=7)
    assert np.array_equal(raw.images, again.images) and raw.ids == again.ids
    other = render_font_digits(fonts, per_font=2, seed=8)
    assert not np.array_equal(raw.images, other.images)
    # each rendering has its own generator: more fonts or copies leave the earlier ones as they were
    more = render_font_digits(default_fonts()[:4], per_font=3, seed=7)
    kept = {i: img for i, img in zip(more.ids, more.images, strict=True)}
    assert all(np.array_equal(kept[i], img) for i, img in zip(raw.ids, raw.images, strict=True))


def test_jitter_varies_the_drawing_and_none_draws_one_glyph() -> None:
    font = default_fonts()[:1]
    varied = render_font_digits(font, per_font=4, seed=0).images.reshape(10, 4, 28, 28)
    assert all(len({img.tobytes() for img in copies}) == 4 for copies in varied)
    still = render_font_digits(font, per_font=3, seed=0, jitter=Jitter(0.0, 1.0, 0)).images.reshape(
        10, 3, 28, 28
    )
    assert all(len({img.tobytes() for img in copies}) == 1 for copies in still)


def test_bad_fonts_are_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.ttf"
    garbage.write_bytes(b"not a font at all")
    with pytest.raises(DataError, match=r"broken\.ttf: cannot load the font") as err:
        load_font(garbage)
    assert "\n" not in str(err.value)
    with pytest.raises(
        DataError, match=r"STIXSizOneSymReg\.ttf: the font has no glyph for the digit\(s\) 0, 1"
    ):
        load_font(MATPLOTLIB_FONTS / "STIXSizOneSymReg.ttf")
    with pytest.raises(DataError, match="nowhere.ttf: font file or folder not found"):
        font_files([tmp_path / "nowhere.ttf"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no font files"):
        font_files([tmp_path / "empty"])
    with pytest.raises(DataError, match="per_font must be >= 1"):
        render_font_digits(default_fonts()[:1], per_font=0, seed=0)
    with pytest.raises(DataError, match="no font to render"):
        render_font_digits([], per_font=1, seed=0)


def test_a_symbol_font_is_refused_naming_the_file_and_the_code_point(tmp_path: Path) -> None:
    """cmex10 maps '0'-'9' to bracket pieces: a user font whose digits are named as other glyphs is refused;
    a text face, and a font that names no glyphs (post table format 3), pass."""
    for name, glyph in (("cmex10.ttf", "parenlefttp"), ("cmsy10.ttf", "prime")):
        with pytest.raises(DataError) as err:
            font_files([MATPLOTLIB_FONTS / name])
        text = str(err.value)
        assert text.startswith(f"{MATPLOTLIB_FONTS / name}: ") and "\n" not in text
        assert "U+0030" in text and repr(glyph) in text
    assert [f.family for f in font_files([MATPLOTLIB_FONTS / "DejaVuSans.ttf"])] == ["DejaVu Sans"]
    unnamed = TTFont(str(MATPLOTLIB_FONTS / "cmex10.ttf"))
    unnamed["post"].formatType = 3.0
    unnamed.save(str(tmp_path / "unnamed.ttf"))
    assert load_font(tmp_path / "unnamed.ttf").family == "cmex10"


@pytest.mark.parametrize(
    ("glyph", "digit", "ok"),
    [
        ("zero", 0, True),
        ("one.lf", 1, True),
        ("zero.tosf", 0, True),
        ("sevenoldstyle", 7, True),
        ("uni0033", 3, True),
        ("u0039", 9, True),
        ("glyph00017", 4, True),  # anonymous: says nothing
        ("parenlefttp", 0, False),
        ("uni0031", 2, False),  # another digit's code point
        ("lastresortlatin", 5, False),
        ("onehalf", 1, False),  # a fraction, not the digit
        ("zerosuperior", 0, False),
    ],
)
def test_digit_glyph_names(glyph: str, digit: int, ok: bool) -> None:
    assert _named_as_digit(glyph, digit) is ok


def test_a_system_font_folder_adds_faces() -> None:
    folders = [DEBIAN_FONTS / name for name in ("liberation2", "liberation", "freefont", "dejavu")]
    found = [f for f in folders if f.is_dir() and any(f.rglob("*.ttf"))]
    if not found:
        pytest.skip(f"no Debian font package installed under {DEBIAN_FONTS} (e.g. fonts-liberation2)")
    fonts = [f for f in font_files(found[:1])]
    raw = render_font_digits(fonts[:2], per_font=1, seed=0)
    assert_mnist_layout(raw.images)


def test_a_collection_draws_every_face_and_a_family_given_twice_draws_once(tmp_path: Path) -> None:
    """A .ttc's faces are fonts of their own (each drawn from its face, not the first); the same family from a
    second file (a system copy of DejaVu, or one file listed twice) adds nothing."""
    from fontTools.ttLib import TTCollection

    sans, serif = MATPLOTLIB_FONTS / "DejaVuSans.ttf", MATPLOTLIB_FONTS / "DejaVuSerif.ttf"
    collection = TTCollection()
    collection.fonts = [TTFont(str(sans)), TTFont(str(serif))]
    collection.save(str(tmp_path / "pair.ttc"))
    faces = font_files([tmp_path / "pair.ttc"])
    assert [(f.family, f.index) for f in faces] == [("DejaVu Sans", 0), ("DejaVu Serif", 1)]
    from_collection = render_font_digits(faces, per_font=1, seed=0, jitter=Jitter(0.0, 1.0, 0))
    alone = render_font_digits(font_files([sans, serif]), per_font=1, seed=0, jitter=Jitter(0.0, 1.0, 0))
    assert np.array_equal(from_collection.images, alone.images) and from_collection.details == alone.details
    assert not np.array_equal(from_collection.images[:10], from_collection.images[10:])

    defaults = default_fonts()
    twice = [*defaults, *font_files([sans, sans, tmp_path / "pair.ttc"])]
    assert distinct_families(twice) == defaults  # every family there already, from matplotlib's own files
    raw = render_font_digits(twice, per_font=1, seed=0)
    assert len(raw.ids) == len(set(raw.ids)) == 10 * len(defaults)


def test_uci_digits_are_sklearns_scans_in_the_mnist_layout() -> None:
    from sklearn.datasets import load_digits

    raw = load_uci_digits()
    original = load_digits()
    assert raw.source == "uci-digits" and len(raw.ids) == len(set(raw.ids)) == 1797
    assert np.array_equal(raw.labels, original.target) and raw.labels.dtype == np.int64
    assert raw.details == [str(i) for i in range(1797)]
    assert_mnist_layout(raw.images)
    # the layout keeps the scan's picture: the same image upsampled, not another one
    scan = (original.images[0] * 255 / 16).round().astype(np.uint8)
    assert np.array_equal(raw.images[0], mnist_layout(scan))


def test_mnist_layout_centres_by_mass_and_rejects_an_empty_drawing() -> None:
    ink = np.zeros((100, 60), np.uint8)
    ink[10:90, 5:25] = 255  # a tall bar at the left of a large canvas
    image = mnist_layout(ink)
    assert_mnist_layout(image[None])
    assert np.ptp((image > 0).sum(axis=0).nonzero()[0]) + 1 <= 6  # 80x20 fitted to 20 high: 5 wide
    with pytest.raises(ValueError, match="nothing was drawn"):
        mnist_layout(np.zeros((8, 8), np.uint8))
