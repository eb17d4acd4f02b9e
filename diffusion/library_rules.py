"""Params that a library only reads later, checked in the params check by that library's own rules.

Each `Annotated` type below carries a pydantic after-validator for a field of diffusion/config/: it
returns the value or raises ValueError with one line, which `parse_params` turns into a ConfigError naming the
key. The library is imported inside the check (only when params set the key) and the verdict is cached:

    PrefectCron         (prefect)   Prefect's CronSchedule accepts it, and Prefect's croniter finds a next fire time
    PrefectTimezone     (prefect)   Prefect's CronSchedule accepts it (a name in zoneinfo.available_timezones())
    FsspecUrl           (fsspec)    a local path, or a URL whose every protocol fsspec knows and can import
    ClipContextLength   (open_clip) open_clip's tokenizer fits every prompt and caption of diffusion/judges/prompts.py

A check runs when its library is among the validation context's "libraries" (`parse_params(raw,
libraries=...)`), and always without a context. The `digits` commands name the libraries that read those
keys in their own work (`diffusion.cli.LIBRARY_RULES`: train-clip open_clip, generate and gc fsspec,
serve Prefect and fsspec), so a stage that never builds a CLIP or a schedule does not import open_clip
(2 s) or Prefect (1 s) just to check a key it does not read; every key is still checked, by its library,
before the work of the command that reads it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from functools import cache
from typing import Annotated, TypeVar

from pydantic import AfterValidator, ValidationInfo

LIBRARIES = frozenset({"prefect", "fsspec", "open_clip"})
V = TypeVar("V", str, int)


def applies(library: str, info: ValidationInfo) -> bool:
    """Whether this validation checks by `library`'s rules: the context's "libraries" name it, or there is
    no context (every library's rules)."""
    context = info.context
    return context is None or library in context.get("libraries", LIBRARIES)


def _raising(library: str, problem: Callable[[V], str | None]) -> Callable[[V, ValidationInfo], V]:
    """A pydantic after-validator from a function that names a value's problem (None: no problem), run when
    the validation applies `library`'s rules."""

    def check(value: V, info: ValidationInfo) -> V:
        if applies(library, info) and (found := problem(value)) is not None:
            raise ValueError(found)
        return value

    return check


def _first_message(err: Exception) -> str:
    """The first error of a pydantic ValidationError (or any exception) as one line, without its prefix."""
    errors = getattr(err, "errors", None)
    text = errors()[0]["msg"] if callable(errors) else str(err)
    return text.removeprefix("Value error, ").strip().splitlines()[0]


# --------------------------------------------------------------------------- Prefect schedules
@cache
def _cron_problem(cron: str) -> str | None:
    from prefect.client.schemas.schedules import CronSchedule  # the object flows/deploy.py builds
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError as err:
        return (
            "cron must be a five-field cron expression such as '0 3 * * *' (minute hour day month weekday);"
            f" Prefect: {_first_message(err)}"
        )
    try:  # the cron library Prefect's scheduler computes run times with (vendored since Prefect 3.4)
        from prefect._vendor.croniter import CroniterError, croniter
    except ImportError:  # pragma: no cover - earlier Prefect 3 releases depend on croniter itself
        from croniter import CroniterError, croniter
    try:
        croniter(cron, datetime.datetime.now(), day_or=True).get_next(datetime.datetime)
    except (CroniterError, ValueError):
        return "cron never fires: no date matches it (such as 30 February); choose days that exist"
    return None


check_prefect_cron = _raising("prefect", _cron_problem)


@cache
def _timezone_problem(timezone: str) -> str | None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        if not timezone:
            raise ValueError("empty")
        CronSchedule(cron="0 0 * * *", timezone=timezone)
    except (ValidationError, ValueError):
        return (
            "timezone must be an IANA name such as Europe/Berlin, one of zoneinfo.available_timezones()"
            " (the only names Prefect schedules accept)"
        )
    return None


check_prefect_timezone = _raising("prefect", _timezone_problem)


# --------------------------------------------------------------------------- fsspec
@cache
def _url_problem(url: str) -> str | None:
    import fsspec
    from fsspec.core import split_protocol

    for part in url.split("::"):  # chained URLs: simplecache::s3://bucket/path
        protocol = split_protocol(part)[0] or "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as err:
            return f"protocol '{protocol}://' needs a package that is not installed ({_first_message(err)})"
        except ValueError:
            return f"fsspec knows no protocol '{protocol}://'; use a local folder or a URL such as s3://bucket/path"
    return None


check_fsspec_url = _raising("fsspec", _url_problem)


# --------------------------------------------------------------------------- open_clip
@cache
def clip_tokens_needed() -> tuple[int, str]:
    """(tokens, text): the longest text the domain CLIP tokenizes, counted by open_clip's tokenizer.

    `open_clip.get_tokenizer` gives a model config without `hf_tokenizer_name` (ours) a SimpleTokenizer,
    which frames each text's BPE ids with a start and an end token.
    """
    from open_clip.tokenizer import SimpleTokenizer

    from diffusion.judges.prompts import tokenized_texts

    tokenizer = SimpleTokenizer()
    return max((len(tokenizer.encode(text)) + 2, text) for text in tokenized_texts())


def _context_length_problem(length: int) -> str | None:
    needed, text = clip_tokens_needed()
    if length >= needed:
        return None
    return (
        f"context_length must be >= {needed}: open_clip's tokenizer makes {needed} tokens (start and end"
        f" included) of {text!r}, and a shorter context cuts the ten prompts to the same tokens"
    )


check_clip_context_length = _raising("open_clip", _context_length_problem)


PrefectCron = Annotated[str, AfterValidator(check_prefect_cron)]
PrefectTimezone = Annotated[str, AfterValidator(check_prefect_timezone)]
FsspecUrl = Annotated[str, AfterValidator(check_fsspec_url)]
ClipContextLength = Annotated[int, AfterValidator(check_clip_context_length)]
