"""Draft policies: after each drafted token, decide whether to draft another.

A policy sees the signals of the tokens drafted so far in the step (and the call's cost model and compression
through its context) and answers one question: draft one more token? γ is thereby chosen per step, causally.
After the target verified the step, the policy observes how many tokens were accepted.

Every policy implements [`DraftPolicy`]; the trained MLP policy of a later release plugs in the same way.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .calibration import AcceptanceCalibrator
from .compression import CompressionInfo
from .cost import CostModel
from .signals import TokenSignals

__all__ = [
    "AdaptivePolicy",
    "ConfidencePolicy",
    "DraftPolicy",
    "DraftState",
    "FixedPolicy",
    "HeuristicPolicy",
    "PolicyContext",
    "StepOutcome",
    "available_policies",
    "get_policy",
]


@dataclass
class PolicyContext:
    """What a policy knows about the call it serves.

    Attributes:
        cost: the call's cost model, measured online (or set by the user).
        compression: the target's compression.
        do_sample: whether the call samples (True) or decodes greedily (False).
    """

    cost: CostModel
    compression: CompressionInfo
    do_sample: bool = False


@dataclass
class DraftState:
    """The state of the current step, as seen before deciding on the next draft token.

    Attributes:
        step: 0-based index of the step in the call.
        tokens: signals of the tokens drafted so far in this step, in order (empty before the first).
        max_tokens: hard cap on the tokens of this step (length budget), already enforced by the generator.
        throughput: tokens per second the call has achieved so far, or None before any measurement.
        sequence_length: tokens in the sequence before this step's drafts (prompt included), so a policy knows
            where in the generation the step is.
    """

    step: int
    tokens: list[TokenSignals]
    max_tokens: int
    throughput: float | None = None
    sequence_length: int = 0


@dataclass
class StepOutcome:
    """What verification made of a step.

    Attributes:
        step: 0-based index of the step in the call.
        tokens: signals of the drafted tokens.
        num_accepted: how many drafted tokens the target accepted (a prefix of `tokens`).
    """

    step: int
    tokens: list[TokenSignals]
    num_accepted: int


class DraftPolicy(ABC):
    """Interface of a draft policy.

    A policy object is a template: each `generate()` call gets a deep copy, bound with [`DraftPolicy.bind`], so
    concurrent calls never share state. Subclasses implement [`DraftPolicy.should_draft`] and may override
    [`DraftPolicy.bind`] and [`DraftPolicy.observe`].
    """

    name: ClassVar[str] = "policy"
    #: Whether the policy itself decides when drafting does not pay (enables the generator's plain fallback).
    can_skip_drafting: ClassVar[bool] = False

    def bind(self, context: PolicyContext) -> None:
        """Attaches the policy to a call. Called once per `generate()` call, before the first step."""
        self.context = context

    @abstractmethod
    def should_draft(self, state: DraftState) -> bool:
        """Whether to draft one more token in the current step.

        Args:
            state: the step so far; `state.tokens` is empty before the step's first token.

        Returns:
            True to draft another token, False to send the step to verification.
        """

    def observe(self, outcome: StepOutcome) -> None:  # noqa: B027 - optional hook
        """Learns from a verified step. The default does nothing."""

    def config(self) -> dict[str, Any]:
        """The policy's settings, for stats and records."""
        return {"name": self.name}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({settings})"


def _check_max_tokens(max_tokens: int) -> None:
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}.")


class FixedPolicy(DraftPolicy):
    """Drafts exactly `num_tokens` tokens per step (transformers' constant schedule).

    Args:
        num_tokens: γ, the number of tokens drafted per step (0 makes every step a plain target forward).
    """

    name = "fixed"

    def __init__(self, num_tokens: int = 4) -> None:
        if not isinstance(num_tokens, int) or num_tokens < 0:
            raise ValueError(f"FixedPolicy needs num_tokens to be an integer >= 0, got {num_tokens!r}.")
        self.num_tokens = num_tokens

    def should_draft(self, state: DraftState) -> bool:
        return len(state.tokens) < self.num_tokens

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "num_tokens": self.num_tokens}


class HeuristicPolicy(DraftPolicy):
    """transformers' heuristic schedule: +2 tokens after a fully accepted step, -1 (at least 1) otherwise.

    Args:
        initial_tokens: γ of the first step (transformers' default `num_assistant_tokens` is 20).
        max_tokens: upper bound on γ.
    """

    name = "heuristic"

    def __init__(self, initial_tokens: int = 20, max_tokens: int = 64) -> None:
        _check_max_tokens(max_tokens)
        if not isinstance(initial_tokens, int) or not 1 <= initial_tokens <= max_tokens:
            raise ValueError(
                f"initial_tokens must be an integer in [1, max_tokens={max_tokens}], got {initial_tokens!r}."
            )
        self.initial_tokens = initial_tokens
        self.max_tokens = max_tokens
        self.num_tokens = initial_tokens

    def bind(self, context: PolicyContext) -> None:
        super().bind(context)
        self.num_tokens = self.initial_tokens

    def should_draft(self, state: DraftState) -> bool:
        return len(state.tokens) < self.num_tokens

    def observe(self, outcome: StepOutcome) -> None:
        if outcome.tokens and outcome.num_accepted == len(outcome.tokens):
            self.num_tokens = min(self.num_tokens + 2, self.max_tokens)
        else:
            self.num_tokens = max(1, self.num_tokens - 1)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "initial_tokens": self.initial_tokens, "max_tokens": self.max_tokens}


def _roc_threshold(probs: np.ndarray, matches: np.ndarray, false_negative_cost: float) -> float:
    """The threshold minimizing `fpr + false_negative_cost * fnr` (transformers' adaptive rule, without sklearn)."""
    order = np.argsort(-probs, kind="stable")
    sorted_probs, sorted_matches = probs[order], matches[order]
    positives, negatives = sorted_matches.sum(), (1 - sorted_matches).sum()
    # Candidate thresholds: each distinct probability, plus one above all (accept nothing), as sklearn's roc_curve.
    distinct = np.r_[np.flatnonzero(np.diff(sorted_probs)), sorted_probs.size - 1]
    tps = np.cumsum(sorted_matches)[distinct]
    fps = np.cumsum(1 - sorted_matches)[distinct]
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    thresholds = np.r_[np.inf, sorted_probs[distinct]]
    costs = fpr + false_negative_cost * (1 - tpr)
    return float(thresholds[int(np.argmin(costs))])


class ConfidencePolicy(DraftPolicy):
    """transformers' dynamic rule: stop the draft after a token whose confidence is below a threshold.

    With `adaptive=True` the threshold is re-fitted after every step from the confidences and outcomes seen so
    far, minimizing `false_positive_rate + 3 * false_negative_rate` on the ROC curve, as transformers does.

    Args:
        threshold: initial confidence threshold in (0, 1) (transformers' default is 0.4).
        adaptive: whether to adapt the threshold online.
        max_tokens: upper bound on γ (transformers' default `num_assistant_tokens` is 20).
    """

    name = "confidence"

    def __init__(self, threshold: float = 0.4, adaptive: bool = True, max_tokens: int = 20) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"ConfidencePolicy needs 0 < threshold < 1, got {threshold!r}.")
        _check_max_tokens(max_tokens)
        self.initial_threshold = threshold
        self.threshold = threshold
        self.adaptive = adaptive
        self.max_tokens = max_tokens
        self._probs: list[float] = []
        self._matches: list[int] = []

    def bind(self, context: PolicyContext) -> None:
        super().bind(context)
        self.threshold = self.initial_threshold
        self._probs, self._matches = [], []

    def should_draft(self, state: DraftState) -> bool:
        if len(state.tokens) >= self.max_tokens:
            return False
        return not state.tokens or state.tokens[-1].confidence >= self.threshold

    def observe(self, outcome: StepOutcome) -> None:
        if not self.adaptive or not outcome.tokens:
            return
        verified = outcome.tokens[: outcome.num_accepted + 1]
        self._probs.extend(t.confidence for t in verified)
        self._matches.extend([1] * outcome.num_accepted + [0] * (len(verified) - outcome.num_accepted))
        if len(self._probs) > 5 and 0 in self._matches and 1 in self._matches:
            threshold = _roc_threshold(np.asarray(self._probs), np.asarray(self._matches, dtype=float), 3.0)
            self.threshold = min(threshold, 1.0)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threshold": self.initial_threshold,
            "adaptive": self.adaptive,
            "max_tokens": self.max_tokens,
        }


@dataclass
class _Beta:
    """A decayed Beta estimate of a rate."""

    successes: float = 1.0
    trials: float = 2.0
    decay: float = 0.98

    @property
    def mean(self) -> float:
        return self.successes / self.trials

    def update(self, success: bool) -> None:
        self.successes = self.successes * self.decay + float(success)
        self.trials = self.trials * self.decay + 1.0


@dataclass(repr=False, eq=False)
class AdaptivePolicy(DraftPolicy):
    """The default: draft while one more token is expected to raise tokens per second (marginal-value rule).

    After `j` drafted tokens with calibrated acceptance probabilities `q_1..q_j`, drafting token `j + 1` adds
    `q_1 * ... * q_j * q_next` expected tokens for `draft_time + verify_slope` seconds (each `q` calibrated for its
    draft position). The policy drafts it when
    that marginal rate beats the throughput the call is achieving, so a slow (e.g. INT8) target, which makes
    drafting relatively cheap, gets longer drafts, and a draft that is rarely accepted gets none: the step is then a
    plain target forward. `q` comes from an [`AcceptanceCalibrator`] learned online; `q_next` is the calibrated
    probability of the last drafted token (confidence is persistent), or the first-token acceptance rate.

    Args:
        max_tokens: upper bound on γ.
        warmup_steps: steps run with a confidence rule (threshold 0.4, at most 4 tokens) while the cost model
            gathers its first measurements.
        explore_every: while the policy drafts nothing, every `explore_every`-th step still drafts one token so the
            acceptance estimate stays current (0 disables).
        recent_decay: per-step decay of the recent-bias correction: calibrated probabilities are scaled by
            (recent accepts + 1) / (recent predicted accepts + 1), so a passage where the draft does better or
            worse than its confidence says (code vs prose) moves the estimate within a few steps.
        min_gain: required relative advantage of the marginal rate over the current throughput (e.g. 0.05 = 5%).
        calibrator: the confidence-to-acceptance calibrator (a fresh one by default).
    """

    max_tokens: int = 16
    warmup_steps: int = 3
    explore_every: int = 8
    min_gain: float = 0.0
    recent_decay: float = 0.7
    calibrator: AcceptanceCalibrator = field(default_factory=AcceptanceCalibrator)
    name: ClassVar[str] = "adaptive"
    can_skip_drafting: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_max_tokens(self.max_tokens)
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.explore_every < 0:
            raise ValueError(f"explore_every must be >= 0, got {self.explore_every}.")
        if self.min_gain < 0:
            raise ValueError(f"min_gain must be >= 0, got {self.min_gain}.")
        if not 0 <= self.recent_decay < 1:
            raise ValueError(f"recent_decay must be in [0, 1), got {self.recent_decay}.")
        self._recent_accepted = 0.0
        self._recent_predicted = 0.0
        self._first_token = _Beta()
        self._skipped_steps = 0
        self._decisions = 0
        self._steps_seen = 0

    def bind(self, context: PolicyContext) -> None:
        super().bind(context)
        self._skipped_steps = 0
        self._decisions = 0

    @property
    def skip_rate(self) -> float | None:
        """Share of this call's steps (after warm-up) where drafting was judged not to pay (exploratory one-token
        drafts included); None while fewer than 8 steps were judged."""
        return self._skipped_steps / self._decisions if self._decisions >= 8 else None

    def acceptance(self, token: TokenSignals, position: int | None = None) -> float:
        """Calibrated probability that a drafted token is accepted (given the draft before it was).

        Args:
            token: the token's signals.
            position: the draft position to calibrate for (the token's own by default).
        """
        probability = self.calibrator.probability(token.confidence, token.position if position is None else position)
        bias = (self._recent_accepted + 1.0) / (self._recent_predicted + 1.0)
        return min(probability * bias, 0.995)

    def should_draft(self, state: DraftState) -> bool:
        drafted = len(state.tokens)
        if drafted >= self.max_tokens:
            return False
        cost = self.context.cost
        if self._steps_seen < self.warmup_steps or not cost.ready or not state.throughput:
            return drafted < 4 and (drafted == 0 or state.tokens[-1].confidence >= 0.4)

        if drafted == 0:
            self._decisions += 1
            expected_gain = self._first_token.mean
        else:
            # The next token is not drafted yet: its acceptance is estimated from the last token's confidence
            # (confidence is persistent), calibrated for the next position.
            next_acceptance = self.acceptance(state.tokens[-1], position=drafted)
            expected_gain = math.prod(self.acceptance(t) for t in state.tokens) * next_acceptance
        marginal_rate = expected_gain / max(cost.marginal_time(drafted), 1e-9)
        worth_it = marginal_rate > state.throughput * (1.0 + self.min_gain)
        if drafted == 0 and not worth_it:
            self._skipped_steps += 1
            if self.explore_every and self._skipped_steps % self.explore_every == 0:
                return True
        return worth_it

    def observe(self, outcome: StepOutcome) -> None:
        self._steps_seen += 1
        if not outcome.tokens:
            return
        self._first_token.update(outcome.num_accepted > 0)
        self._recent_accepted *= self.recent_decay
        self._recent_predicted *= self.recent_decay
        for i, token in enumerate(outcome.tokens[: outcome.num_accepted + 1]):
            accepted = i < outcome.num_accepted
            self._recent_predicted += self.calibrator.probability(token.confidence, i)
            self._recent_accepted += float(accepted)
            self.calibrator.update(token.confidence, accepted, position=i)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_tokens": self.max_tokens,
            "warmup_steps": self.warmup_steps,
            "explore_every": self.explore_every,
            "min_gain": self.min_gain,
            "recent_decay": self.recent_decay,
        }


_POLICIES: dict[str, Callable[..., DraftPolicy]] = {
    "adaptive": AdaptivePolicy,
    "confidence": ConfidencePolicy,
    "fixed": FixedPolicy,
    "heuristic": HeuristicPolicy,
}


def available_policies() -> list[str]:
    """Names accepted by [`get_policy`]."""
    return sorted(_POLICIES)


def get_policy(policy: str | DraftPolicy, **kwargs: Any) -> DraftPolicy:
    """Builds a policy from its name, or returns a policy object unchanged.

    Args:
        policy: a policy name (`"adaptive"`, `"confidence"`, `"fixed"`, `"heuristic"`), `"fixed:K"` as a shorthand
            for `FixedPolicy(K)`, or a `DraftPolicy` instance.
        **kwargs: settings passed to the policy's constructor.

    Returns:
        The policy.

    Raises:
        ValueError: for an unknown name or invalid settings.
    """
    if isinstance(policy, DraftPolicy):
        if kwargs:
            raise ValueError("policy settings can only be given with a policy name, not with a policy object.")
        return policy
    if not isinstance(policy, str):
        raise TypeError(f"policy must be a name or a DraftPolicy, got {type(policy).__name__}.")
    name, _, arg = policy.partition(":")
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {policy!r}: choose one of {available_policies()} or pass a DraftPolicy.")
    if arg:
        if name != "fixed" or not arg.isdigit():
            raise ValueError(f"bad policy spec {policy!r}: only 'fixed:K' takes an argument, e.g. 'fixed:4'.")
        kwargs["num_tokens"] = int(arg)
    try:
        return _POLICIES[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"invalid settings for policy {name!r}: {error}") from None
