"""Where a version's evaluation document lives, and "the latest version" as consumers mean it.

    <output_root>/<name>/<version>/                    a published version (immutable once published)
    <output_root>/<name>/_quality/index.html           the report index over every version
    <output_root>/<name>/_quality/<version>/           the version's evaluation.json and report page

Evaluations and reports sit beside the versions, never inside one: grading may come later than publishing
and may be redone, a version's bytes may not change. The `_quality` folder has no manifest, so it is never
taken for a version (`diffusion.data.shards.list_versions`). Paths may be fsspec URLs.
"""

from __future__ import annotations

import json
import math
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from diffusion.checkpoint import write_bytes_atomic
from diffusion.data.shards import PublishedVersion, list_versions, url_to_fs
from diffusion.errors import DataError, is_transient

QUALITY_DIR = "_quality"
# an old flat document's keys that are no metric
FLAT_NAMES = frozenset({"version", "name", "path", "flagged"})
# An old flat document held at least one of these (`digits evaluate --metrics` of earlier code); a JSON file
# with none of them (a stray {}, a copied generated.json or generate metrics file) is no grading.
FLAT_HEADLINES = ("conditional_accuracy_published", "cas_ratio", "cas_accuracy", "frechet_distance")
DOCUMENT = "evaluation.json"


def quality_dir(output_root: str, name: str) -> str:
    """The folder beside dataset `name`'s versions that holds their evaluations and reports."""
    return f"{str(output_root).rstrip('/')}/{name}/{QUALITY_DIR}"


def document_path(out: str, version: str) -> str:
    """The evaluation document of `version` (its name) in the report folder `out`."""
    return f"{str(out).rstrip('/')}/{version}/{DOCUMENT}"


def json_safe(value: Any) -> Any:
    """NaN and infinities as null (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_document(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """`doc` when it has what every evaluation document holds (`diffusion.quality.grading.grade_version`):
    `metrics` (an object), `flags` (a list) and `flagged` (true exactly when flags are listed), so that
    "latest" and the report never read another JSON file, or a hand-edited flag, as a grading. DataError
    naming `where` otherwise."""
    fix = "give the document `digits evaluate --document` wrote, or grade the version again"
    for key, kind in (("metrics", dict), ("flags", list), ("flagged", bool)):
        if not isinstance(doc.get(key), kind):
            raise DataError(
                f"{where}: not an evaluation document ('{key}' should be a JSON "
                f"{'true or false' if kind is bool else 'object' if kind is dict else 'list'}); {fix}"
            )
    if not doc["metrics"]:
        raise DataError(f"{where}: not an evaluation document ('metrics' is empty); {fix}")
    if doc["flagged"] != bool(doc["flags"]):
        listed = f"{len(doc['flags'])} flag{'s' if len(doc['flags']) != 1 else ''}"
        flagged = str(doc["flagged"]).lower()
        raise DataError(f"{where}: 'flagged' is {flagged} but 'flags' lists {listed}; {fix}")
    return doc


def write_document(out: str, doc: dict[str, Any]) -> str:
    """Write `doc` (an evaluation document, `check_document`; it names its `version`) to
    `document_path(out, doc['version'])`: atomically on a local disk, in one put elsewhere. Returns the path."""
    path = document_path(out, doc["version"])
    check_document(doc, path)
    data = (json.dumps(json_safe(doc), indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    fs, local = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem):
        write_bytes_atomic(local, data)
    else:
        fs.pipe_file(local, data)
    return path


def read_document(out: str, version: str) -> dict[str, Any] | None:
    """The evaluation document of `version` in `out`, or None when it was not graded there."""
    path = document_path(out, version)
    fs, local = url_to_fs(path)
    try:
        doc = json.loads(fs.cat_file(local))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not an evaluation document ({err}); grade the version again") from None
    except OSError as err:  # kept as the cause: a network or disk failure may pass (is_transient)
        raise DataError(f"{path}: cannot be read ({err})") from err
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not an evaluation document (a JSON object); grade the version again")
    if doc.get("version", version) != version:  # copied or written with another version's name
        raise DataError(
            f"{path}: the evaluation document of version {doc['version']!r}, not of {version!r}; grade the"
            " version again"
        )
    if "metrics" in doc:
        return check_document(doc, path)
    if not any(_is_number(doc.get(k)) for k in FLAT_HEADLINES):  # not even an old flat document
        raise DataError(f"{path}: not an evaluation document (no metrics); grade the version again")
    return doc  # an old flat document: its numbers are the metrics


def is_flagged(doc: dict[str, Any] | None) -> bool:
    """Whether a graded version broke a monitor bound: `flagged` (true, or 1 in an old flat document) or any
    `flags` listed."""
    return doc is not None and (bool(doc.get("flagged")) or bool(doc.get("flags")))


def latest_version(
    output_root: str,
    name: str,
    include_flagged: bool = False,
    include_ungraded: bool = False,
    out: str | None = None,
) -> PublishedVersion:
    """The newest published version of `name` (by its manifest's created_at) that was graded and not flagged.

    include_flagged: flagged versions count too; include_ungraded: versions with no evaluation document yet
    (just published, grading failed, or published with --no-grade) count too. `out`: the report folder
    holding the evaluations (default: `quality_dir(output_root, name)`). A version whose manifest or
    evaluation document is broken is no candidate (an older good one is taken; the error says how many).
    Raises DataError when none is left.
    """
    out = out or quality_dir(output_root, name)
    broken: list[str] = []  # a broken manifest or document makes its version no candidate, not the call fail
    versions = list_versions(str(output_root), name, broken)
    unlisted = len(broken)  # versions whose manifest is broken
    skipped = {"flagged": 0, "not graded": 0, "broken": unlisted}
    for version in reversed(versions):
        try:
            doc = read_document(out, version.version)
        except DataError as err:
            if is_transient(err):
                raise
            skipped["broken"] += 1
            broken.append(str(err))
            continue
        if doc is None and not include_ungraded:
            skipped["not graded"] += 1
        elif is_flagged(doc) and not include_flagged:
            skipped["flagged"] += 1
        else:
            return version
    if not versions and not broken:
        raise DataError(f"{output_root}/{name}: no published version")
    why = ", ".join(f"{n} {what}" for what, n in skipped.items() if n)
    first = f"; the first broken: {broken[0]}" if broken else ""
    raise DataError(
        f"{output_root}/{name}: none of its {len(versions) + unlisted} published versions is graded and"
        f" unflagged ({why}{first});"
        " name a version folder instead (or the JSON file `digits generate --published` wrote, such as the"
        " data/generated.json of `dvc repro`)"
    )
