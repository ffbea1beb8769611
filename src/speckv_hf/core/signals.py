"""Draft signals: what the draft model tells us about each token it proposes.

Per drafted token we keep the probability of the chosen token (confidence), the maximum probability, the entropy
of the processed draft distribution, the top-1/top-2 margin, the position in the draft, and what the context
predicts for that position (`speckv_hf.core.ngram`). Per step we keep the aggregates the SpecKV paper trains on (mean
and max entropy, mean and min confidence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["StepSignals", "TokenSignals", "batch_token_signals", "token_signals"]


@dataclass(frozen=True)
class TokenSignals:
    """Signals of one drafted token.

    Attributes:
        confidence: probability the processed draft distribution gives to the drafted token.
        max_prob: largest probability of the processed draft distribution.
        entropy: entropy of the processed draft distribution, in nats.
        margin: difference between the two largest probabilities.
        position: 0-based position of the token inside the current draft.
        ngram_found: whether the two tokens before this one occurred earlier in the sequence
            (`speckv_hf.core.ngram.NgramIndex`), so the context predicts a token here.
        ngram_agrees: whether that predicted token is the drafted one.
    """

    confidence: float
    max_prob: float
    entropy: float
    margin: float
    position: int
    ngram_found: bool = False
    ngram_agrees: bool = False


def token_signals(
    probs: torch.Tensor, token: torch.Tensor, position: int, ngram_prediction: int | None = None
) -> TokenSignals:
    """Computes the signals of one drafted token.

    Args:
        probs (`torch.Tensor` of shape `(vocab_size,)`): the processed draft distribution (sums to 1).
        token (`torch.Tensor` of shape `()`): the drafted token id.
        position: 0-based position of the token in the current draft.
        ngram_prediction: the token the context predicts at this position (`NgramIndex.lookup`), or None.

    Returns:
        `TokenSignals` for the token.
    """
    return batch_token_signals(probs[None], token.view(1), position, [ngram_prediction])[0]


def batch_token_signals(
    probs: torch.Tensor, tokens: torch.Tensor, position: int, ngram_predictions: Sequence[int | None]
) -> list[TokenSignals]:
    """Computes the signals of one drafted token per row, with one transfer to the host for the whole batch.

    Args:
        probs (`torch.Tensor` of shape `(batch_size, vocab_size)`): the processed draft distributions.
        tokens (`torch.LongTensor` of shape `(batch_size,)`): the drafted token ids.
        position: 0-based position of the tokens in the current draft.
        ngram_predictions: per row, the token the context predicts at this position, or None.

    Returns:
        One `TokenSignals` per row.
    """
    # Few tensor operations: on a CPU each costs microseconds of dispatch, right after a forward more.
    top2 = torch.topk(probs, 2, dim=-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    chosen = probs.gather(1, tokens.view(-1, 1))[:, 0]
    rows = torch.stack((chosen, top2[:, 0], entropy, top2[:, 1]), dim=1).tolist()
    token_ids = tokens.tolist()
    return [
        TokenSignals(
            confidence=row[0],
            max_prob=row[1],
            entropy=max(row[2], 0.0),
            margin=row[1] - row[3],
            position=position,
            ngram_found=prediction is not None,
            ngram_agrees=prediction is not None and prediction == token_id,
        )
        for row, token_id, prediction in zip(rows, token_ids, ngram_predictions, strict=True)
    ]


@dataclass(frozen=True)
class StepSignals:
    """Aggregates of the signals of one draft step (the SpecKV paper's features).

    Attributes:
        num_drafted: number of tokens drafted in the step (γ of the step).
        mean_entropy: mean entropy over the drafted tokens (nats); 0 when nothing was drafted.
        max_entropy: largest entropy over the drafted tokens (nats).
        mean_confidence: mean probability of the drafted tokens.
        min_confidence: smallest probability of the drafted tokens; 1 when nothing was drafted.
    """

    num_drafted: int
    mean_entropy: float
    max_entropy: float
    mean_confidence: float
    min_confidence: float

    @classmethod
    def from_tokens(cls, tokens: Sequence[TokenSignals]) -> StepSignals:
        """Aggregates per-token signals.

        Args:
            tokens: the signals of the tokens drafted in the step, in order.

        Returns:
            The step's `StepSignals`.
        """
        if not tokens:
            return cls(num_drafted=0, mean_entropy=0.0, max_entropy=0.0, mean_confidence=1.0, min_confidence=1.0)
        entropies = [t.entropy for t in tokens]
        confidences = [t.confidence for t in tokens]
        return cls(
            num_drafted=len(tokens),
            mean_entropy=math.fsum(entropies) / len(tokens),
            max_entropy=max(entropies),
            mean_confidence=math.fsum(confidences) / len(tokens),
            min_confidence=min(confidences),
        )
