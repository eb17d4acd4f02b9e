"""The rows of a running generation's staged shards, and the trim that makes a version of them.

Staged shards (local, one per seed block, written atomically: diffusion/generate/staging.py keeps their
folders) hold every sampled image of a block in DIGITS_SCHEMA, with its scores and an `accepted` flag. A
task writes them and reads them back on a resume (`write_shard`, `read_shard`); the run then combines them
(`concat_staged`), keeps the first accepted rows of each class up to its count (`accepted_rows`), dates them
(`with_created_at`) and orders them by the run key (`in_seeded_order`) before diffusion/data/shards.py
publishes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffusion.checkpoint import atomic_path
from diffusion.data.schema import DIGITS_SCHEMA
from diffusion.errors import DataError, one_line
from diffusion.styles import cell_digit, cell_name, cell_style


def write_shard(table: pa.Table, path: str | Path) -> None:
    """Write a DIGITS_SCHEMA table to a local Parquet file atomically (a temp file, then a rename)."""
    if not table.schema.equals(DIGITS_SCHEMA, check_metadata=False):
        raise ValueError(f"{path}: table is not in DIGITS_SCHEMA")
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    except OSError as err:  # a full or failing disk: one line, the cause kept (a task retries it)
        raise DataError(f"{path}: cannot be written ({one_line(err)})") from err


def read_shard(path: str | Path) -> pa.Table | None:
    """A staged shard, or None when it is missing, unreadable or of another schema (then it is made again)."""
    try:
        return read_staged(path)
    except DataError:
        return None


def read_staged(path: str | Path) -> pa.Table:
    """A staged shard that must be there (to publish it): DataError when it is missing or not a digits shard;
    an I/O failure keeps its cause, so a retry can tell it from bad input (`diffusion.errors.is_transient`)."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{path}: staged shard vanished; run again to remake it") from None
    except pa.ArrowInvalid as err:
        raise DataError(f"{path}: staged shard is corrupt ({err}); delete it and run again") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the staged shard ({err})") from err
    if not table.schema.equals(DIGITS_SCHEMA, check_metadata=False):
        raise DataError(f"{path}: staged shard is not in the digits schema; delete it and run again")
    return table


def concat_staged(paths: Sequence[str | Path], group: int = 100) -> pa.Table:
    """The staged shards at `paths` as one table, in their order (`read_staged` errors).

    Read `group` shards at a time and combined: a table read from a file costs ~40 KB of bookkeeping
    besides its rows, which thousands of small seed-block shards held at once would multiply.
    """
    parts = [
        pa.concat_tables([read_staged(p) for p in paths[i : i + group]]).combine_chunks()
        for i in range(0, len(paths), group)
    ]
    return pa.concat_tables(parts).combine_chunks() if parts else DIGITS_SCHEMA.empty_table()


def accepted_rows(rows: pa.Table, counts: dict[int, int]) -> pa.Table:
    """The first counts[c] accepted rows of each class c, class by class, each in the staged order.

    rows: the run's staged rows in work-key order (class, then block); a class is a (digit, style) cell,
    keyed 10 x style + digit (`diffusion.styles.cell`). Raises ValueError when a class has fewer accepted
    rows than it asks for.
    """
    accepted = rows.filter(pc.field("accepted"))
    parts = []
    for key, n in sorted(counts.items()):
        of_class = accepted.filter(
            (pc.field("label") == cell_digit(key)) & (pc.field("style") == cell_style(key))
        )
        if of_class.num_rows < n:
            raise ValueError(f"class {cell_name(key)}: {of_class.num_rows} accepted rows, {n} requested")
        parts.append(of_class.slice(0, n))
    return pa.concat_tables(parts).combine_chunks()


def in_seeded_order(table: pa.Table, key: str) -> pa.Table:
    """The table's rows in an order drawn from `key` (the run key): the same rows in the same order for the
    same key, and every class spread over every shard, so that a reader streaming shards one at a time
    (`ShardStream`) sees every class in every part of an epoch. Rows come in class order from
    `accepted_rows` and from the staged shards; published in that order, a shard would hold a few classes
    (one, from 1,000 digits per class) and a classifier trained on the stream would not learn."""
    seed = int.from_bytes(hashlib.sha256(f"row-order/{key}".encode()).digest()[:8], "little")
    return table.take(np.random.default_rng(seed).permutation(table.num_rows))


def with_created_at(table: pa.Table, created_at: datetime) -> pa.Table:
    """The table with every row's `created_at` set to the run's logical date."""
    column = pa.array([created_at] * table.num_rows, type=DIGITS_SCHEMA.field("created_at").type)
    return table.set_column(table.schema.get_field_index("created_at"), "created_at", column)
