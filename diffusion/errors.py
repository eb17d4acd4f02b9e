"""The one error base of the project: user-facing failures with a one-line message.

The CLI prints `error: <message>` for any `DigitsError` and exits non-zero; anything else is a
bug and keeps its traceback. Imports nothing of ours.
"""


class DigitsError(ValueError):
    """Bad input (params, data files, checkpoints, model names). The message is one line naming it."""


class DataError(DigitsError):
    """A data source or data file is missing, corrupt or not in the expected format."""
