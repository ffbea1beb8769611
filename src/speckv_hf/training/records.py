"""Profiling records: the schema of the two Parquet datasets `speckv profile` writes.

A records folder holds two datasets, `steps/` (one row per speculative step) and `tokens/` (one row per candidate
token), each a set of Parquet shards readable with `pyarrow.dataset.dataset(folder / "steps")`. Rows are keyed by
`prompt_id, compression, setting, step` (tokens add `candidate`); `setting` names the γ setting or policy profiled
(e.g. `fixed:8`, `fixed:8+sample`). Every shard carries `RECORDS_SCHEMA_VERSION` in its schema metadata.

Token rows carry one row per candidate of a step, `candidate` its index among them (`0..gamma-1`): `source` tells a
candidate the context proposed (`"context"`, the step's first `context_tokens` candidates, with the proposal's
`match_length`, `occurrences`, `agreeing` and `distance`, see `speckv_hf.core.context_source`) from one the draft
drafted (`"draft"`). Drafted rows carry the portable features of `speckv_hf.predictor.features` under the same column
names, so training selects them by name (`position` is the token's position among the step's drafted tokens, as the
policy sees it); context rows leave the draft's signals null. Every row has the label: `accepted` (the target
accepted the candidate) and `reached` (every earlier candidate of the step was accepted, so `accepted` is the label of
the conditional acceptance a predictor learns; rows after the first rejection have `reached = False`). Step rows
carry the SpecKV paper's columns (entropies in nats here; the paper's are in bits) plus timings and the step's
`context_tokens`.

One call's stats become rows in `speckv_hf.training.rows`. This module writes a unit's shards atomically under names
derived from its key ([`unit_shard_name`][], [`write_shard`][]), keeps resume bookkeeping ([`completed_shards`][],
[`remove_orphans`][]) and reads a folder back with a version check ([`read_records`][]). See `docs/profiling.md`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.atomic import TMP_SUFFIX as _TMP_SUFFIX
from ..core.atomic import atomic_write

__all__ = [
    "RECORDS_SCHEMA_VERSION",
    "STEP_SCHEMA",
    "TOKEN_SCHEMA",
    "RecordsSchemaError",
    "completed_shards",
    "read_records",
    "records_folders",
    "records_table",
    "remove_orphans",
    "schema_metadata",
    "unit_shard_name",
    "write_shard",
]

RECORDS_SCHEMA_VERSION = 3  # 2: ngram_found, ngram_agrees; 3: context candidates (candidate, source, ...)

_KEYS = [
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("compression", pa.string(), nullable=False),
    pa.field("setting", pa.string(), nullable=False),
    pa.field("step", pa.int32(), nullable=False),
]
_CONTEXT = [
    pa.field("task", pa.string()),
    pa.field("do_sample", pa.bool_()),
    pa.field("pair", pa.string()),  # "target | draft" as given to speckv profile
    pa.field("compression_method", pa.string()),  # detect_compression(target).method
    pa.field("compression_bits", pa.int16()),
    pa.field("quantized", pa.bool_()),
    pa.field("draft_ms", pa.float32()),  # the call's measured draft time per token
    pa.field("target_ms", pa.float32()),  # the call's measured single-token verification time
    pa.field("cost_ratio", pa.float32()),  # draft_ms / target_ms
]

#: One row per drafted token.
TOKEN_SCHEMA = pa.schema(
    [
        *_KEYS,
        pa.field("position", pa.int32(), nullable=False),  # among the step's drafted tokens (context: in its run)
        pa.field("candidate", pa.int32(), nullable=False),  # among the step's candidates, context ones first
        pa.field("source", pa.string(), nullable=False),  # "draft" or "context"
        *_CONTEXT,
        pa.field("context_tokens", pa.int32()),  # the step's context candidates (before its drafted ones)
        pa.field("match_length", pa.int32()),  # context rows: tail tokens the proposal matched (null for drafted)
        pa.field("occurrences", pa.int32()),  # context rows: earlier occurrences of the matched n-gram
        pa.field("agreeing", pa.int32()),  # context rows: latest occurrences in a row followed by the first token
        pa.field("distance", pa.int32()),  # context rows: tokens between the copied occurrence and the sequence end
        pa.field("confidence", pa.float32()),
        pa.field("max_prob", pa.float32()),
        pa.field("entropy", pa.float32()),
        pa.field("margin", pa.float32()),
        pa.field("ngram_found", pa.bool_()),  # the two tokens before occurred earlier (speckv_hf.core.ngram)
        pa.field("ngram_agrees", pa.bool_()),  # and the token that followed them then is the drafted one
        pa.field("prev_accepted_fraction", pa.float32()),  # previous step's accepted / drafted (1.0 before any)
        pa.field("running_acceptance", pa.float32()),  # the call's accepted / drafted before this step (1.0 before)
        pa.field("accepted", pa.bool_()),
        pa.field("reached", pa.bool_()),
        pa.field("hidden_state", pa.list_(pa.float32())),  # the draft's last hidden state (null unless profiled)
    ]
)

#: One row per speculative step (one target forward).
STEP_SCHEMA = pa.schema(
    [
        *_KEYS,
        *_CONTEXT,
        pa.field("gamma", pa.int32()),
        pa.field("accepted", pa.int32()),
        pa.field("acceptance_rate", pa.float32()),
        pa.field("tokens_produced", pa.int32()),
        pa.field("context_tokens", pa.int32()),
        pa.field("mean_draft_entropy", pa.float32()),
        pa.field("mean_draft_confidence", pa.float32()),
        pa.field("max_draft_entropy", pa.float32()),
        pa.field("min_draft_confidence", pa.float32()),
        pa.field("draft_seconds", pa.float32()),
        pa.field("verify_seconds", pa.float32()),
        pa.field("overhead_seconds", pa.float32()),
    ]
)


def schema_metadata() -> dict[bytes, bytes]:
    """The key/value metadata every shard's schema carries."""
    return {b"speckv_records_schema_version": str(RECORDS_SCHEMA_VERSION).encode()}


# -- shards: one per unit and dataset, written atomically ----------------------------------------------------------
class RecordsSchemaError(ValueError):
    """A records shard written with another records schema version than this speckv-hf reads."""


def unit_shard_name(prompt_id: str, compression: str, setting: str) -> str:
    """The file name of a unit's shard (the same in `tokens/` and `steps/`).

    The name is a hash of the unit's key, so a resumed run, or another process of the same run, writes a unit to
    the same name and never duplicates it.

    Args:
        prompt_id: the prompt's id.
        compression: the target's compression name.
        setting: the profiled setting (e.g. `fixed:8+sample`).

    Returns:
        A file name such as `u-3f2a...c1.parquet`.
    """
    key = json.dumps([prompt_id, compression, setting], ensure_ascii=False)
    return f"u-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:24]}.parquet"


def records_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Builds a table of rows with a records schema and its metadata.

    Args:
        rows: one dictionary per row, with every column of `schema`.
        schema: `TOKEN_SCHEMA` or `STEP_SCHEMA`.

    Returns:
        The table, its schema carrying [`schema_metadata`][].
    """
    return pa.Table.from_pylist(rows, schema=schema.with_metadata(schema_metadata()))


def write_shard(table: pa.Table, path: str | Path) -> None:
    """Writes a Parquet shard atomically (see [`atomic_write`][]): readers and resumed runs see all of it or nothing.

    Args:
        table: the rows, with the schema (and metadata) of its dataset.
        path: the shard's final path.
    """
    atomic_write(path, lambda stream: pq.write_table(table, stream))


def records_folders(root: str | Path) -> tuple[Path, Path]:
    """The `tokens/` and `steps/` folders of a records folder (not created)."""
    root = Path(root)
    return root / "tokens", root / "steps"


def completed_shards(root: str | Path) -> set[str]:
    """Names of the units whose two shards exist (a unit is done only then: tokens are written first).

    Args:
        root: the records folder.

    Returns:
        Shard file names present in both `tokens/` and `steps/`.
    """
    tokens, steps = records_folders(root)
    if not tokens.is_dir() or not steps.is_dir():
        return set()
    return _shard_names(tokens) & _shard_names(steps)


def _shard_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")}


def remove_orphans(root: str | Path, names: set[str]) -> int:
    """Removes what an interrupted run left of the given units: temporary files, token shards without step shard.

    Only the given units are touched, so processes of one run, each cleaning its own units, never remove each
    other's files in progress.

    Args:
        root: the records folder.
        names: shard names of the units to clean (see [`unit_shard_name`][]).

    Returns:
        The number of files removed.
    """
    tokens, steps = records_folders(root)
    removed = 0
    for folder in (tokens, steps):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            # `.NAME.RANDOM.tmp`, as write_shard names them (the random part has no dot).
            temporary = path.name.startswith(".") and path.name.endswith(_TMP_SUFFIX)
            if temporary and path.name[1 : -len(_TMP_SUFFIX)].rsplit(".", 1)[0] in names:
                path.unlink(missing_ok=True)
                removed += 1
    if tokens.is_dir():
        for name in _shard_names(tokens) & names:
            if not (steps / name).exists():
                (tokens / name).unlink(missing_ok=True)
                removed += 1
    return removed


def read_records(root: str | Path) -> tuple[pa.Table, pa.Table]:
    """Reads a records folder written by `speckv profile`: the token rows and the step rows of every done unit.

    Units still being written (a token shard without its step shard) are left out, so a folder can be read while
    a run fills it.

    Args:
        root: the records folder (holding `tokens/` and `steps/`).

    Returns:
        `(tokens, steps)`: tables with `TOKEN_SCHEMA` and `STEP_SCHEMA` (and their metadata).

    Raises:
        FileNotFoundError: when `root` holds no `tokens/` and `steps/` folders.
        RecordsSchemaError: when a shard was written with another records schema version or columns; the message
            names the shard and the fix.
    """
    tokens_folder, steps_folder = records_folders(root)
    if not tokens_folder.is_dir() or not steps_folder.is_dir():
        raise FileNotFoundError(
            f"{root} is not a records folder (no tokens/ and steps/ inside): pass the --out folder of speckv profile."
        )
    names = sorted(completed_shards(root))
    tables = []
    for folder, schema in ((tokens_folder, TOKEN_SCHEMA), (steps_folder, STEP_SCHEMA)):
        parts = [_read_shard(folder / name, schema) for name in names]
        tables.append(pa.concat_tables(parts) if parts else schema.with_metadata(schema_metadata()).empty_table())
    return tables[0], tables[1]


def _read_shard(path: Path, schema: pa.Schema) -> pa.Table:
    found = pq.read_schema(path)
    version = (found.metadata or {}).get(b"speckv_records_schema_version", b"none").decode()
    if version != str(RECORDS_SCHEMA_VERSION):
        raise RecordsSchemaError(
            f"{path} holds records schema version {version}, this speckv-hf reads version {RECORDS_SCHEMA_VERSION}: "
            "read it with the speckv-hf that wrote it, or profile again into a new --out folder."
        )
    if not found.remove_metadata().equals(schema):
        raise RecordsSchemaError(
            f"{path} has other columns than records schema version {RECORDS_SCHEMA_VERSION} defines: "
            "profile again into a new --out folder."
        )
    return pq.read_table(path, schema=schema.with_metadata(schema_metadata()))
