"""The one error base of the project: user-facing failures with a one-line message.

The CLI prints `error: <message>` for any `DigitsError` and exits non-zero; anything else is a
bug and keeps its traceback. Imports nothing of ours.
"""

import re


class DigitsError(ValueError):
    """Bad input (params, data files, checkpoints, model names). The message is one line naming it."""


class DataError(DigitsError):
    """A data source or data file is missing, corrupt or not in the expected format."""


# OSErrors that say the input is wrong, not that the disk or network hiccupped: retrying cannot help.
_BAD_INPUT_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def is_transient(err: BaseException) -> bool:
    """Whether `err` is an I/O failure worth retrying: an OSError (other than a missing, existing or
    forbidden path) is `err` itself or anywhere in its chain of causes, however it was wrapped (`raise ... from None` ends the chain). Bad input
    (a DigitsError raised for its own reasons, with no such cause) never is."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and not isinstance(err, _BAD_INPUT_OS_ERRORS):
            return True
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return False


class QualityAlert(RuntimeError):
    """A graded version fell outside the `monitor` section's floors or ceilings. Not bad input: the version
    stays published for audit, flagged; the flow run that graded it fails with this one line (`digits
    generate` exits 1). `result`: what the run published, when the flow attached it (else None)."""

    result: object = None


def one_line(err: BaseException) -> str:
    """An exception as a short line for a DigitsError message: its first line, at most 200 characters,
    without object reprs such as <_io.BytesIO object at 0x...> (its type's name when it says nothing)."""
    text = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)).strip() or type(err).__name__
    return text.splitlines()[0][:200]
