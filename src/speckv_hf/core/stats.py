"""Per-call statistics: what a `generate()` call with `SpecKVGenerator` did."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ..compression.detection import CompressionInfo
from .context_source import ContextProposal
from .signals import StepSignals, TokenSignals

__all__ = ["GenerationStats", "StepRecord"]


@dataclass(frozen=True)
class StepRecord:
    """One speculative step (one target forward).

    The first columns are the SpecKV paper's step-level columns, so records of this library are a superset of its
    released `phase2_step_results.csv`.

    Attributes:
        step: 0-based index of the step in the call.
        gamma: tokens drafted in the step.
        accepted: drafted tokens the target accepted.
        tokens_produced: tokens the step appended (accepted + the target's own token; fewer at the length limit).
        signals: aggregates of the draft signals of the step.
        tokens: the signals of every drafted token, in order (confidence, max probability, entropy, margin,
            position), for records and training.
        draft_seconds: time drafting (draft forwards, signals, policy).
        verify_seconds: time from candidates returned to verification done (target forward and acceptance).
        overhead_seconds: time in the loop between the previous verification and this draft.
        drafted_ids: the candidate token ids, in order (`len == gamma`).
        context_tokens: how many of the step's candidates came from the context (the first ones; see
            `speckv_hf.core.context_source`), free of draft forwards; `gamma` counts them, `tokens` holds the signals
            of the drafted tokens only.
        context: the proposal the context candidates were taken from (its match length and history), or None when
            the step took none.
    """

    step: int
    gamma: int
    accepted: int
    tokens_produced: int
    signals: StepSignals
    tokens: tuple[TokenSignals, ...]
    draft_seconds: float
    verify_seconds: float
    overhead_seconds: float
    drafted_ids: tuple[int, ...] = ()
    context_tokens: int = 0
    context: ContextProposal | None = None

    @property
    def acceptance_rate(self) -> float:
        """Accepted over drafted tokens (0 when nothing was drafted)."""
        return self.accepted / self.gamma if self.gamma else 0.0

    @property
    def confidences(self) -> tuple[float, ...]:
        """Per drafted token, the draft's probability of it."""
        return tuple(t.confidence for t in self.tokens)

    @property
    def entropies(self) -> tuple[float, ...]:
        """Per drafted token, the entropy of the draft distribution (nats)."""
        return tuple(t.entropy for t in self.tokens)

    def to_dict(self) -> dict[str, Any]:
        """Flat dictionary with the paper's column names first."""
        signals = self.signals
        return {
            "step": self.step,
            "gamma": self.gamma,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "tokens_produced": self.tokens_produced,
            "mean_draft_entropy": signals.mean_entropy,
            "mean_draft_confidence": signals.mean_confidence,
            "max_draft_entropy": signals.max_entropy,
            "min_draft_confidence": signals.min_confidence,
            "confidences": list(self.confidences),
            "entropies": list(self.entropies),
            "draft_seconds": self.draft_seconds,
            "verify_seconds": self.verify_seconds,
            "overhead_seconds": self.overhead_seconds,
            "context_tokens": self.context_tokens,
            "context_match_length": self.context.match_length if self.context is not None else 0,
        }


@dataclass
class GenerationStats:
    """What one `generate()` call did.

    Attributes:
        policy: the policy's name and settings.
        compression: the target's compression as detected.
        prompt_tokens: length of the prompt.
        tokens_emitted: new tokens appended to the sequence.
        target_forwards: target forward passes (one per step, the prefill included).
        draft_forwards: draft forward passes (catch-up forwards included).
        drafted_tokens: candidate tokens proposed (by the draft and, with a context policy, by the context).
        accepted_tokens: proposed tokens the target accepted.
        context_tokens: the part of `drafted_tokens` the context proposed (no draft forward; see the `context`
            policies).
        context_accepted: the part of `accepted_tokens` that came from the context.
        guessed_tokens: drafted tokens that took no draft forward of their own: the context guessed them, and the
            draft forward that drafted the token before ran over the guesses and confirmed them (see
            `ContextPolicy(max_guesses=...)`). They are the draft's own tokens, counted in `drafted_tokens` and not
            in `context_tokens`.
        gamma_histogram: candidates per step -> number of steps.
        accepted_histogram: accepted tokens per step -> number of steps.
        draft_seconds: time in the draft loop (forwards, signals, policy).
        policy_seconds: the part of `draft_seconds` spent in the policy.
        verify_seconds: time in the target's verification (forward, logits processing, acceptance).
        overhead_seconds: time in the loop between steps (outside drafting and verification).
        cost_ratio: measured draft/target forward-time ratio at the end of the call (None if unmeasured): one more
            drafted token's time over the target's single-token verification time.
        draft_token_seconds: the cost model's time of one more drafted token at the end of the call (None if
            unmeasured).
        target_seconds: the cost model's single-token verification time at the end of the call (None if
            unmeasured).
        steps: per-step records (kept when the generator's `record_steps` is True).
        plain_decoding: True when the call ran without the draft, because earlier calls on the same pair found
            that speculation does not pay (see `SpecKVGenerator(plain_fallback=...)`).
        batch_size: rows the call generated; for a batch, the counts above are sums over rows except
            `target_forwards` and `draft_forwards` (forwards of the whole batch), and the histograms count each
            batch step by its longest draft.
        rows: for a batch (`batch_size > 1`), one `GenerationStats` per row, in the batch's order: the row's
            tokens, the steps it took part in, its drafted and accepted tokens and its own γ histogram.
        loop: which loop ran the call: `"speckv"` (the library's own) or `"transformers"` (transformers'
            assisted loop driving the generator as a `CandidateGenerator`).
        verification: how the call verified drafts: `"greedy"` (matching the target's argmax), `"speculative"`
            (speculative sampling), `"coupled"` (coupled sampling, `speckv_hf.decoding.coupling`), or `"none"`
            for a call that ran as plain decoding.
        compiled: the call ran the compiled loop (`SpecKVGenerator(compile=...)`): static caches, compiled forwards.
        compiled_graphs: graphs compiled in this process with the generator's `CompileOptions` by the end of the
            call (every model, feed length and mode; generators with equal options share them).
        compile_seconds: seconds spent in the first calls of new graphs during this call (compiling; 0 once warm;
            with several threads compiling at once, theirs may be counted too). A step that compiled teaches the
            cost model nothing, but its time is in the call's times.
    """

    policy: dict[str, Any] = field(default_factory=dict)
    compression: CompressionInfo | None = None
    prompt_tokens: int = 0
    tokens_emitted: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    context_tokens: int = 0
    context_accepted: int = 0
    guessed_tokens: int = 0
    gamma_histogram: Counter[int] = field(default_factory=Counter)
    accepted_histogram: Counter[int] = field(default_factory=Counter)
    draft_seconds: float = 0.0
    policy_seconds: float = 0.0
    verify_seconds: float = 0.0
    overhead_seconds: float = 0.0
    cost_ratio: float | None = None
    draft_token_seconds: float | None = None
    target_seconds: float | None = None
    steps: list[StepRecord] = field(default_factory=list)
    plain_decoding: bool = False
    batch_size: int = 1
    rows: list[GenerationStats] = field(default_factory=list)
    loop: str = "transformers"
    verification: str = "greedy"
    compiled: bool = False
    compiled_graphs: int = 0
    compile_seconds: float = 0.0

    def record_step(
        self,
        *,
        gamma: int,
        accepted: int,
        tokens: int,
        draft_seconds: float,
        verify_seconds: float,
        overhead_seconds: float,
        record: StepRecord | None = None,
        drafted: int | None = None,
        accepted_tokens: int | None = None,
        context: int = 0,
        context_accepted: int = 0,
    ) -> None:
        """Adds one verified step (one target forward) to the counts.

        Args:
            gamma: tokens drafted (and verified) in the step.
            accepted: drafted tokens the target accepted.
            tokens: tokens the step appended.
            draft_seconds: time drafting.
            verify_seconds: time verifying.
            overhead_seconds: time in the loop around them.
            record: the step's record, kept in `steps` when given.
            drafted: drafted tokens to count, when they differ from `gamma` (a batch step: the sum over rows).
            accepted_tokens: accepted tokens to count, when they differ from `accepted` (a batch step).
            context: how many of the candidates came from the context.
            context_accepted: how many of those the target accepted.
        """
        self.context_tokens += context
        self.context_accepted += context_accepted
        self.target_forwards += 1
        self.tokens_emitted += tokens
        self.drafted_tokens += gamma if drafted is None else drafted
        self.accepted_tokens += accepted if accepted_tokens is None else accepted_tokens
        self.gamma_histogram[gamma] += 1
        self.accepted_histogram[accepted] += 1
        self.draft_seconds += draft_seconds
        self.verify_seconds += verify_seconds
        self.overhead_seconds += overhead_seconds
        if record is not None:
            self.steps.append(record)

    @property
    def acceptance_rate(self) -> float:
        """Accepted over drafted tokens (0 when nothing was drafted)."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        """Emitted tokens per target forward (1.0 is plain decoding)."""
        return self.tokens_emitted / self.target_forwards if self.target_forwards else 0.0

    @property
    def mean_gamma(self) -> float:
        """Mean tokens drafted per step."""
        return self.drafted_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Mean accepted drafted tokens per step."""
        return self.accepted_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def total_seconds(self) -> float:
        """Time accounted for: draft + verify + loop overhead."""
        return self.draft_seconds + self.verify_seconds + self.overhead_seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (per-step records included as dictionaries)."""
        data = asdict(self)
        data["compression"] = asdict(self.compression) if self.compression else None
        data["gamma_histogram"] = dict(sorted(self.gamma_histogram.items()))
        data["accepted_histogram"] = dict(sorted(self.accepted_histogram.items()))
        data["steps"] = [step.to_dict() for step in self.steps]
        data["rows"] = [row.to_dict() for row in self.rows]
        data.update(
            acceptance_rate=self.acceptance_rate,
            tokens_per_target_forward=self.tokens_per_target_forward,
            mean_gamma=self.mean_gamma,
        )
        return data

    def __repr__(self) -> str:
        total = self.total_seconds or 1.0
        gammas = " ".join(f"{k}:{v}" for k, v in sorted(self.gamma_histogram.items()))
        ratio = f"{self.cost_ratio:.2f}" if self.cost_ratio is not None else "n/a"
        context = f"context={self.context_accepted}/{self.context_tokens} accepted, " if self.context_tokens else ""
        if self.guessed_tokens:
            context += f"guessed={self.guessed_tokens} (no draft forward), "
        if self.compiled:
            context += f"compiled ({self.compiled_graphs} graphs, {self.compile_seconds:.1f} s compiling), "
        if self.plain_decoding:
            return (
                f"GenerationStats(policy={self.policy.get('name', '?')}, compression={self.compression}, "
                f"tokens={self.tokens_emitted}, plain decoding: speculation did not pay on this pair, "
                f"{self.total_seconds * 1e3:.1f} ms)"
            )
        return (
            f"GenerationStats(policy={self.policy.get('name', '?')}, compression={self.compression}, "
            f"tokens={self.tokens_emitted}, target_forwards={self.target_forwards}, "
            f"verification={self.verification}, tokens/forward={self.tokens_per_target_forward:.2f}, "
            f"acceptance={self.acceptance_rate:.1%}, {context}"
            f"mean_gamma={self.mean_gamma:.2f}, gamma_hist={{{gammas}}}, c={ratio}, "
            f"time: draft {self.draft_seconds / total:.0%} (policy {self.policy_seconds / total:.0%}), "
            f"verify {self.verify_seconds / total:.0%}, loop {self.overhead_seconds / total:.0%} "
            f"of {self.total_seconds * 1e3:.1f} ms)"
        )
