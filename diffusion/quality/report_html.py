"""The report's templates (`diffusion/quality/templates/*.html.j2`) and what they cannot do themselves:
number formatting, the classes and `data-value` of a value cell.

    render("version.html.j2", **context) -> str

One Jinja2 environment for the process (thread-safe once built), autoescaping on, StrictUndefined (a
missing context key is a bug, not an empty string). Every number a template writes goes through the
`num` macro (templates/macros.html.j2): its element carries `data-value` (and the caller's `id` or
`data-*`), so tests and scripts read the page back.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jinja2
from markupsafe import Markup

MISSING = "not evaluated"


def fmt(value: object, digits: int | None = 3, missing: str = "n/a") -> str:
    """A value as shown: floats with `digits` decimals (as written if None), others as is, None as
    `missing`, NaN and infinities as "n/a"."""
    if value is None:
        return missing
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}f}" if digits is not None else str(value)
    return str(value)


def raw(value: object) -> str | None:
    """The `data-value` of a cell: the value as written (booleans lowercase), None when there is none."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def value_class(value: object, extra: str | None = None) -> str | None:
    """A cell's classes: `extra`, "num" for numbers, "missing" for None or NaN."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    absent = value is None or (isinstance(value, float) and not math.isfinite(value))
    return (
        " ".join(c for c in (extra, "num" if numeric else None, "missing" if absent else None) if c) or None
    )


def to_json(value: Any) -> str:
    """JSON for a data attribute (escaped by the template)."""
    return json.dumps(value, sort_keys=True)


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("diffusion.quality", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.filters.update(fmt=fmt, raw=raw, value_class=value_class, to_json=to_json)
_ENV.globals["MISSING"] = MISSING


def render(template: str, **context: Any) -> str:
    """Render one page template with `context`."""
    return _ENV.get_template(template).render(**context)


def markup(html: str) -> Markup:
    """Trusted HTML (our own inline SVG) that the template inserts as is."""
    return Markup(html)
