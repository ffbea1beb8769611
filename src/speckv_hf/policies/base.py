"""Draft policies: after each drafted token, decide whether to draft another.

A policy sees the signals of the tokens drafted so far in the step (and the call's cost model and compression
through its context) and answers one question: draft one more token? γ is thereby chosen per step, causally.
After the target verified the step, the policy observes how many tokens were accepted.

Every policy implements [`DraftPolicy`][]; the cost-aware ones (`adaptive`, `speckv`) live in
`speckv_hf.policies.marginal` and `speckv_hf.policies.speckv`, and
`speckv_hf.policies.registry` builds any of them from a name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..compression.detection import CompressionInfo
from ..core.context_source import ContextProposal
from ..core.cost import CostModel
from ..core.signals import TokenSignals

__all__ = [
    "NO_CONTEXT",
    "ConfidencePolicy",
    "ContextPlan",
    "DraftPolicy",
    "DraftState",
    "FixedPolicy",
    "HeuristicPolicy",
    "PolicyContext",
    "StepOutcome",
]


@dataclass
class PolicyContext:
    """What a policy knows about the call it serves.

    Attributes:
        cost: the call's cost model, measured online (or set by the user).
        compression: the target's compression.
        do_sample: whether the call samples (True) or decodes greedily (False).
        has_draft: whether the call has a draft model (a context policy runs without one).
    """

    cost: CostModel
    compression: CompressionInfo
    do_sample: bool = False
    has_draft: bool = True


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
        prefix_tokens: context candidates that come before the drafted tokens in this step (free of draft forwards,
            see [`ContextPlan`][]); `tokens` and `max_tokens` count draft tokens only.
        prefix_acceptance: estimated probability that the target accepts all of those context candidates: every
            drafted token's expected gain is scaled by it.
    """

    step: int
    tokens: list[TokenSignals]
    max_tokens: int
    throughput: float | None = None
    sequence_length: int = 0
    prefix_tokens: int = 0
    prefix_acceptance: float = 1.0


@dataclass
class StepOutcome:
    """What verification made of a step.

    Attributes:
        step: 0-based index of the step in the call.
        tokens: signals of every drafted token of the step, those after the first rejection included.
        num_accepted: how many drafted tokens the target accepted (a prefix of `tokens`); with context candidates
            in front, how many of all the step's candidates, context first.
        context_tokens: context candidates that came before the drafted tokens (0 without a context source).
        context: the proposal they were taken from (None without context candidates).
        emitted: the tokens the step appended to the row (its accepted candidates, then the target's own token;
            fewer at an EOS or the length limit): what the target emitted, which also judges a context proposal the
            step took no run of (empty where the loop does not pass them).
    """

    step: int
    tokens: list[TokenSignals]
    num_accepted: int
    context_tokens: int = 0
    context: ContextProposal | None = None
    emitted: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContextPlan:
    """How many of the context's proposed tokens a step takes, in front of its drafted tokens.

    Attributes:
        count: tokens taken (a prefix of the proposal).
        acceptance: estimated probability that the target accepts all of them.
    """

    count: int = 0
    acceptance: float = 1.0


NO_CONTEXT = ContextPlan()


class DraftPolicy(ABC):
    """Interface of a draft policy.

    A policy object is a template: each `generate()` call gets a deep copy, bound with [`DraftPolicy.bind`][], so
    concurrent calls never share state. Subclasses implement [`DraftPolicy.should_draft`][] and may override
    [`DraftPolicy.bind`][] and [`DraftPolicy.observe`][].
    """

    name: ClassVar[str] = "policy"
    #: Whether the policy itself decides when drafting does not pay (enables the generator's plain fallback).
    can_skip_drafting: ClassVar[bool] = False
    #: Whether the policy takes context candidates ([`DraftPolicy.plan_context`][]); the loop keeps a context
    #: source per row only then.
    uses_context: ClassVar[bool] = False
    #: Whether the policy ever drafts with the draft model (a context-only policy runs without one).
    uses_draft: ClassVar[bool] = True

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

    def plan_context(self, proposal: ContextProposal, state: DraftState) -> ContextPlan:
        """How many of the context's proposed tokens to put in front of this step's drafted tokens.

        Called once per step, before [`DraftPolicy.should_draft`][], for policies with `uses_context`. The default
        takes none.

        Args:
            proposal: what the sequence's earlier text proposes (possibly nothing).
            state: the step before any token (`state.max_tokens` is the step's cap on all candidates).
        """
        return NO_CONTEXT

    def plan_guesses(self, proposal: ContextProposal, limit: int) -> int:
        """How many of the context's proposed tokens (at most `limit`) a draft forward also runs over, as guesses
        of the draft's own next tokens (see [`ContextPolicy`][speckv_hf.policies.context.ContextPolicy]).

        Called before each draft forward, for policies with `uses_context` and a `max_guesses` above 0. The default
        feeds none.

        Args:
            proposal: what the sequence's earlier text, followed by the step's candidates so far, proposes.
            limit: the most guesses the step has room for.
        """
        return 0

    def observe_guesses(self, confirmed: bool) -> None:  # noqa: B027 - optional hook
        """Learns whether the draft confirmed the first guess of a forward that carried guesses for this row (after
        [`DraftPolicy.plan_guesses`][] fed some). The default does nothing."""

    def observe(self, outcome: StepOutcome) -> None:  # noqa: B027 - optional hook
        """Learns from a verified step. The default does nothing."""

    def speculation_pays(self) -> bool | None:
        """Whether the evidence the policy gathered (over this call and the warm-started earlier ones) says that
        speculation pays on this pair. The generator runs later calls as plain decoding only on False, and only for
        policies with `can_skip_drafting`. The default has no opinion (None)."""
        return None

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
