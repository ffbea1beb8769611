"""The records as `speckv train` learns from them: token rows as arrays, whole steps only, split by prompt.

[`load_tokens`][] reads the token shards `speckv profile` wrote (the portable features through
`speckv_hf.predictor.features.feature_matrix`), drops every step with a missing value and sorts by step and position;
[`split_prompts`][] holds prompts out (never rows) with a hash of `prompt_id` ([`heldout_prompts`][]), and keeps a
validation slice of the training prompts for early stopping.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..predictor.features import PORTABLE_FEATURES, RECORDED_FEATURES, feature_matrix
from .records import RECORDS_SCHEMA_VERSION, RecordsSchemaError

__all__ = ["TokenRows", "TrainingDataError", "heldout_prompts", "load_tokens", "split_prompts", "split_sizes"]

_VALIDATION_FRACTION = 0.15  # of the training prompts
_STEP_KEYS = ("prompt_id", "compression", "setting", "step")
_RAW_COLUMNS = (
    *_STEP_KEYS,
    "pair",
    "source",
    "accepted",
    "reached",
    *(name for name in RECORDED_FEATURES if name not in _STEP_KEYS),
)


class TrainingDataError(ValueError):
    """The records cannot train a predictor as asked; the message names the fix."""


@dataclass(frozen=True)
class TokenRows:
    """Token rows as arrays, sorted by step then position; every step complete."""

    features: np.ndarray  # (n, F) float32, PORTABLE_FEATURES order
    hidden: np.ndarray | None  # (n, H) float32
    accepted: np.ndarray  # (n,) bool
    reached: np.ndarray  # (n,) bool
    prompts: np.ndarray  # (n,) str
    steps: np.ndarray  # (n,) int64 step index
    position: np.ndarray  # (n,) int64
    cost_ratio: np.ndarray  # (n,) float64, clamped like the features

    def take(self, mask: np.ndarray) -> TokenRows:
        return TokenRows(**{name: None if v is None else v[mask] for name, v in self.__dict__.items()})


def heldout_prompts(prompt_ids: Sequence[str] | np.ndarray, holdout: float, salt: str = "") -> np.ndarray:
    """Which rows belong to held-out prompts: `crc32(salt + prompt_id) / 2**32 < holdout` (no seed, no state).

    Args:
        prompt_ids (shape `(n,)`): the prompt of each row.
        holdout: share of prompts to hold out, in (0, 1).
        salt: a prefix for another, independent split (the validation slice uses `"validation:"`).

    Returns:
        `np.ndarray` of shape `(n,)`: True for rows of held-out prompts.
    """
    unique, inverse = np.unique(np.asarray(prompt_ids, dtype=object), return_inverse=True)
    draws = np.array([zlib.crc32(f"{salt}{pid}".encode()) / 2**32 for pid in unique], dtype=np.float64)
    return (draws < holdout)[inverse.ravel()]


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return pc.cast(table.column(name), pa.float64()).to_numpy()


def _read_tokens(records_dir: Path, hidden: bool) -> pa.Table:
    folder = Path(records_dir) / "tokens"
    shards = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")) if folder.is_dir() else []
    if not shards:
        raise TrainingDataError(
            f"{records_dir} holds no tokens/*.parquet shards: pass the --out folder of speckv profile"
        )
    columns = [*_RAW_COLUMNS, "hidden_state"] if hidden else list(_RAW_COLUMNS)
    tables = []
    for path in shards:
        schema = pq.read_schema(path)
        version = (schema.metadata or {}).get(b"speckv_records_schema_version", b"none").decode()
        missing = [name for name in columns if name not in schema.names]
        if version != str(RECORDS_SCHEMA_VERSION) or missing:
            raise RecordsSchemaError(
                f"{path} holds records schema version {version} (missing columns {missing}), this speckv-hf reads "
                f"version {RECORDS_SCHEMA_VERSION}: profile again with this speckv-hf into a new --out folder"
            )
        tables.append(pq.read_table(path, columns=columns).replace_schema_metadata(None))
    table = pa.concat_tables(tables)
    # A predictor learns the acceptance of drafted tokens; context candidates carry none of the draft's signals.
    return table.filter(pc.equal(table.column("source"), "draft"))


def load_tokens(records_dir: Path, kind: str) -> tuple[TokenRows, dict[str, Any]]:
    """Reads the drafted tokens' rows (context candidates' rows are left out), drops steps with a missing value, sorts
    by step and position.

    Args:
        records_dir: the `--out` folder of `speckv profile` (its `tokens/*.parquet` shards).
        kind: `"portable"`, or `"pair"` to read the draft's hidden states too.

    Returns:
        `(rows, info)`: the rows, and what was found (`pairs`, `compressions`, `settings`, `rows_read`,
        `rows_dropped`).

    Raises:
        TrainingDataError: for a folder without shards or rows, or with no complete step.
        RecordsSchemaError: for shards of another records schema version.
    """
    table = _read_tokens(records_dir, hidden=kind == "pair")
    if table.num_rows == 0:
        raise TrainingDataError(
            f"the token shards of {records_dir} hold no drafted tokens: profile with more prompts, and with a policy "
            "that drafts (e.g. --settings fixed:8)"
        )
    features = feature_matrix({name: _floats(table, name) for name in RECORDED_FEATURES})
    accepted, reached = _floats(table, "accepted"), _floats(table, "reached")
    keys = pc.binary_join_element_wise(*(pc.cast(table.column(k), pa.string()) for k in _STEP_KEYS), "\x1f")
    steps = np.unique(keys.to_numpy(), return_inverse=True)[1].ravel()
    invalid = ~np.isfinite(features).all(axis=1) | np.isnan(accepted) | np.isnan(reached)
    keep = np.bincount(steps, weights=invalid)[steps] == 0  # whole steps, so the stop rule sees complete ones
    if not keep.any():
        raise TrainingDataError(f"every step of {records_dir} lacks a feature value: check the profiling run")
    hidden = _hidden_states(table, records_dir) if kind == "pair" else None
    position = table.column("position").to_numpy().astype(np.int64)
    order = np.lexsort((position, steps))
    order = order[keep[order]]
    tokens = TokenRows(
        features=features[order],
        hidden=None if hidden is None else hidden[order],
        accepted=accepted[order] == 1,
        reached=reached[order] == 1,
        prompts=table.column("prompt_id").to_numpy()[order],
        steps=np.unique(steps[order], return_inverse=True)[1].ravel(),
        position=position[order],
        cost_ratio=features[order, PORTABLE_FEATURES.index("cost_ratio")].astype(np.float64),
    )
    drafted = np.bincount(tokens.steps)
    if (tokens.position != np.arange(len(order)) - np.repeat(np.cumsum(drafted) - drafted, drafted)).any():
        raise TrainingDataError(
            f"some steps of {records_dir} do not hold positions 0..G-1 once each (a unit written twice?): "
            "profile again into a new --out folder"
        )
    info = {
        "pairs": _distinct(table, "pair"),
        "compressions": _distinct(table, "compression"),
        "settings": _distinct(table, "setting"),
        "rows_read": table.num_rows,
        "rows_dropped": int((~keep).sum()),
    }
    return tokens, info


def _hidden_states(table: pa.Table, records_dir: Path) -> np.ndarray:
    """The `hidden_state` column as a `(rows, width)` float32 matrix; every row must have one, of one width."""
    column = table.column("hidden_state").combine_chunks()
    widths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
    if (widths == 0).any() or len(set(widths.tolist())) != 1:
        raise TrainingDataError(
            f"{int((widths == 0).sum())} of {len(widths)} token rows in {records_dir} have no hidden_state "
            f"(widths found: {sorted(set(widths.tolist()))}): profile with `speckv profile --hidden-states` "
            "to train kind='pair', or train kind='portable'"
        )
    return column.flatten().to_numpy().astype(np.float32).reshape(len(widths), int(widths[0]))


def _distinct(table: pa.Table, name: str) -> list[Any]:
    return sorted(value for value in pc.unique(table.column(name)).to_pylist() if value is not None)


def split_prompts(tokens: TokenRows, holdout: float) -> tuple[TokenRows, np.ndarray, TokenRows]:
    """`(reached rows of the training prompts, which of them are validation prompts, every held-out row)`."""
    held = heldout_prompts(tokens.prompts, holdout)
    if held.all() or not held.any():
        raise TrainingDataError(
            f"holdout {holdout} of {len(np.unique(tokens.prompts))} prompts leaves no "
            f"{'training' if held.all() else 'held-out'} prompt: profile more prompts (speckv profile "
            "--prompts-per-task or a longer --prompts file), or change --holdout"
        )
    train, test = tokens.take(~held), tokens.take(held)
    train_rows = train.take(train.reached)
    in_validation = heldout_prompts(train_rows.prompts, _VALIDATION_FRACTION, salt="validation:")
    if in_validation.all():  # too few prompts for a slice: no early stopping
        in_validation[:] = False
    return train_rows, in_validation, test


def split_sizes(tokens: TokenRows) -> dict[str, int]:
    """The `rows`, `prompts` and `steps` of a split, as the report gives them."""
    return {
        "rows": len(tokens.accepted),
        "prompts": len(np.unique(tokens.prompts)),
        "steps": len(np.unique(tokens.steps)),
    }
