"""What an acceptance predictor reads: the feature schema, and one place that computes the features.

A predictor (`speckv_hf.predictor.model.GammaPredictor`) gives, for one drafted token, the probability that the target
accepts it, from what is known before the target verifies the draft. The records `speckv profile` writes carry
these features as columns of the same names. This module is the one place that computes them: the `speckv` policy
at run time ([`signal_features`][] for a drafted token, [`step_features`][] for what is constant within a step),
training from the records' columns ([`feature_matrix`][]), and [`token_features`][] for one whole row. The portable
features (`PORTABLE_FEATURES`, one row per drafted token, in this order) are:

- `confidence`: probability the draft's processed distribution gives to the drafted token.
- `max_prob`: largest probability of that distribution.
- `entropy`: entropy of that distribution, in nats.
- `margin`: difference between its two largest probabilities.
- `ngram_found`: 1.0 when the two tokens before this one occurred earlier in the sequence (`speckv_hf.core.ngram`).
- `ngram_agrees`: 1.0 when the token that followed them then is the drafted token.
- `position`: 0-based position of the token in the current draft.
- `prev_accepted_fraction`: accepted / drafted tokens of the previous step of the call (1.0 before any step).
- `running_acceptance`: acceptance rate of the call so far (accepted / drafted over all previous steps).
- `do_sample`: 1.0 when the call samples (acceptance is then probabilistic), 0.0 when it decodes greedily.
- `compression_bits`: bits per weight of the target (32, 16, 8, 4, ...).
- `quantized`: 1.0 when the target is quantized, else 0.0.
- `cost_ratio`: draft forward time / target forward time.
- `log_cost_ratio`: natural log of `cost_ratio`.

The first four describe the draft's distribution at the position of the token whose acceptance is predicted.
A `pair` predictor also reads the draft's last hidden state at that position (width `hidden_state_dim`); it only
transfers to the draft it was trained with.

The SpecKV paper's predictor (`kind="paper"`, arXiv 2605.02888) reads other features, one row per *step*, in
`PAPER_FEATURES` order: `mean_draft_entropy` and `max_draft_entropy` (in **bits**) and `mean_draft_confidence` and
`min_draft_confidence` over the step's drafted tokens, `comp_enc` (the target's compression: fp16 0, int8 1,
nf4 2) and `gamma` (tokens drafted in the step). Their meaning is the paper's, versioned by `PAPER_SCHEMA_VERSION`;
`speckv_hf.predictor.paper` computes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..core.signals import TokenSignals

__all__ = [
    "COST_RATIO_FLOOR",
    "FEATURE_SCHEMA_VERSION",
    "PAPER_FEATURES",
    "PAPER_SCHEMA_VERSION",
    "PORTABLE_FEATURES",
    "RECORDED_FEATURES",
    "SIGNAL_FEATURES",
    "STEP_FEATURES",
    "FeatureSchema",
    "PredictorSchemaError",
    "feature_matrix",
    "signal_features",
    "step_features",
    "token_features",
]

FEATURE_SCHEMA_VERSION = 2
"""Version of the meaning of the features; bump it when a feature's definition changes (2: `ngram_found` and
`ngram_agrees` and `do_sample` added)."""

SIGNAL_FEATURES: tuple[str, ...] = ("confidence", "max_prob", "entropy", "margin", "ngram_found", "ngram_agrees")
"""The features of one drafted token's signals (`TokenSignals` fields of the same names), in schema order."""

STEP_FEATURES: tuple[str, ...] = (
    "prev_accepted_fraction",
    "running_acceptance",
    "do_sample",
    "compression_bits",
    "quantized",
    "cost_ratio",
    "log_cost_ratio",
)
"""The features that are the same for every token of a step (the call so far, the target, the costs)."""

PORTABLE_FEATURES: tuple[str, ...] = (*SIGNAL_FEATURES, "position", *STEP_FEATURES)
"""Features known before a drafted token is verified, in the order a portable predictor reads them."""

RECORDED_FEATURES: tuple[str, ...] = tuple(name for name in PORTABLE_FEATURES if name != "log_cost_ratio")
"""The features the records carry as columns; the others are derived from them (`feature_matrix`)."""

COST_RATIO_FLOOR = 1e-4
"""Smallest `cost_ratio` a feature row holds, so its log stays finite."""

PAPER_SCHEMA_VERSION = 1
"""Version of the meaning of `PAPER_FEATURES`, fixed by the paper: independent of `FEATURE_SCHEMA_VERSION`."""

PAPER_FEATURES: tuple[str, ...] = (
    "mean_draft_entropy",
    "mean_draft_confidence",
    "max_draft_entropy",
    "min_draft_confidence",
    "comp_enc",
    "gamma",
)
"""Step-level features of the SpecKV paper's predictor, in its input order (entropies in bits)."""


def signal_features(token: TokenSignals) -> tuple[float, ...]:
    """The features of one drafted token's signals, in `SIGNAL_FEATURES` order.

    Args:
        token: the token's signals (`speckv_hf.core.signals.TokenSignals`, or anything with the same fields).

    Returns:
        The six values, booleans as 1.0 / 0.0.
    """
    return _signal_values(
        token.confidence, token.max_prob, token.entropy, token.margin, token.ngram_found, token.ngram_agrees
    )


def _signal_values(
    confidence: float, max_prob: float, entropy: float, margin: float, ngram_found: bool, ngram_agrees: bool
) -> tuple[float, ...]:
    return (
        float(confidence),
        float(max_prob),
        float(entropy),
        float(margin),
        1.0 if ngram_found else 0.0,
        1.0 if ngram_agrees else 0.0,
    )


def step_features(
    prev_accepted_fraction: float,
    running_acceptance: float,
    do_sample: bool,
    compression_bits: int,
    quantized: bool,
    cost_ratio: float,
) -> tuple[float, ...]:
    """The features that are constant within a step, in `STEP_FEATURES` order.

    Args:
        prev_accepted_fraction: previous step's accepted / drafted (1.0 before any).
        running_acceptance: the call's accepted / drafted so far (1.0 before any).
        do_sample: whether the call samples.
        compression_bits: bits per weight of the target.
        quantized: whether the target is quantized.
        cost_ratio: draft / target forward time (clamped to at least `COST_RATIO_FLOOR` for the log).

    Returns:
        The seven values, `log_cost_ratio` last.
    """
    ratio = max(float(cost_ratio), COST_RATIO_FLOOR)
    return (
        float(prev_accepted_fraction),
        float(running_acceptance),
        1.0 if do_sample else 0.0,
        float(compression_bits),
        1.0 if quantized else 0.0,
        ratio,
        math.log(ratio),
    )


def token_features(
    confidence: float,
    max_prob: float,
    entropy: float,
    margin: float,
    ngram_found: bool,
    ngram_agrees: bool,
    position: int,
    prev_accepted_fraction: float,
    running_acceptance: float,
    do_sample: bool,
    compression_bits: int,
    quantized: bool,
    cost_ratio: float,
) -> tuple[float, ...]:
    """The portable features of one drafted token, in `PORTABLE_FEATURES` order: [`signal_features`][], the
    position, then [`step_features`][].

    Args:
        confidence: see the module docstring for each argument.
        max_prob: ...
        entropy: in nats.
        margin: ...
        ngram_found: whether the context predicts a token at this position.
        ngram_agrees: whether that prediction is the drafted token.
        position: 0-based position in the draft.
        prev_accepted_fraction: previous step's accepted / drafted (1.0 before any).
        running_acceptance: the call's accepted / drafted so far (1.0 before any).
        do_sample: whether the call samples.
        compression_bits: bits per weight of the target.
        quantized: whether the target is quantized.
        cost_ratio: draft / target forward time (clamped to at least `COST_RATIO_FLOOR` for the log).

    Returns:
        The feature values.
    """
    return (
        *_signal_values(confidence, max_prob, entropy, margin, ngram_found, ngram_agrees),
        float(position),
        *step_features(prev_accepted_fraction, running_acceptance, do_sample, compression_bits, quantized, cost_ratio),
    )


def feature_matrix(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The portable features of many tokens at once, from their recorded columns (what `token_features` computes
    for one).

    Args:
        columns: for each name of `RECORDED_FEATURES`, an array of shape `(rows,)` (float64, booleans as 1.0 /
            0.0, NaN where a value is missing), as the records' token shards hold them.

    Returns:
        `np.ndarray` of shape `(rows, len(PORTABLE_FEATURES))`, float32; NaN where a value is missing.
    """
    values = {name: np.asarray(columns[name], dtype=np.float64) for name in RECORDED_FEATURES}
    values["cost_ratio"] = np.maximum(values["cost_ratio"], COST_RATIO_FLOOR)  # NaN (missing) stays NaN
    values["log_cost_ratio"] = np.log(values["cost_ratio"])
    return np.stack([values[name] for name in PORTABLE_FEATURES], axis=1).astype(np.float32)


class PredictorSchemaError(ValueError):
    """The features a predictor reads differ from the ones expected."""


@dataclass(frozen=True)
class FeatureSchema:
    """What a predictor reads.

    Attributes:
        version: feature schema version (`FEATURE_SCHEMA_VERSION` when built by this speckv-hf).
        features: feature names, in the column order of the predictor's `features` input.
        hidden_state_dim: width of the draft hidden state a `pair` predictor also reads; 0 for none.
    """

    version: int
    features: tuple[str, ...]
    hidden_state_dim: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))

    def differences(self, other: FeatureSchema, what: str = "the predictor") -> list[str]:
        """Lists how `other` differs from this (expected) schema.

        Args:
            other: the schema to compare with this one.
            what: how the messages name `other`.

        Returns:
            One line per difference (empty when compatible): the schema version, the features expected but missing
            from `other`, the features of `other` not expected, their order, the hidden-state width.
        """
        differences = []
        if self.version != other.version:
            differences.append(f"schema version {self.version} (expected) vs {other.version} ({what})")
        missing = [name for name in self.features if name not in other.features]
        extra = [name for name in other.features if name not in self.features]
        if missing:
            differences.append(f"missing features {missing} (expected, not read by {what})")
        if extra:
            differences.append(f"extra features {extra} (read by {what}, not expected)")
        if not missing and not extra and self.features != other.features:
            differences.append(f"feature order differs: expected {list(self.features)}, {what} {list(other.features)}")
        if self.hidden_state_dim != other.hidden_state_dim:
            differences.append(
                f"hidden-state width {self.hidden_state_dim} (expected) vs {other.hidden_state_dim} ({what})"
            )
        return differences

    def check_compatible(self, other: FeatureSchema, what: str = "the predictor") -> None:
        """Raises unless `other` reads exactly the features of this (expected) schema, in the same order.

        Args:
            other: the schema to check, e.g. a loaded predictor's `schema`.
            what: how the message names `other`.

        Raises:
            PredictorSchemaError: naming every difference (see `differences`).
        """
        differences = self.differences(other, what)
        if differences:
            raise PredictorSchemaError(
                f"feature schema of {what} does not match the expected one: {'; '.join(differences)}. "
                "Retrain the predictor on the expected features (speckv train), or build its inputs from "
                "`predictor.schema.features` in that order."
            )
