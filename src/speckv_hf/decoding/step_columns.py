"""A step's candidate columns in the library's own loop, as the loop builds them left to right.

Column `j` holds, per row of the batch, the row's `j`-th candidate: a token of its context run while the run lasts,
then a drafted token, or pad once the row is closed (EOS, its budget, or a column the batch did not draft).
[`StepColumns`][] keeps the columns, which rows are still open and still want drafted tokens (their policies'
answers), the drafted tokens' signals, and each row's last two tokens (the n-gram index's key). The loop
(`speckv_hf.decoding.loop`) runs the draft forwards and hands each forward's tokens to [`StepColumns.take`][].
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

import torch

from ..core.ngram import NgramIndex
from ..core.signals import TokenSignals, batch_token_signals
from ..policies.base import DraftState
from .context_candidates import Run, context_columns

__all__ = ["StepColumns"]


class StepColumns:
    """The columns of one step, and each row's state while they are built.

    Args:
        runs: each batch row's context run (empty for none).
        caps: each batch row's most candidates in the step (0 for a row with no room).
        prefix: each batch row's estimated acceptance of its whole context run (1.0 for none).
        ask: the row's policy, asked whether to draft another token: `ask(b, state)`.
        state: the step's state before any candidate (`step`, `throughput`, `sequence_length`); each row's question
            gets its own tokens, room and context prefix.
        contexts: each batch row's n-gram index (for the drafted tokens' signals).
        eos_token_ids: the call's EOS ids (a row closes after one).
        pad_token_id: what a closed row's column holds.
        uses_draft: whether rows may draft at all (False for context candidates alone).
        keep_probs: keep each column's draft distributions (speculative sampling).

    Attributes:
        columns: per column, one token per batch row.
        valid: per column, which rows' tokens are candidates.
        context: each row's context run length.
        signals: each row's drafted tokens' signals.
        open: which rows' next column is still a candidate.
        drafting: which rows still want drafted tokens.
        probs: per column, the draft distributions `(rows, vocab)` (None for context columns); only with
            `keep_probs`.
    """

    def __init__(
        self,
        runs: Sequence[Run],
        caps: Sequence[int],
        prefix: Sequence[float],
        *,
        ask: Callable[[int, DraftState], bool],
        state: DraftState,
        contexts: Sequence[NgramIndex],
        eos_token_ids: Collection[int],
        pad_token_id: int,
        uses_draft: bool = True,
        keep_probs: bool = False,
    ) -> None:
        n = len(runs)
        self.runs, self.caps, self.prefix = list(runs), list(caps), list(prefix)
        self.context = [len(run) for run in runs]
        self._ask, self._state = ask, state
        self._contexts = contexts
        self._eos, self._pad = eos_token_ids, pad_token_id
        self.columns: list[list[int]] = []
        self.valid: list[list[bool]] = []
        self.signals: list[list[TokenSignals]] = [[] for _ in range(n)]
        self.open = [cap > 0 for cap in caps]
        self.lasts = [index.tail for index in contexts]
        self.probs: list[torch.Tensor | None] | None = [] if keep_probs else None
        self.drafting = [uses_draft and caps[b] > self.context[b] and self.ask(b) for b in range(n)]

    def __len__(self) -> int:
        return len(self.columns)

    def ask(self, b: int) -> bool:
        """Row `b`'s policy: draft another token after the row's candidates so far?"""
        state = replace(
            self._state,
            tokens=self.signals[b],
            max_tokens=self.caps[b] - self.context[b],
            prefix_tokens=self.context[b],
            prefix_acceptance=self.prefix[b],
        )
        return self._ask(b, state)

    def in_context(self) -> list[bool]:
        """Which rows' next column is a token of their context run."""
        j = len(self.columns)
        return [is_open and j < run for is_open, run in zip(self.open, self.context, strict=True)]

    def take(
        self,
        in_context: Sequence[bool],
        draft_rows: Sequence[bool],
        probs: torch.Tensor,
        token: torch.Tensor,
        token_ids: Sequence[int],
    ) -> None:
        """Appends the next column: each row's context token or its drafted token (with its signals), and asks
        each drafting row's policy whether it wants another.

        Args:
            in_context: rows whose token is a context token here.
            draft_rows: rows whose token is drafted here.
            probs (`torch.Tensor` of shape `(rows, vocab)`): the draft's distributions at this column.
            token (`torch.LongTensor` of shape `(rows,)`): the draft's tokens.
            token_ids: the same, on the host.
        """
        j, n = len(self.columns), len(self.open)
        predictions = [index.lookup(*last) for index, last in zip(self._contexts, self.lasts, strict=True)]
        row_signals = batch_token_signals(probs, token, j, predictions)
        column = [self._pad] * n
        for b in range(n):
            if in_context[b]:
                column[b] = self.runs[b][j]
            elif draft_rows[b] and self.open[b]:
                column[b] = token_ids[b]
                position = j - self.context[b]
                signal = row_signals[b]
                self.signals[b].append(signal if position == j else replace(signal, position=position))
        self.columns.append(column)
        self.valid.append(list(self.open))
        if self.probs is not None:
            self.probs.append(probs)
        for b in range(n):
            self.lasts[b] = (self.lasts[b][1], column[b])
            if not self.open[b]:
                continue
            if column[b] in self._eos or j + 1 >= self.caps[b]:
                self.open[b] = self.drafting[b] = False
            elif draft_rows[b] and self.drafting[b]:
                self.drafting[b] = self.ask(b)

    def take_context_runs(self) -> None:
        """Appends the columns up to the end of the shortest open context run, where every open row is inside its
        run (no draft forward), closing the rows whose run ends with EOS or fills their room."""
        added = context_columns(self.columns, self.valid, self.runs, self.open, self.lasts, self._pad)
        if self.probs is not None:
            self.probs.extend([None] * added)
        j = len(self.columns)
        for b, run in enumerate(self.runs):
            if self.open[b] and j == self.context[b] and (run[-1] in self._eos or self.context[b] >= self.caps[b]):
                self.open[b] = self.drafting[b] = False

    def tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(tokens, valid)`, `(rows, k)` each, on `like`'s device (`like`'s dtype for the tokens)."""
        n = len(self.open)
        if not self.columns:
            return like.new_zeros((n, 0)), like.new_zeros((n, 0), dtype=torch.bool)
        tokens = torch.tensor(self.columns, dtype=like.dtype, device=like.device).T.contiguous()
        return tokens, torch.tensor(self.valid, device=like.device).T.contiguous()
