"""Cost-aware policies: draft one more token only while it is expected to raise tokens per second.

[`MarginalValuePolicy`][] holds the rule both cost-aware policies share; they differ in where the acceptance
probability of a drafted token comes from: [`AdaptivePolicy`][] calibrates the draft's confidence online, the
`speckv` policy (`speckv_hf.policies.speckv`) asks a trained predictor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..core.calibration import AcceptanceCalibrator
from ..core.signals import TokenSignals
from .base import DraftPolicy, DraftState, PolicyContext, StepOutcome

__all__ = ["AdaptivePolicy", "MarginalValuePolicy"]


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


# Evidence behind "speculation does not pay on this pair": decayed counts of first-token decisions, kept across
# calls (the policy is warm-started), so that the verdict rests on about 1 / (1 - decay) recent steps, never on one
# noisy call.
_EVIDENCE_DECAY = 0.995
_MIN_EVIDENCE = 64.0
_SKIP_VERDICT = 0.9


@dataclass(repr=False, eq=False)
class MarginalValuePolicy(DraftPolicy):
    """The marginal-value rule, with the acceptance model left to subclasses.

    After `j` drafted tokens with acceptance probabilities `q_1..q_j` (each given the ones before it were
    accepted), drafting token `j + 1` adds `q_1 * ... * q_j * q_next` expected tokens for `draft_time +
    verify_slope` seconds. The policy drafts it when that marginal rate beats the throughput the call is achieving,
    so a slow (e.g. INT8) target, which makes drafting relatively cheap, gets longer drafts, and a draft that is
    rarely accepted gets none: the step is then a plain target forward. `q_next`, for a token not drafted yet, is
    estimated from the last drafted token's signals at the next position; before the first token it is the call's
    first-token acceptance rate. Each token's probability is computed once, when it is drafted.

    Subclasses implement `_token_acceptance` and may extend `observe`.

    Args:
        max_tokens: upper bound on γ.
        warmup_steps: steps run with a confidence rule (threshold 0.4, at most 4 tokens) while the cost model
            gathers its first measurements.
        explore_every: while the policy drafts nothing, every `explore_every`-th step still drafts one token so the
            acceptance estimate stays current (0 disables).
        min_gain: required relative advantage of the marginal rate over the current throughput (e.g. 0.05 = 5%).
    """

    max_tokens: int = 16
    warmup_steps: int = 3
    explore_every: int = 8
    min_gain: float = 0.0
    can_skip_drafting: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.explore_every < 0:
            raise ValueError(f"explore_every must be >= 0, got {self.explore_every}.")
        if self.min_gain < 0:
            raise ValueError(f"min_gain must be >= 0, got {self.min_gain}.")
        self._first_token = _Beta()
        self._steps_seen = 0
        self._skipped_steps = 0  # this call's skipped first-token decisions, for exploration
        self._judged = 0.0  # decayed counts across calls: the evidence of speculation_pays
        self._skipped = 0.0
        self._step_probs: list[float] = []  # acceptance of each token drafted in the current step
        self._step_product = 1.0

    def bind(self, context: PolicyContext) -> None:
        super().bind(context)
        self._skipped_steps = 0

    def speculation_pays(self) -> bool | None:
        """False once at least 64 (decayed) judged steps, over this and earlier calls, found in 90% or more that
        drafting does not pay; None before that much evidence; True otherwise."""
        if self._judged < _MIN_EVIDENCE:
            return None
        return self._skipped / self._judged < _SKIP_VERDICT

    def _token_acceptance(self, token: TokenSignals, position: int) -> float:
        """Probability that a drafted token with these signals, at this draft position, is accepted given the
        tokens before it were. `position` differs from `token.position` when estimating the next token."""
        raise NotImplementedError

    def _judge_first(self, worth_it: bool) -> bool:
        self._judged = self._judged * _EVIDENCE_DECAY + 1.0
        self._skipped *= _EVIDENCE_DECAY
        if worth_it:
            return True
        self._skipped += 1.0
        self._skipped_steps += 1
        return bool(self.explore_every) and self._skipped_steps % self.explore_every == 0

    def should_draft(self, state: DraftState) -> bool:
        drafted = len(state.tokens)
        if drafted == 0:
            self._step_probs.clear()
            self._step_product = 1.0
        if drafted >= self.max_tokens:
            return False
        cost = self.context.cost
        if self._steps_seen < self.warmup_steps or not cost.ready or not state.throughput:
            return drafted < 4 and (drafted == 0 or state.tokens[-1].confidence >= 0.4)
        threshold = state.throughput * (1.0 + self.min_gain)
        if drafted == 0:
            gain = state.prefix_acceptance * self._first_token.mean
            worth_it = gain / max(cost.marginal_time(0), 1e-9) > threshold
            # Skipping after context candidates is the context's doing, not evidence against speculation.
            return worth_it if state.prefix_tokens else self._judge_first(worth_it)
        last = state.tokens[-1]
        while len(self._step_probs) < drafted:  # the tokens drafted since the last decision (one, normally)
            probability = self._token_acceptance(state.tokens[len(self._step_probs)], len(self._step_probs))
            self._step_probs.append(probability)
            self._step_product *= probability
        expected_gain = state.prefix_acceptance * self._step_product * self._token_acceptance(last, drafted)
        return expected_gain / max(cost.marginal_time(drafted), 1e-9) > threshold

    def observe(self, outcome: StepOutcome) -> None:
        self._steps_seen += 1
        if outcome.tokens:
            self._first_token.update(outcome.num_accepted > 0)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_tokens": self.max_tokens,
            "warmup_steps": self.warmup_steps,
            "explore_every": self.explore_every,
            "min_gain": self.min_gain,
        }


@dataclass(repr=False, eq=False)
class AdaptivePolicy(MarginalValuePolicy):
    """The marginal-value rule with the draft's confidence calibrated online into acceptance probabilities.

    `q` comes from an [`AcceptanceCalibrator`][] learned online (confidence bins by draft position), scaled by a
    recent-bias correction.

    Args:
        max_tokens: upper bound on γ.
        warmup_steps: see [`MarginalValuePolicy`][].
        explore_every: see [`MarginalValuePolicy`][].
        min_gain: see [`MarginalValuePolicy`][].
        recent_decay: per-step decay of the recent-bias correction: calibrated probabilities are scaled by
            (recent accepts + 1) / (recent predicted accepts + 1), so a passage where the draft does better or
            worse than its confidence says (code vs prose) moves the estimate within a few steps.
        calibrator: the confidence-to-acceptance calibrator (a fresh one by default).
    """

    recent_decay: float = 0.7
    calibrator: AcceptanceCalibrator = field(default_factory=AcceptanceCalibrator)
    name: ClassVar[str] = "adaptive"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.recent_decay < 1:
            raise ValueError(f"recent_decay must be in [0, 1), got {self.recent_decay}.")
        self._recent_accepted = 0.0
        self._recent_predicted = 0.0

    def acceptance(self, token: TokenSignals, position: int | None = None) -> float:
        """Calibrated probability that a drafted token is accepted (given the draft before it was).

        Args:
            token: the token's signals.
            position: the draft position to calibrate for (the token's own by default).
        """
        return self._token_acceptance(token, token.position if position is None else position)

    def _token_acceptance(self, token: TokenSignals, position: int) -> float:
        probability = self.calibrator.probability(token.confidence, position)
        bias = (self._recent_accepted + 1.0) / (self._recent_predicted + 1.0)
        return min(probability * bias, 0.995)

    def observe(self, outcome: StepOutcome) -> None:
        super().observe(outcome)
        if not outcome.tokens:
            return
        self._recent_accepted *= self.recent_decay
        self._recent_predicted *= self.recent_decay
        for i, token in enumerate(outcome.tokens[: outcome.num_accepted + 1]):
            accepted = i < outcome.num_accepted
            self._recent_predicted += self.calibrator.probability(token.confidence, i)
            self._recent_accepted += float(accepted)
            self.calibrator.update(token.confidence, accepted, position=i)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "recent_decay": self.recent_decay}
