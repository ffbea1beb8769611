"""The rows of one call of the library's own loop: each row's prompt, its new tokens, its context indexes and what
the streamer has been sent.

The loop ([`run_loop`][speckv_hf.decoding.loop.run_loop]) drafts and verifies; [`CallRows`][] takes each step's
verified tokens per row (cut at EOS, the length budget and the call's other stopping criteria, as target-alone
decoding would), streams them, and writes the call's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..core.context_memory import ContextMemory
from ..core.context_source import ContextSource
from ..core.ngram import NgramIndex
from .loop_call import LoopSettings

__all__ = ["CallRows"]


class CallRows:
    """Per-row state of one call.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts, left-padded.
        mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`): 0 on padding.
        uses_context: whether the rows need context sources (a policy with context candidates).
        memory: earlier calls' sequences the sources also propose from (read only).

    Attributes:
        prompts: each row's prompt ids, padding included (what logits processors see before the new tokens).
        generated: each row's new tokens so far.
        contexts: each row's n-gram index (the draft signals' context prediction).
        sources: each row's context source (empty without `uses_context`).
    """

    def __init__(
        self,
        input_ids: torch.LongTensor,
        mask: torch.Tensor,
        *,
        uses_context: bool = False,
        memory: ContextMemory | None = None,
    ) -> None:
        self.size = int(input_ids.shape[0])
        self.prompts: list[list[int]] = [row.tolist() for row in input_ids]
        self.generated: list[list[int]] = [[] for _ in range(self.size)]
        unpadded = [ids[len(ids) - int(m.sum()) :] for ids, m in zip(self.prompts, mask, strict=True)]
        self.contexts = [NgramIndex(ids) for ids in unpadded]
        self.sources = [ContextSource(ids, memory=memory) for ids in unpadded] if uses_context else []
        self._streamed = 0

    def view(self, row: int) -> list[int]:
        """The row's prompt and new tokens (what a logits processor sees)."""
        return self.prompts[row] + self.generated[row]

    def append(
        self,
        rows: Sequence[int],
        candidates: Sequence[Sequence[int]],
        accepted: Sequence[int],
        next_tokens: Sequence[int],
        settings: LoopSettings,
        ended: Callable[[int, bool], None] | None = None,
    ) -> tuple[list[list[int]], list[bool]]:
        """Appends a step's tokens to each batch row: its accepted candidates and the target's next token, cut after
        an EOS, at the length budget and where another stopping criterion (stop strings, time) says so.

        Args:
            rows: the batch rows' indices in the call.
            candidates: each batch row's candidates.
            accepted: how many of them the target accepted.
            next_tokens: the target's token after them.
            settings: the call's EOS ids, length and stopping criteria.
            ended: called with each row and whether it ended (after its tokens are appended).

        Returns:
            `(appended, finished)`: the tokens each batch row appended and whether it ended.
        """
        appended, finished = [], []
        for b, r in enumerate(rows):
            new = [*candidates[b][: accepted[b]], next_tokens[b]]
            done = False
            for i, token in enumerate(new):
                if token in settings.eos_token_ids:
                    new, done = new[: i + 1], True
                    break
            room = settings.max_new_tokens - len(self.generated[r])
            if len(new) >= room:
                new, done = new[:room], True
            if settings.stop_checks and not done:
                new, done = self._stop_checks(r, new, settings.stop_checks)
            self.generated[r].extend(new)
            self.contexts[r].extend(new)
            if self.sources:
                self.sources[r].extend(new)
            if ended is not None:
                ended(r, done)
            appended.append(new)
            finished.append(done)
        return appended, finished

    def _stop_checks(self, row: int, new: list[int], checks: Sequence[Any]) -> tuple[list[int], bool]:
        """Other stopping criteria (stop strings, time), applied after each new token as target-alone would."""
        base = self.view(row)
        for i in range(len(new)):
            ids = torch.tensor([base + new[: i + 1]], dtype=torch.long)
            if any(bool(torch.as_tensor(check(ids, None)).any()) for check in checks):
                return new[: i + 1], True
        return new, False

    def stream(self, streamer: Any, rows: Sequence[int], finished: Sequence[bool], pad_token_id: int) -> None:
        """Streams like transformers' batched decoding: one `(batch_size,)` tensor per new position, pad for rows
        that ended, once every row has that position; a single row streams each step's tokens at once.

        Args:
            streamer: the call's streamer (None streams nothing).
            rows: the batch rows still in the batch before this step.
            finished: which of them ended in this step.
            pad_token_id: what an ended row streams.
        """
        if streamer is None:
            return
        if self.size == 1:
            tokens = self.generated[0][self._streamed :]
            if tokens:
                streamer.put(torch.tensor([tokens]))
            self._streamed = len(self.generated[0])
            return
        active = {r for r, done in zip(rows, finished, strict=True) if not done}
        ready = min((len(self.generated[r]) for r in active), default=max(len(g) for g in self.generated))
        for position in range(self._streamed, ready):
            column = [g[position] if position < len(g) else pad_token_id for g in self.generated]
            streamer.put(torch.tensor(column))
        self._streamed = max(self._streamed, ready)

    def output(self, input_ids: torch.LongTensor, pad_token_id: int) -> torch.LongTensor:
        """Each row's prompt, its new tokens and `pad_token_id` after its end, as target-alone `generate()` returns
        (`(batch_size, prompt_length + longest new tokens)`)."""
        prompt_length = input_ids.shape[1]
        longest = max(len(g) for g in self.generated)
        out = torch.full(
            (input_ids.shape[0], prompt_length + longest), pad_token_id, dtype=input_ids.dtype, device=input_ids.device
        )
        out[:, :prompt_length] = input_ids
        for b, tokens in enumerate(self.generated):
            if tokens:
                out[b, prompt_length : prompt_length + len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
        return out

    def sequences(self) -> list[list[int]]:
        """Each row's unpadded prompt and new tokens, from its context source (for the context memory)."""
        return [list(source.tokens) for source in self.sources]
