"""The step accounting both speculative loops share: the bar a token must beat, the policy's questions, what a
verified step teaches the cost model, and the step's record.

The library's own loop (`speckv_hf.decoding.loop`) and the transformers-loop adapter
(`speckv_hf.decoding.assisted`) draft and verify differently, but a step is accounted for the same way in both:
change it here and both change. The own loop's batch steps (their candidates, [`StepCandidates`][], and the whole
accounting of one, [`account_step`][]) are here too, for its eager and compiled variants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..core.context_source import ContextProposal
from ..core.cost import Clock, CostModel
from ..core.signals import StepSignals, TokenSignals
from ..core.stats import GenerationStats, StepRecord
from ..policies.base import DraftPolicy, DraftState, StepOutcome

if TYPE_CHECKING:
    from .loop_call import LoopCall

__all__ = [
    "RecentRate",
    "StepCandidates",
    "StepTimes",
    "account_step",
    "ask_policy",
    "observe_step",
    "step_record",
    "throughput_bar",
]

#: Steps before a call's own recent rate stands in for the long-run rate.
_RECENT_MIN_STEPS = 3
_RECENT_DECAY = 0.95


@dataclass
class RecentRate:
    """Decayed sums of a call's tokens (per row) and seconds over its steps after the prefill."""

    tokens: float = 0.0
    seconds: float = 0.0
    steps: int = 0

    def add(self, tokens: float, seconds: float) -> None:
        self.tokens = _RECENT_DECAY * self.tokens + tokens
        self.seconds = _RECENT_DECAY * self.seconds + seconds
        self.steps += 1

    @property
    def rate(self) -> float | None:
        if self.steps < _RECENT_MIN_STEPS or self.seconds <= 0:
            return None
        return self.tokens / self.seconds


def throughput_bar(cost: CostModel, recent: RecentRate) -> float | None:
    """Tokens per second (per row) a drafted token must beat: the long-run rate over this and the warm-started
    calls once there are enough steps, else this call's recent rate, else the target-alone rate, else None.

    The long-run rate is the bar: the call's own recent rate would be a perverse one, high in an easy passage where
    drafting long pays most, and would cut drafts short there."""
    long_run = cost.throughput
    if long_run is not None:
        return long_run
    recent_rate = recent.rate
    if recent_rate is not None:
        return recent_rate
    if cost.ready:
        return 1.0 / max(cost.step_time(0), 1e-9)
    return None


def ask_policy(policy: DraftPolicy, state: DraftState, stats: GenerationStats, clock: Clock) -> bool:
    """The policy's answer to "draft another token?", its time added to `stats.policy_seconds`."""
    start = clock.now()
    decision = policy.should_draft(state)
    stats.policy_seconds += clock.now() - start
    return bool(decision)


@dataclass
class StepTimes:
    """Clock readings and drafting times of one step.

    Attributes:
        overhead: the loop's time between the previous verification and this step's start.
        draft: from the step's start to its candidates (context planning, draft forwards, signals, policy).
        verify: the target's verification (forward, logits processing, acceptance).
        first_draft: to the first drafted token, the catch-up forward included (0 when nothing was drafted).
        later_draft: the later draft forwards, `later_tokens` of them.
        later_tokens: draft forwards after the first: one per drafted token, except that a forward whose context
            guesses the draft confirmed drafted several (see `ContextPolicy(max_guesses=...)`).
    """

    overhead: float = 0.0
    draft: float = 0.0
    verify: float = 0.0
    first_draft: float = 0.0
    later_draft: float = 0.0
    later_tokens: int = 0

    @property
    def total(self) -> float:
        return self.draft + self.verify + self.overhead


def observe_step(
    cost: CostModel,
    recent: RecentRate,
    step: int,
    *,
    candidates: int,
    drafted: bool,
    times: StepTimes,
    tokens_per_row: float,
    forward_costs: bool = True,
) -> None:
    """Teaches the cost model one verified step.

    Step 0 carries the prefills and teaches nothing. The forward costs (verification of `candidates`, the first and
    later drafted tokens, the overhead from step 2 on) are observed only when `forward_costs`: a batch's forwards
    cost what the rows in them cost, so they are measured while every row is in (the last rows alone are cheaper,
    which keeps the estimates on the safe side). The step's tokens per row and seconds always count: they are the
    bar a row's next token must beat, whatever the rows left.

    Args:
        cost: the call's cost model.
        recent: the call's recent rate.
        step: 0-based index of the step.
        candidates: candidates verified (the verification's width beyond the one token every step verifies).
        drafted: whether a draft forward ran (context candidates alone cost no draft time).
        times: the step's times.
        tokens_per_row: tokens the step appended, per row.
        forward_costs: whether to observe the forward costs.
    """
    if step == 0:
        return
    if forward_costs:
        cost.observe_verify(candidates, times.verify)
        if drafted:
            # The first token of a step pays the catch-up forward; each further token only its own forward.
            cost.observe_first_draft(times.first_draft)
            if times.later_tokens:
                cost.observe_draft(times.later_draft / times.later_tokens)
        if step > 1:
            cost.observe_overhead(times.overhead)
    recent.add(tokens_per_row, times.total)
    cost.observe_step(tokens_per_row, times.total)


def step_record(
    step: int,
    *,
    candidates: int,
    accepted: int,
    produced: int,
    signals: list[TokenSignals],
    times: StepTimes,
    candidate_ids: Any,
    context_tokens: int = 0,
    context: ContextProposal | None = None,
) -> StepRecord:
    """The record of one row's step.

    Args:
        step: 0-based index of the step.
        candidates: the row's candidates (context and drafted).
        accepted: candidates the target accepted.
        produced: tokens the step appended to the row.
        signals: the signals of the row's drafted tokens.
        times: the step's times.
        candidate_ids: the candidates' ids.
        context_tokens: how many of the candidates came from the context (the first ones).
        context: the proposal they were taken from (None when the step took none).
    """
    return StepRecord(
        step=step,
        gamma=candidates,
        accepted=accepted,
        tokens_produced=produced,
        signals=StepSignals.from_tokens(signals),
        tokens=tuple(signals),
        draft_seconds=times.draft,
        verify_seconds=times.verify,
        overhead_seconds=times.overhead,
        drafted_ids=tuple(candidate_ids),
        context_tokens=context_tokens,
        context=context if context_tokens else None,
    )


@dataclass
class StepCandidates:
    """A step's candidates in the library's own loop (context tokens first, then drafted ones, per row), and how
    long drafting took.

    Attributes:
        tokens (`torch.LongTensor` of shape `(rows, k)`): the candidates (pad where `valid` is False).
        valid (`torch.BoolTensor` of shape `(rows, k)`): which columns are candidates (a prefix per row).
        signals: per row, the signals of its drafted tokens (context tokens have none).
        context: per row, how many of its candidates came from the context (its first ones).
        proposals: per row, the proposal its context candidates were taken from (None where it took none).
        probs: per column, the processed draft distributions `(rows, vocab)` where a draft forward produced that
            column, else None (speculative sampling only; context candidates are one-hot proposals).
        forwards: draft forwards of the step.
        times: the step's drafting times (first and later drafted tokens).
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    signals: list[list[TokenSignals]]
    context: list[int]
    proposals: list[ContextProposal | None]
    probs: list[torch.Tensor | None] = field(default_factory=list)
    forwards: int = 0
    times: StepTimes = field(default_factory=StepTimes)

    def proposal_distributions(self, vocab_size: int) -> torch.Tensor | None:
        """The distributions the candidates were proposed from, for speculative sampling: the draft's where it
        drafted, one-hot at a context candidate (a deterministic proposal: speculative sampling accepts it with
        probability `p(x)` and, on rejection, samples from `p` without `x`, renormalised).

        Returns:
            `torch.FloatTensor` of shape `(rows, k, vocab_size)`, or None for a step without candidates.
        """
        tokens = self.tokens
        rows, k = tokens.shape
        if k == 0:
            return None
        columns = [
            probs if probs is not None else tokens.new_zeros((rows, vocab_size), dtype=torch.float)
            for probs in self.probs
        ]
        q = torch.stack(columns, 1)
        if any(self.context):
            is_context = (
                torch.arange(k, device=tokens.device)[None, :]
                < torch.tensor(self.context, device=tokens.device)[:, None]
            )
            one_hot = torch.zeros_like(q).scatter_(-1, tokens[..., None], 1.0)
            q = torch.where(is_context[..., None], one_hot, q)
        return q


def account_step(
    call: LoopCall,
    recent: RecentRate,
    step: int,
    candidates: StepCandidates,
    num_accepted: torch.Tensor,
    appended: list[list[int]],
    *,
    rows: list[int],
    full_batch: bool,
    verified_width: int,
    timed: bool = True,
) -> None:
    """Accounts for one verified step of the library's own loop: the cost model learns it, the call's statistics
    (and each row's, for a batch) record it, and each row's policy observes its outcome.

    Args:
        call: the call.
        recent: the call's recent rate.
        step: 0-based index of the step.
        candidates: the step's candidates.
        num_accepted (`torch.LongTensor` of shape `(rows,)`): candidates each row accepted.
        appended: the tokens each row appended.
        rows: the batch rows' indices in the call.
        full_batch: whether every row of the call is still in the batch (forward costs are learned only then).
        verified_width: the verification width the step paid for.
        timed: whether the step's times measure its costs (not a step that compiled a graph).
    """
    times, signals, context = candidates.times, candidates.signals, candidates.context
    emitted = sum(len(a) for a in appended)
    if timed:
        observe_step(
            call.cost,
            recent,
            step,
            candidates=verified_width,
            # A forward that also fed context candidates is not a drafted token's cost: only verification counts.
            drafted=candidates.forwards > 0 and not any(context),
            times=times,
            tokens_per_row=emitted / len(rows),
            forward_costs=full_batch,
        )
    accepted = num_accepted.tolist()
    counts = candidates.valid.sum(-1).tolist()
    candidate_rows = candidates.tokens.tolist() if call.record_steps else []
    stats = call.stats
    context_accepted = [min(a, c) for a, c in zip(accepted, context, strict=True)]
    stats.record_step(
        gamma=int(candidates.valid.shape[1]),
        accepted=max(accepted),
        tokens=emitted,
        draft_seconds=times.draft,
        verify_seconds=times.verify,
        overhead_seconds=times.overhead,
        drafted=sum(counts),
        accepted_tokens=sum(accepted),
        context=sum(context),
        context_accepted=sum(context_accepted),
    )
    for b, r in enumerate(rows):
        outcome = StepOutcome(
            step=step,
            tokens=signals[b],
            num_accepted=accepted[b],
            context_tokens=context[b],
            context=candidates.proposals[b],
            emitted=tuple(appended[b]),
        )
        call.policies[r].observe(outcome)
        record = None
        if call.record_steps:
            record = step_record(
                step,
                candidates=counts[b],
                accepted=accepted[b],
                produced=len(appended[b]),
                signals=signals[b],
                times=times,
                candidate_ids=candidate_rows[b][: counts[b]],
                context_tokens=context[b],
                context=candidates.proposals[b],
            )
        row_stats = stats.rows[r] if stats.rows else stats
        if row_stats is stats:
            # One row: the batch's own record is the row's.
            if record is not None:
                stats.steps.append(record)
            continue
        row_stats.record_step(
            gamma=counts[b],
            accepted=accepted[b],
            tokens=len(appended[b]),
            draft_seconds=times.draft,
            verify_seconds=times.verify,
            overhead_seconds=times.overhead,
            record=record,
            context=context[b],
            context_accepted=context_accepted[b],
        )
