"""The published-version file: how one command hands the version it published to the next.

`digits generate --published FILE` (the generate stage's data/generated.json) writes {"path", "version"}, the
path relative to FILE's folder, so that a checkout or a `dvc pull` elsewhere finds its own copy. Every
command and library function that takes a version folder also takes such a file on the local disk
(`published_path`; the version it names may be a URL).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffusion.errors import DataError


def read_json_object(path: str, what: str) -> dict:
    """A JSON object from `path`; DataError (one line naming the file and `what` it should be) otherwise."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such file ({what})") from None
    except ValueError as err:
        raise DataError(f"{path}: cannot read {what} ({err})") from None
    except OSError as err:  # kept as the cause: a disk failure may pass (is_transient)
        raise DataError(f"{path}: cannot read {what} ({err})") from err
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected {what}, a JSON object, got {type(doc).__name__}")
    return doc


def handed_on_path(version: str, json_file: str) -> str:
    """How `digits generate --published` names a version: a local folder relative to the folder of the JSON
    file that names it (a checkout or a `dvc pull` elsewhere finds its own copy, where an absolute path
    would name the first machine's), a URL as it is."""
    if "://" in version:
        return version
    try:
        return os.path.relpath(Path(version).resolve(), Path(json_file).resolve().parent)
    except ValueError:  # another drive (Windows): no relative path exists
        return str(Path(version).resolve())


def published_path(given: str) -> str:
    """A version folder (path or URL), or the JSON file `digits generate --published` wrote naming one (a
    relative path there is relative to the JSON file's folder)."""
    if not given.endswith(".json"):
        return given
    doc = read_json_object(given, "the version the generate stage published: `dvc repro generate` writes it")
    path = doc.get("path")
    if "metrics" in doc:  # its path is the grader's, relative to where `digits evaluate` ran
        raise DataError(
            f"{given}: an evaluation document, not the file `digits generate --published` writes; give that"
            " file (data/generated.json in `dvc repro`) or the version's folder"
        )
    if not isinstance(path, str):
        raise DataError(f"{given}: not a published-version file (JSON with a 'path')")
    if "://" in path or Path(path).is_absolute():
        return path
    return str(Path(given).parent / path)
