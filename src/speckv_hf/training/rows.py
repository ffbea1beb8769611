"""One profiled `generate()` call's stats as token and step rows, with the columns of
`speckv_hf.training.records` (`TOKEN_SCHEMA`, `STEP_SCHEMA`): what `speckv profile` writes per unit."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.stats import GenerationStats

__all__ = ["CallContext", "call_rows", "call_timings"]

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
