"""Logits processing and acceptance for a batch of drafted rows: greedy matching and speculative sampling.

Logits processors see, for each row, exactly the sequence target-alone generation would give them: the prompt
as the user padded it plus the row's own tokens. Processors that read only the scores (temperature, top-k,
top-p, ...) run once over all rows and positions; the others run once per row and position on that row's view,
with any per-row state they hold (a tensor attribute with one entry per row of the batch, such as the repetition
penalty's per-row prompt padding) cut to that row.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    MinPLogitsWarper,
    PrefixConstrainedLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SynthIDTextWatermarkLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
    UnbatchedClassifierFreeGuidanceLogitsProcessor,
)

from ._transformers import bind_prefix_function_to_row

__all__ = ["Processing", "accept_greedy", "accept_sampled"]

# Processors whose output depends on the scores alone, never on `input_ids`: safe to run over a flattened batch.
_SCORES_ONLY = (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)


# Per-row state of processors, by attribute: one entry per row of the call's batch.
_PER_ROW_STATE: dict[type, tuple[str, ...]] = {RepetitionPenaltyLogitsProcessor: ("prompt_ignore_length",)}

# Processors that keep state across calls (they assume one call per generated position) or run a model of their own:
# the loop calls processors once per drafted and per verified position, so their output would be wrong.
_REFUSED = {
    UnbatchedClassifierFreeGuidanceLogitsProcessor: "guidance_scale (classifier-free guidance)",
    SynthIDTextWatermarkLogitsProcessor: "watermarking_config (SynthID watermarking)",
}


class Processing:
    """Applies a call's logits processors to `(rows, positions, vocab)` logits.

    Args:
        processors: the call's processors and warpers (None or empty for none).
        batch_size: rows of the call (the processors' per-row state has this many entries).

    Raises:
        ValueError: for a processor the loop cannot serve, naming the setting that added it.
    """

    def __init__(self, processors: LogitsProcessorList | None, batch_size: int = 1) -> None:
        for processor in processors or ():
            setting = _REFUSED.get(type(processor))
            if setting is not None:
                raise ValueError(
                    f"{type(processor).__name__} keeps state from one generated position to the next, which "
                    f"speculative decoding (several positions per step) breaks: drop {setting}, or generate "
                    "without candidate_generator=."
                )
        self.processors = processors if processors is not None and len(processors) else None
        self.scores_only = self.processors is None or all(type(p) in _SCORES_ONLY for p in self.processors)
        # A prefix function may allow no token after a prefix the draft would never take (raising in transformers):
        # the loop runs the draft over no context guesses then.
        self.constrains_prefix = any(isinstance(p, PrefixConstrainedLogitsProcessor) for p in self.processors or ())
        self.batch_size = batch_size
        self._per_row: dict[int, LogitsProcessorList] = {}

    def _for_row(self, row: int) -> LogitsProcessorList:
        """The processors as row `row` alone must see them: per-row state cut to the row, and a
        `prefix_allowed_tokens_fn` asked about the row's index in the batch (not 0)."""
        if self.batch_size == 1:
            return self.processors
        processors = self._per_row.get(row)
        if processors is None:
            processors = LogitsProcessorList()
            for processor in self.processors:
                state = {
                    name: value[row : row + 1]
                    for name in _PER_ROW_STATE.get(type(processor), ())
                    if isinstance(value := getattr(processor, name, None), torch.Tensor)
                    and value.dim() >= 1
                    and value.shape[0] == self.batch_size
                }
                if state or isinstance(processor, PrefixConstrainedLogitsProcessor):
                    processor = copy.copy(processor)
                    for name, value in state.items():
                        setattr(processor, name, value)
                    if isinstance(processor, PrefixConstrainedLogitsProcessor):
                        bind_prefix_function_to_row(processor, row)
                processors.append(processor)
            self._per_row[row] = processors
        return processors

    def __call__(
        self,
        logits: torch.Tensor,
        views: Sequence[list[int]],
        drafted: torch.Tensor | None,
        rows: Sequence[int] = (),
    ) -> torch.Tensor:
        """Processed float logits.

        Args:
            logits (`torch.FloatTensor` of shape `(rows, positions, vocab)`): raw logits; position `j` of row `b`
                scores the token after `views[b] + drafted[b, :j]`.
            views: per row, the row's sequence as target-alone generation holds it (read only by processors that
                look at `input_ids`).
            drafted (`torch.LongTensor` of shape `(rows, >= positions - 1)`, *optional*): the step's drafted tokens.
            rows: per row, its index in the call's batch (for processors that read the sequence).

        Returns:
            `torch.FloatTensor` of shape `(rows, positions, vocab)`.
        """
        logits = logits.float()
        if self.processors is None:
            return logits
        batch_rows = rows
        rows, positions, vocab = logits.shape
        if self.scores_only:
            flat = logits.reshape(rows * positions, vocab)
            dummy = torch.zeros((rows * positions, 1), dtype=torch.long, device=logits.device)
            return self.processors(dummy, flat).reshape(rows, positions, vocab)
        out = torch.empty_like(logits)
        extra = drafted.tolist() if drafted is not None else [[] for _ in range(rows)]
        for b in range(rows):
            processors = self._for_row(batch_rows[b])
            for j in range(positions):
                ids = torch.tensor([views[b] + extra[b][:j]], dtype=torch.long, device=logits.device)
                out[b, j] = processors(ids, logits[b, j][None])[0]
        return out


def accept_greedy(
    target_logits: torch.Tensor, drafted: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: each row keeps the drafted tokens equal to the target's argmax, up to the first
    mismatch, then takes the target's own token.

    Args:
        target_logits (`torch.FloatTensor` of shape `(rows, k + 1, vocab)`): processed target logits.
        drafted (`torch.LongTensor` of shape `(rows, k)`): drafted tokens.
        valid (`torch.BoolTensor` of shape `(rows, k)`): which drafted tokens are candidates (a prefix per row).

    Returns:
        `num_accepted` (`torch.LongTensor` of shape `(rows,)`) and the next token (`(rows,)`).
    """
    choice = target_logits.argmax(-1)
    k = drafted.shape[1]
    matches = (drafted == choice[:, :k]) & valid
    num_accepted = matches.long().cumprod(-1).sum(-1)
    return num_accepted, choice.gather(1, num_accepted[:, None])[:, 0]


def accept_sampled(
    target_logits: torch.Tensor, drafted: torch.Tensor, valid: torch.Tensor, draft_probs: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling (Leviathan et al.; Chen et al.), per row: accept drafted token `j` with probability
    `min(1, p_j / q_j)`; at the first rejection sample from `norm(max(p - q, 0))`, after a fully accepted draft from
    `p`. Each row's tokens are then distributed as the target's.

    Args:
        target_logits (`torch.FloatTensor` of shape `(rows, k + 1, vocab)`): processed target logits (`p`).
        drafted (`torch.LongTensor` of shape `(rows, k)`): drafted tokens, sampled from `draft_probs`.
        valid (`torch.BoolTensor` of shape `(rows, k)`): which drafted tokens are candidates (a prefix per row).
        draft_probs (`torch.FloatTensor` of shape `(rows, k, vocab)`, *optional*): the processed draft
            distributions `q` the tokens were sampled from (None when k = 0).

    Returns:
        `num_accepted` (`torch.LongTensor` of shape `(rows,)`) and the next token (`(rows,)`).
    """
    p = torch.softmax(target_logits, dim=-1)
    rows, k = drafted.shape
    arange = torch.arange(rows, device=p.device)
    if k == 0 or draft_probs is None:
        return torch.zeros(rows, dtype=torch.long, device=p.device), torch.multinomial(p[:, 0], 1)[:, 0]
    p_tokens = p[:, :k].gather(-1, drafted[..., None])[..., 0]
    q_tokens = draft_probs.gather(-1, drafted[..., None])[..., 0]
    ratio = p_tokens / q_tokens.clamp_min(1e-30)
    accepted = (torch.rand_like(ratio) <= ratio) & valid
    num_accepted = accepted.long().cumprod(-1).sum(-1)
    p_next = p[arange, num_accepted]
    rejected = num_accepted < valid.long().sum(-1)
    residual = (p_next - draft_probs[arange, num_accepted.clamp_max(k - 1)]).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    # A zero residual (p == q) cannot follow a rejection except by rounding: fall back to p.
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_next)
    distribution = torch.where(rejected[:, None], residual, p_next)
    return num_accepted, torch.multinomial(distribution, 1)[:, 0]
