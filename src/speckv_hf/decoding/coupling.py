"""Coupled sampling: speculative sampling whose output does not depend on the draft, the policy or γ.

Speculative sampling (`speckv_hf.decoding.verification.accept_sampled`) accepts a drafted token with probability
`min(1, p/q)`: the draft cannot know `p`, so in sampled calls the draft's signals say little about acceptance, and
the text a call produces depends on every γ the policy chose. Coupled sampling draws the randomness first instead:

- every row's position `n` gets its own Gumbel noise vector `g_n` over the vocabulary, drawn once from the row's
  generator (seeded from torch's global RNG when the call starts, so `torch.manual_seed` makes calls repeatable);
- the target's token at `n` is `argmax(logits_p + g_n)`, the Gumbel-max trick: an exact sample from
  `softmax(logits_p)`, because `g_n` is independent of the tokens before `n`;
- the draft proposes `argmax(logits_q + g_n)`, and verification is greedy matching on the perturbed logits.

Every token the loop emits is the target's perturbed argmax at its position, so each row's output is distributed
as the target's, and it is a function of the noise and the target alone: the same for every policy, γ and draft
(the drafter-invariant scheme of Daliri et al., 2024, "Coupling without communication and drafter-invariant
speculative decoding"). A drafted token is accepted with probability `P(argmax(l_q + g) = argmax(l_p + g))`, which
lies between `(1 - TV) / (1 + TV)` and speculative sampling's `1 - TV` (`TV`: the total variation distance of `p`
and `q`). In exchange acceptance is a match, as in greedy decoding, and the draft's signals on the perturbed logits
predict it about as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["SAMPLING_SCHEMES", "SAMPLING_SETTINGS", "GumbelNoise"]

#: How the library's own loop samples: `"speculative"` (speculative sampling) or `"coupled"` (the default, through
#: `SpecKVGenerator(sampling="auto")`).
SAMPLING_SCHEMES = ("speculative", "coupled")
#: What `SpecKVGenerator(sampling=...)` takes: a scheme, or `"auto"` (coupled in the own loop, where a seeded call
#: then repeats; speculative in transformers' loop).
SAMPLING_SETTINGS = ("auto", *SAMPLING_SCHEMES)


class GumbelNoise:
    """Per-row Gumbel noise, one vector per generated position, drawn in chunks as positions are reached.

    Args:
        rows: rows of the call.
        vocab_size: length of each noise vector (the logits' last dimension).
        device: where the noise lives (the device of the logits it is added to).
        chunk: positions drawn at once per row.
    """

    def __init__(self, rows: int, vocab_size: int, device: torch.device | str, chunk: int = 16) -> None:
        device = torch.device(device)
        # Seeds from the global CPU generator: `torch.manual_seed` makes the call repeatable.
        seeds = torch.randint(0, 2**62, (rows,), dtype=torch.long).tolist()
        self._generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
        self._chunks: list[list[torch.Tensor | None]] = [[] for _ in range(rows)]
        self.vocab_size, self.device, self.chunk = vocab_size, device, chunk

    def _chunk(self, row: int, index: int) -> torch.Tensor:
        chunks = self._chunks[row]
        while len(chunks) <= index:
            # Chunks are drawn in order, so position n's noise does not depend on which positions were asked for.
            exponential = torch.empty((self.chunk, self.vocab_size), dtype=torch.float32, device=self.device)
            exponential.exponential_(generator=self._generators[row])
            chunks.append(exponential.clamp_min_(1e-30).log_().neg_())
        noise = chunks[index]
        if noise is None:
            raise RuntimeError(f"the noise of row {row}'s chunk {index} was released: positions only move on.")
        return noise

    def at(self, rows: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """The noise of one position per row.

        Args:
            rows: the rows (indices in the call's batch).
            positions: per row, the 0-based index of the generated token the noise is for.

        Returns:
            `torch.FloatTensor` of shape `(len(rows), vocab_size)`.
        """
        chunk = self.chunk
        return torch.stack([self._chunk(r, p // chunk)[p % chunk] for r, p in zip(rows, positions, strict=True)])

    def span(self, rows: Sequence[int], starts: Sequence[int], length: int) -> torch.Tensor:
        """The noise of `length` consecutive positions per row.

        Args:
            rows: the rows (indices in the call's batch).
            starts: per row, the first position.
            length: positions per row.

        Returns:
            `torch.FloatTensor` of shape `(len(rows), length, vocab_size)`.
        """
        per_row = []
        for row, start in zip(rows, starts, strict=True):
            pieces, position, end = [], start, start + length
            while position < end:
                index, offset = divmod(position, self.chunk)
                take = min(self.chunk - offset, end - position)
                pieces.append(self._chunk(row, index)[offset : offset + take])
                position += take
            per_row.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces))
        return torch.stack(per_row)

    def release(self, row: int, before: int | None = None) -> None:
        """Frees the row's chunks that hold only positions before `before` (tokens already emitted); all of them
        when `before` is None (the row finished)."""
        chunks = self._chunks[row]
        end = len(chunks) if before is None else min(before // self.chunk, len(chunks))
        for index in range(end):
            chunks[index] = None
