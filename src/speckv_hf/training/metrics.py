"""Held-out metrics of an acceptance predictor: AUC, log-loss, calibration, and the throughput of its stop rule
simulated on recorded steps against every constant γ and the oracle (see `docs/training.md`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Metrics",
    "StopRuleReport",
    "auc",
    "calibration_curve",
    "metrics_by_mode",
    "rule_throughput",
    "step_throughput",
]

_BINS = 10


# -- metrics -------------------------------------------------------------------------------------------------------
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) statistic, tied scores getting their average rank.

    Args:
        scores (`np.ndarray` of shape `(n,)`): higher means more likely positive.
        labels (`np.ndarray` of shape `(n,)`): booleans.

    Returns:
        The AUC in [0, 1]; NaN when the labels are all of one class.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based ranks, ties averaged
    rank_sum = average_rank[inverse.ravel()][labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


@dataclass(frozen=True)
class Metrics:
    """Held-out quality of acceptance probabilities.

    Attributes:
        auc: ROC AUC (None when the held-out labels are all of one class).
        log_loss: mean binary cross-entropy in nats (probabilities clipped to [1e-7, 1 - 1e-7]).
        brier: mean squared error of the probabilities.
        base_rate: share of accepted tokens among the held-out reached tokens.
    """

    auc: float | None
    log_loss: float
    brier: float
    base_rate: float

    @classmethod
    def of(cls, probabilities: np.ndarray, labels: np.ndarray) -> Metrics:
        """The metrics of `probabilities` (shape `(n,)`) against boolean `labels` (shape `(n,)`)."""
        p, y = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7), labels.astype(np.float64)
        area = auc(probabilities, labels)
        return cls(
            auc=None if math.isnan(area) else area,
            log_loss=float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))),
            brier=float(np.mean((p - y) ** 2)),
            base_rate=float(y.mean()),
        )


def metrics_by_mode(
    sampled: np.ndarray, labels: np.ndarray, probabilities: dict[str, np.ndarray]
) -> dict[str, dict[str, Metrics]]:
    """`Metrics` of each named set of probabilities, per decoding mode present (`"greedy"`, `"sampled"`).

    Args:
        sampled (`np.ndarray` of shape `(n,)`): booleans, whether each row comes from a sampled call.
        labels (`np.ndarray` of shape `(n,)`): booleans, accepted or not.
        probabilities: name -> probabilities of shape `(n,)`.
    """
    return {
        mode: {name: Metrics.of(p[members], labels[members]) for name, p in probabilities.items()}
        for mode, members in (("greedy", ~sampled), ("sampled", sampled))
        if members.any()
    }


def calibration_curve(probabilities: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """Equal-width bins of the predicted probability: mean predicted, observed rate and count per bin."""
    index = np.clip((probabilities * _BINS).astype(np.int64), 0, _BINS - 1)
    curve = []
    for b in range(_BINS):
        members = index == b
        count = int(members.sum())
        curve.append(
            {
                "lower": b / _BINS,
                "upper": (b + 1) / _BINS,
                "mean_predicted": float(probabilities[members].mean()) if count else None,
                "observed": float(labels[members].mean()) if count else None,
                "count": count,
            }
        )
    return curve


# -- the stop rule, in target-forward time units -------------------------------------------------------------------
def step_throughput(lengths: np.ndarray, accepted: np.ndarray, cost_ratio: np.ndarray, slope: float) -> float:
    """Tokens per unit of target-forward time when step `s` drafts `lengths[s]` tokens.

    A step drafting k tokens of which the first `accepted[s]` are accepted yields `min(accepted, k) + 1` tokens for
    `k * cost_ratio + 1 + slope * k` units (k draft forwards, one verification of k tokens).

    Args:
        lengths (`np.ndarray` of shape `(steps,)`): tokens drafted per step.
        accepted (`np.ndarray` of shape `(steps,)`): accepted prefix length per step, as recorded.
        cost_ratio (`np.ndarray` of shape `(steps,)`): draft / target forward time per step.
        slope: verification cost per extra verified token, in target forwards.

    Returns:
        Total tokens over total time.
    """
    tokens = np.minimum(accepted, lengths) + 1
    return float(tokens.sum() / (lengths * cost_ratio + 1 + slope * lengths).sum())


def rule_throughput(
    p: np.ndarray,
    p_next: np.ndarray,
    drafted: np.ndarray,
    accepted: np.ndarray,
    cost_ratio: np.ndarray,
    first_token_rate: float,
    start: float,
    slope: float,
    iterations: int = 10,
) -> tuple[float, np.ndarray]:
    """Throughput of the marginal-value stop rule at its own throughput (a fixed point from `start`).

    The rule drafts the first token when `first_token_rate / (c + slope) > R`, then token j + 1 (j >= 1) while
    `prod(p[:j]) * p_next[j - 1] / (c + slope) > R`, at most `drafted` tokens; R starts at `start` and becomes the
    rule's achieved throughput, `iterations` times (Dinkelbach's iteration for a ratio).

    Args:
        p (`np.ndarray` of shape `(steps, width)`): acceptance prediction of each recorded token from its own
            features (padding beyond `drafted` is ignored).
        p_next (`np.ndarray` of shape `(steps, width)`): prediction for the token after each one, from that
            token's features with the next position (what a policy knows before drafting it).
        drafted (`np.ndarray` of shape `(steps,)`): tokens recorded per step (G).
        accepted (`np.ndarray` of shape `(steps,)`): accepted prefix length per step.
        cost_ratio (`np.ndarray` of shape `(steps,)`): draft / target forward time per step.
        first_token_rate: acceptance rate of a draft's first token.
        start: the initial R, e.g. the best constant's throughput.
        slope: verification cost per extra verified token, in target forwards.
        iterations: fixed-point iterations at most.

    Returns:
        `(throughput, lengths)`: tokens per unit time and the tokens drafted per step (shape `(steps,)`).
    """
    marginal = np.cumprod(p, axis=1) * p_next / (cost_ratio + slope)[:, None]
    inside = np.arange(p.shape[1])[None, :] + 1 < drafted[:, None]
    first = first_token_rate / (cost_ratio + slope)
    threshold, lengths = start, np.zeros_like(drafted)
    for _ in range(iterations):
        more = np.cumprod((marginal > threshold) & inside, axis=1).sum(axis=1)
        lengths = np.where(first > threshold, 1 + more, 0)
        achieved = step_throughput(lengths, accepted, cost_ratio, slope)
        if achieved == threshold:
            break
        threshold = achieved
    return threshold, lengths


@dataclass(frozen=True)
class StopRuleReport:
    """Tokens per unit of target-forward time on the held-out steps (see `docs/training.md`).

    Attributes:
        slope: verification cost per extra verified token used.
        steps: held-out steps simulated.
        first_token_rate: first-token acceptance rate of the training prompts, used by both rules.
        predictor: the marginal-value rule with the predictor.
        calibrated_confidence: the same rule with calibrated confidence as the probabilities.
        constants: constant γ (as a string, "0" is target only) -> throughput, each step capped at its G.
        best_constant_k: the best constant γ.
        best_constant: its throughput.
        oracle: drafting exactly the accepted prefix of each step.
        predictor_vs_best_constant: `predictor / best_constant`.
        predictor_vs_oracle: `predictor / oracle`.
        mean_predictor_gamma: mean tokens the predictor's rule drafts per step.
    """

    slope: float
    steps: int
    first_token_rate: float
    predictor: float
    calibrated_confidence: float
    constants: dict[str, float]
    best_constant_k: int
    best_constant: float
    oracle: float
    predictor_vs_best_constant: float
    predictor_vs_oracle: float
    mean_predictor_gamma: float
