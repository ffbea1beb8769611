"""Profiling records: the schema of the two Parquet datasets `speckv profile` writes.

A records folder holds two datasets, `steps/` (one row per speculative step) and `tokens/` (one row per drafted
token), each a set of Parquet shards readable with `pyarrow.dataset.dataset(folder / "steps")`. Rows are keyed by
`prompt_id, compression, setting, step` (tokens add `position`); `setting` names the γ setting or policy profiled
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

This module also turns one call's stats into rows ([`call_rows`][]), writes a unit's shards atomically under names
derived from its key ([`unit_shard_name`][], [`write_shard`][]), keeps resume bookkeeping ([`completed_shards`][],
[`remove_orphans`][]) and reads a folder back with a version check ([`read_records`][]). See `docs/profiling.md`.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.atomic import TMP_SUFFIX as _TMP_SUFFIX
from ..core.atomic import atomic_write

if TYPE_CHECKING:
    from ..core.stats import GenerationStats

__all__ = [
    "RECORDS_SCHEMA_VERSION",
    "STEP_SCHEMA",
    "TOKEN_SCHEMA",
    "CallContext",
    "RecordsSchemaError",
    "call_rows",
    "call_timings",
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


# -- rows: one generate() call's stats as token and step rows ------------------------------------------------------
_NO_SIGNALS = dict.fromkeys(("confidence", "max_prob", "entropy", "margin", "ngram_found", "ngram_agrees"))
_NO_PROPOSAL = dict.fromkeys(("match_length", "occurrences", "agreeing", "distance"))


@dataclass(frozen=True)
class CallContext:
    """What the rows of one profiled `generate()` call share besides its stats.

    Attributes:
        prompt_id: the prompt's id.
        task: the prompt's task.
        compression: the compression name the target was loaded with (`fp32`, `int8`, ...).
        setting: the profiled setting, e.g. `fixed:8` or `fixed:8+sample`.
        do_sample: whether the call sampled.
        pair: `"target | draft"` as given to `speckv profile`.
    """

    prompt_id: str
    task: str
    compression: str
    setting: str
    do_sample: bool
    pair: str


def call_timings(stats: GenerationStats) -> tuple[float | None, float | None, float | None]:
    """The call's draft time per token, target verification time and their ratio.

    When the generator measured its costs, these are its cost model's estimates at the end of the call (the time of
    one more drafted token and the single-token verification time, whose ratio its policy used; medians of the
    call's samples). Otherwise, from the steps (step 0 left out when later steps exist, as it carries both
    prefills): `draft_ms` is the median draft seconds per drafted token, `target_ms` the median verification time
    of the steps that drafted nothing (of all steps when none did: an upper bound), and their ratio.

    Args:
        stats: the call's stats, with per-step records.

    Returns:
        `(draft_ms, target_ms, cost_ratio)` in milliseconds, milliseconds and a plain ratio; None where unmeasured.
    """
    to_ms = lambda seconds: None if seconds is None else seconds * 1e3  # noqa: E731
    if stats.cost_ratio is not None and stats.draft_token_seconds and stats.target_seconds:
        return to_ms(stats.draft_token_seconds), to_ms(stats.target_seconds), stats.cost_ratio
    steps = [s for s in stats.steps if s.step > 0] or list(stats.steps)
    per_token = [s.draft_seconds / s.gamma for s in steps if s.gamma]
    draft_s = statistics.median(per_token) if per_token else None
    verify = [s.verify_seconds for s in steps if s.gamma == 0] or [s.verify_seconds for s in steps]
    target_s = statistics.median(verify) if verify else None
    ratio = draft_s / target_s if draft_s is not None and target_s else None
    return to_ms(draft_s), to_ms(target_s), ratio


def call_rows(
    stats: GenerationStats,
    context: CallContext,
    hidden_states: Sequence[Sequence[Sequence[float]]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Turns one call's per-step records into token rows and step rows.

    Per candidate (the step's context candidates first, then its drafted tokens): `accepted` is
    `candidate < step.accepted`, `reached` is `candidate <= step.accepted`. `prev_accepted_fraction` and
    `running_acceptance` are what a draft policy learns from, as `ContextPolicy` passes it on: drafted tokens only,
    of the steps that drafted some after an accepted context run (or none): accepted / drafted of the latest earlier
    such step (1.0 before any), and the call's accepted / drafted over its earlier such steps (1.0 before any).

    Args:
        stats: the call's stats (`SpecKVGenerator(record_steps=True)`, the default).
        context: what the rows share.
        hidden_states: per step, per candidate, the draft's last hidden state at the candidate's position
            (`hidden_size` floats), as [`draft_hidden_states`][speckv_hf.training.profile.draft_hidden_states] gives
            them; drafted rows carry theirs, context rows none; None for null `hidden_state` columns.

    Returns:
        `(token_rows, step_rows)`: dictionaries with the columns of `TOKEN_SCHEMA` and `STEP_SCHEMA`.
    """
    compression = stats.compression
    draft_ms, target_ms, cost_ratio = call_timings(stats)
    shared = {
        "prompt_id": context.prompt_id,
        "compression": context.compression,
        "setting": context.setting,
        "task": context.task,
        "do_sample": context.do_sample,
        "pair": context.pair,
        "compression_method": compression.method if compression else None,
        "compression_bits": compression.bits if compression else None,
        "quantized": compression.quantized if compression else None,
        "draft_ms": draft_ms,
        "target_ms": target_ms,
        "cost_ratio": cost_ratio,
    }
    token_rows: list[dict[str, Any]] = []
    step_rows: list[dict[str, Any]] = []
    prev_fraction, drafted_so_far, accepted_so_far = 1.0, 0, 0
    for index, step in enumerate(stats.steps):
        running = accepted_so_far / drafted_so_far if drafted_so_far else 1.0
        labels = {
            **shared,
            "step": step.step,
            "context_tokens": step.context_tokens,
            "prev_accepted_fraction": prev_fraction,
            "running_acceptance": running,
        }
        match = step.context
        proposal = _NO_PROPOSAL if match is None else {name: getattr(match, name) for name in _NO_PROPOSAL}
        for j in range(step.context_tokens):
            token_rows.append(
                {
                    **labels,
                    **_NO_SIGNALS,
                    **proposal,
                    "position": j,
                    "candidate": j,
                    "source": "context",
                    "accepted": j < step.accepted,
                    "reached": j <= step.accepted,
                    "hidden_state": None,
                }
            )
        for token in step.tokens:
            candidate = step.context_tokens + token.position
            hidden = hidden_states[index][candidate] if hidden_states is not None else None
            token_rows.append(
                {
                    **labels,
                    **_NO_PROPOSAL,
                    "position": token.position,
                    "candidate": candidate,
                    "source": "draft",
                    "confidence": token.confidence,
                    "max_prob": token.max_prob,
                    "entropy": token.entropy,
                    "margin": token.margin,
                    "ngram_found": token.ngram_found,
                    "ngram_agrees": token.ngram_agrees,
                    "accepted": candidate < step.accepted,
                    "reached": candidate <= step.accepted,
                    "hidden_state": None if hidden is None else list(hidden),
                }
            )
        signals = step.signals
        step_rows.append(
            {
                **shared,
                "step": step.step,
                "gamma": step.gamma,
                "accepted": step.accepted,
                "acceptance_rate": step.acceptance_rate,
                "tokens_produced": step.tokens_produced,
                "context_tokens": step.context_tokens,
                "mean_draft_entropy": signals.mean_entropy,
                "mean_draft_confidence": signals.mean_confidence,
                "max_draft_entropy": signals.max_entropy,
                "min_draft_confidence": signals.min_confidence,
                "draft_seconds": step.draft_seconds,
                "verify_seconds": step.verify_seconds,
                "overhead_seconds": step.overhead_seconds,
            }
        )
        # What a draft policy behind a context run learns from (`ContextPolicy.observe`): the step's drafted tokens,
        # where the run before them was accepted.
        drafted = step.gamma - step.context_tokens
        if drafted > 0 and step.accepted >= step.context_tokens:
            prev_fraction = (step.accepted - step.context_tokens) / drafted
            drafted_so_far += drafted
            accepted_so_far += step.accepted - step.context_tokens
    return token_rows, step_rows


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
