"""Context candidates in front of drafted tokens, priced like every other candidate.

A step's candidates may start with a run the sequence's own earlier text proposes
([`ContextSource`][speckv_hf.core.context_source.ContextSource]) and go on with tokens the draft model drafts after
it. A context token costs no draft forward, only its slot in the target's verification (the verification time's
slope per candidate); a drafted token after it is worth something only if the whole run before it is accepted.

[`ContextPolicy`][] wraps any draft policy (`"context+adaptive"`, `"context+fixed:4"`) or none (`"context"`: the
context alone, no draft model). It takes a context token while its expected gain (the probability that it and the
run before it are accepted, learned online by [`ContextAcceptance`][] from every proposal: a run the step took is
judged by verification, one it did not by the tokens the target emitted instead) per second of verification beats
the throughput the call achieves, and takes none where a step that only drafts is expected to make more tokens per
second (the draft's first-token acceptance, learned here too, against the run's); the wrapped policy then decides on
drafted tokens with every gain scaled by the run's acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..core.context_source import ContextProposal
from .base import NO_CONTEXT, ContextPlan, DraftPolicy, DraftState, PolicyContext, StepOutcome

__all__ = ["ContextAcceptance", "ContextPolicy"]

#: Prior acceptance of a context token by effective match length (the matched tail plus the run's tokens before
#: it, capped at 8): one matched token is a weak hint, four or more mostly copy.
_PRIOR = (0.0, 0.15, 0.3, 0.45, 0.55, 0.65, 0.7, 0.75, 0.8)
_PRIOR_WEIGHT = 4.0
_MAX_WEIGHT = 256.0  # evidence kept per bucket: older steps fade so the estimate follows the text
_MAX_MATCH = len(_PRIOR) - 1
#: The prior of each history of the matched n-gram (see `ContextAcceptance.history`), relative to `_PRIOR`: one
#: occurrence, every occurrence followed alike, followed differently.
_HISTORY_PRIOR_SCALE = (1.0, 1.0, 0.6)
_MAX_DRAFT_PRICED = 8  # drafted tokens considered when a run is priced against drafting alone


@dataclass
class _Rate:
    """A decayed rate, starting at 1/2."""

    successes: float = 1.0
    trials: float = 2.0

    @property
    def mean(self) -> float:
        return self.successes / self.trials

    def update(self, success: bool) -> None:
        self.successes = self.successes * 0.98 + float(success)
        self.trials = self.trials * 0.98 + 1.0


def _priors() -> list[list[float]]:
    return [[p * scale * _PRIOR_WEIGHT for p in _PRIOR] for scale in _HISTORY_PRIOR_SCALE]


@dataclass
class ContextAcceptance:
    """Online acceptance of context tokens, given the run before them was accepted, by the matched n-gram's history
    and the effective match length.

    A context token at run position `j` of a proposal matched on `n` tail tokens continues a match of `n + j`
    tokens once the run before it is accepted: that length is the token's bucket, within one of three histories of
    the matched n-gram ([`ContextAcceptance.history`][]): it occurred once before; every earlier occurrence went on
    the same way; they went on differently (a key followed by different values, say). The buckets' rates (kept
    across calls) are scaled by a recent-bias correction, (recent accepts + 1) / (recent predicted accepts + 1) with
    a per-step decay of `recent_decay`, so a passage where the text stops repeating moves the estimate within a few
    steps.
    """

    recent_decay: float = 0.7
    accepted: list[list[float]] = field(default_factory=_priors)
    seen: list[list[float]] = field(
        default_factory=lambda: [[_PRIOR_WEIGHT] * len(_PRIOR) for _ in _HISTORY_PRIOR_SCALE]
    )
    recent_accepted: float = 0.0
    recent_predicted: float = 0.0

    @staticmethod
    def history(proposal: ContextProposal) -> int:
        """0: the matched n-gram occurred once before; 1: each of its occurrences was followed by the proposed token;
        2: they were followed by different tokens."""
        if proposal.occurrences <= 1:
            return 0
        return 1 if proposal.agreeing >= proposal.occurrences else 2

    @staticmethod
    def bucket(match_length: int, position: int) -> int:
        return max(1, min(match_length + position, _MAX_MATCH))

    def rate(self, history: int, match_length: int, position: int) -> float:
        """The bucket's learned rate, without the recent-bias correction."""
        b = self.bucket(match_length, position)
        return self.accepted[history][b] / self.seen[history][b]

    def probability(self, match_length: int, position: int, history: int = 0) -> float:
        """Probability that the run's token at `position` is accepted, given the tokens before it were."""
        bias = (self.recent_accepted + 1.0) / (self.recent_predicted + 1.0)
        return min(self.rate(history, match_length, position) * bias, 0.995)

    def update(self, match_length: int, taken: int, num_accepted: int, history: int = 0) -> None:
        """Learns from a verified run, or from a proposal no run was taken of, judged by the tokens the target
        emitted in its place: `taken` context tokens judged, of which the first `num_accepted` were accepted (the
        tokens after the first rejection were not judged)."""
        self.recent_accepted *= self.recent_decay
        self.recent_predicted *= self.recent_decay
        accepted_row, seen_row = self.accepted[history], self.seen[history]
        for position in range(min(taken, num_accepted + 1)):
            b = self.bucket(match_length, position)
            accepted = position < num_accepted
            self.recent_predicted += accepted_row[b] / seen_row[b]
            self.recent_accepted += float(accepted)
            if seen_row[b] >= _MAX_WEIGHT:
                accepted_row[b] *= 0.5
                seen_row[b] *= 0.5
            accepted_row[b] += float(accepted)
            seen_row[b] += 1.0


@dataclass(repr=False, eq=False)
class ContextPolicy(DraftPolicy):
    """Context candidates first, then whatever `draft_policy` drafts.

    Args:
        draft_policy: the policy for drafted tokens after the context run, or None for the context alone (no draft
            model needed).
        max_context_tokens: the most context tokens one step takes.
        warmup_acceptance: before the call has measured a verification, take context tokens while the run's
            estimated acceptance stays at or above this.
        explore_every: where guesses are not fed (see `guess_floor`), feed them on every `explore_every`-th draft
            forward anyway, to notice when the draft starts confirming them (0 never does).
        max_guesses: where a step of a greedy call drafts, the most tokens the context proposes after the
            candidates so far that the draft forward also runs over, as guesses of the draft's own tokens: each
            guess the draft confirms gives a drafted token without a forward of its own (0 feeds none). The
            candidates stay the draft's own greedy tokens; the confirmed ones are taken whatever `draft_policy`
            says, so a step may verify more of them than the policy asked for. Sampled calls feed none.
        guess_floor: guesses are fed while the draft confirms the first guess of at least this share of the
            forwards that carried some (learned online, over about the last 50): guess columns make every draft
            forward dearer, so where the draft seldom confirms them, they are fed on every `explore_every`-th
            forward only.
        acceptance: the learned acceptance of context tokens (fresh by default).
    """

    draft_policy: DraftPolicy | None = None
    max_context_tokens: int = 16
    warmup_acceptance: float = 0.3
    explore_every: int = 8
    max_guesses: int = 8
    guess_floor: float = 0.4
    acceptance: ContextAcceptance = field(default_factory=ContextAcceptance)
    name: ClassVar[str] = "context"
    uses_context: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._draft_first = _Rate()
        self._untaken: ContextProposal | None = None  # this step's proposal while no run of it is taken
        self._guess_rate = _Rate()  # share of guess-carrying draft forwards whose first guess the draft confirmed
        self._guesses_skipped = 0
        if not isinstance(self.explore_every, int) or self.explore_every < 0:
            raise ValueError(f"explore_every must be an integer >= 0, got {self.explore_every!r}.")
        if not isinstance(self.max_guesses, int) or self.max_guesses < 0:
            raise ValueError(f"max_guesses must be an integer >= 0, got {self.max_guesses!r}.")
        if not isinstance(self.max_context_tokens, int) or self.max_context_tokens < 1:
            raise ValueError(f"max_context_tokens must be an integer >= 1, got {self.max_context_tokens!r}.")
        if not 0 <= self.guess_floor <= 1:
            raise ValueError(f"guess_floor must be in [0, 1], got {self.guess_floor!r}.")
        if not 0 <= self.warmup_acceptance <= 1:
            raise ValueError(f"warmup_acceptance must be in [0, 1], got {self.warmup_acceptance!r}.")
        if self.draft_policy is not None and not isinstance(self.draft_policy, DraftPolicy):
            raise TypeError(f"draft_policy must be a DraftPolicy or None, got {type(self.draft_policy).__name__}.")

    @property
    def uses_draft(self) -> bool:  # type: ignore[override]
        return self.draft_policy is not None

    @property
    def max_tokens(self) -> int:
        """The most candidates one step may hold: the context run plus the draft policy's cap."""
        inner = getattr(self.draft_policy, "max_tokens", 0)
        return self.max_context_tokens + (inner if isinstance(inner, int) else 0)

    def bind(self, context: PolicyContext) -> None:
        super().bind(context)
        self._untaken = None  # a proposal of the last call's last step is no step of this call
        if self.draft_policy is not None:
            self.draft_policy.bind(context)

    def plan_context(self, proposal: ContextProposal, state: DraftState) -> ContextPlan:
        limit = min(len(proposal), self.max_context_tokens, state.max_tokens)
        if limit < 1:
            return NO_CONTEXT
        self._untaken = proposal  # judged against what the target emits, unless a run of it is taken (`observe`)
        n, history = proposal.match_length, ContextAcceptance.history(proposal)

        def estimate(match_length: int, position: int) -> float:
            return self.acceptance.probability(match_length, position, history)

        cost = self.context.cost
        if not state.throughput or cost.num_verify_samples < 1:
            bar, slope = None, 0.0
        else:
            bar, slope = state.throughput, max(cost.verify_coefficients()[1], 1e-9)
        # The run: each token while its expected gain per second of verification beats the bar.
        count, product, expected = 0, 1.0, 0.0
        for position in range(limit):
            p = product * estimate(n, position)
            if (p < self.warmup_acceptance) if bar is None else (p / slope <= bar):
                break
            count, product, expected = count + 1, p, expected + p
        if not count:
            return NO_CONTEXT
        draft_rate = self._draft_first_acceptance()
        if draft_rate is not None and not self._run_beats_draft(count, product, expected, draft_rate, estimate(n, 0)):
            return NO_CONTEXT
        return ContextPlan(count, product)

    def plan_guesses(self, proposal: ContextProposal, limit: int) -> int:
        """How many of `proposal`'s tokens (at most `limit` and `max_guesses`) the draft forward runs over as
        guesses: all of them while the draft confirms first guesses often enough (`guess_floor`), else none but
        on every `explore_every`-th forward."""
        count = min(len(proposal), limit, self.max_guesses)
        if count < 1 or self._guess_rate.mean >= self.guess_floor:
            return max(count, 0)
        self._guesses_skipped += 1
        return count if self.explore_every and self._guesses_skipped % self.explore_every == 0 else 0

    def observe_guesses(self, confirmed: bool) -> None:
        self._guess_rate.update(confirmed)

    def _draft_first_acceptance(self) -> float | None:
        """The estimated acceptance of a step's first drafted token (None for the context alone)."""
        if self.draft_policy is None or not self.context.has_draft:
            return None
        return min(self._draft_first.mean, 0.995)

    def _run_beats_draft(self, count: int, product: float, expected: float, rate: float, first: float) -> bool:
        """Whether a step that starts with the context run (and drafts after it) is expected to make more tokens
        per second than a step that only drafts, each with its best number of drafted tokens.

        Drafted tokens are modelled as accepted one after another at the draft's first-token rate; times come
        from the call's cost model. Before it has the draft's costs, the run must beat the draft's first token."""
        cost = self.context.cost
        if not cost.ready:
            return first >= rate
        first_draft, draft, overhead = cost.first_draft_time, cost.draft_time, cost.overhead
        base, slope = cost.verify_coefficients()

        def best_rate(prefix_tokens: int, prefix_expected: float, prefix_acceptance: float) -> float:
            best, drafted_expected, accepted_all, drafting = 0.0, 0.0, 1.0, 0.0
            for gamma in range(_MAX_DRAFT_PRICED + 1):
                if gamma:
                    accepted_all *= rate
                    drafted_expected += accepted_all
                    drafting = first_draft if gamma == 1 else drafting + draft
                seconds = overhead + drafting + base + slope * (prefix_tokens + gamma)
                tokens = 1.0 + prefix_expected + prefix_acceptance * drafted_expected
                best = max(best, tokens / max(seconds, 1e-12))
            return best

        return best_rate(count, expected, product) > best_rate(0, 0.0, 1.0)

    def should_draft(self, state: DraftState) -> bool:
        return self.draft_policy is not None and self.draft_policy.should_draft(state)

    def observe(self, outcome: StepOutcome) -> None:
        taken, untaken = outcome.context_tokens, self._untaken
        self._untaken = None
        if taken and outcome.context is not None:
            proposal = outcome.context
            history = ContextAcceptance.history(proposal)
            self.acceptance.update(proposal.match_length, taken, outcome.num_accepted, history)
        elif untaken is not None and outcome.emitted:
            self._judge_untaken(untaken, outcome.emitted)
        if self.draft_policy is None:
            return
        if outcome.tokens and outcome.num_accepted >= taken:  # the draft's first token was judged
            self._draft_first.update(outcome.num_accepted > taken)
        if taken and outcome.num_accepted < taken:
            return  # the drafted tokens after a rejected context token were never judged: nothing to learn
        if taken:
            outcome = StepOutcome(step=outcome.step, tokens=outcome.tokens, num_accepted=outcome.num_accepted - taken)
        self.draft_policy.observe(outcome)

    def _judge_untaken(self, proposal: ContextProposal, emitted: tuple[int, ...]) -> None:
        """Learns from a proposal the step took no run of, judged against the tokens the target emitted in its
        place: its token at position `j` would have been accepted where it and the ones before it are the target's
        tokens there (exactly so for greedy and coupled verification; under speculative sampling the target emits
        a token with the probability that speculative sampling accepts it as a deterministic proposal). Positions
        past the step's tokens are not judged. So declined runs cost no step to keep their estimate current."""
        judged = min(len(proposal.tokens), len(emitted), self.max_context_tokens)  # as far as a run could reach
        matched = 0
        while matched < judged and proposal.tokens[matched] == emitted[matched]:
            matched += 1
        self.acceptance.update(proposal.match_length, judged, matched, ContextAcceptance.history(proposal))

    def speculation_pays(self) -> bool | None:
        return None  # context candidates cost next to nothing: never fall back to plain decoding on their account

    def config(self) -> dict[str, Any]:
        inner = self.draft_policy.config() if self.draft_policy is not None else {"name": None}
        name = "context" if inner["name"] is None else f"context+{inner['name']}"
        settings = {k: v for k, v in inner.items() if k != "name"}
        own = {"max_context_tokens": self.max_context_tokens, "max_guesses": self.max_guesses}
        if self.max_guesses:
            own["guess_floor"] = self.guess_floor
        return {"name": name, **settings, **own}
