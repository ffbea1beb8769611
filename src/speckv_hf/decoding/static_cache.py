"""One column layout for a batch in static KV caches, written in place by position (the compiled loop's layout).

Both models' caches and one `(batch, columns)` table of tokens and mask share the columns: column `c` holds the
same token for the draft and the target. Each forward writes its feed from a column on, for every row at once;
rollback is moving that column back, nothing is cropped. Rows that accept different numbers of candidates leave
*holes*: row `b`'s rejected columns are masked (mask 0) and every row's next token goes to the column after the
longest accepted run. Position ids count each row's unmasked columns, so holes shift nothing, and the causal mask
is by column, so a query never sees a column past its own (stale columns past the frontier are overwritten before
they could be seen). A single row never has holes: its next token overwrites the first rejected column.

Holes cost columns. When the next step might not fit, [`StaticLayout.compact`][] moves each row's tokens to the
right end of a common prefix, in place, on both caches.

Sliding-window attention is applied by cache column, which holes would shift: the compiled loop refuses such
models (`speckv_hf.core.validation`).
"""

from __future__ import annotations

from typing import Any

import torch

from ._transformers import static_cache_tensors

__all__ = ["StaticLayout"]


class StaticLayout:
    """The rows of a call in static caches.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts, left-padded.
        mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`): 0 on padding.
        columns: the caches' column count.
        pad_token_id: written where a column holds no token.

    Attributes:
        tokens (`torch.LongTensor` of shape `(batch_size, columns)`): the token each column holds.
        table (`torch.LongTensor` of shape `(batch_size, columns)`): the attention mask (1 where a row's column holds
            one of its tokens).
        end: the column of every row's last token, which the target has not seen yet (columns before it are in the
            target's cache).
        draft_end: columns the draft's cache holds (`<= end`).
        active (`torch.BoolTensor` of shape `(batch_size,)`): rows still generating.
    """

    def __init__(self, input_ids: torch.Tensor, mask: torch.Tensor, columns: int, pad_token_id: int) -> None:
        size, length = input_ids.shape
        device = input_ids.device
        self.columns = columns
        self.pad_token_id = pad_token_id
        self.tokens = torch.full((size, columns), pad_token_id, dtype=input_ids.dtype, device=device)
        self.tokens[:, :length] = input_ids
        self.table = torch.zeros((size, columns), dtype=torch.long, device=device)
        self.table[:, :length] = mask.to(device, torch.long)
        self.end = length - 1
        self.draft_end = 0
        self.active = torch.ones(size, dtype=torch.bool, device=device)
        self.rows = torch.arange(size, device=device)  # the original index of each row still generating
        # Holes are possible only between rows; a padded prompt needs the mask too.
        self.masked = size > 1 or bool((self.table[:, :length] == 0).any())

    @property
    def size(self) -> int:
        """Rows still generating."""
        return int(self.rows.shape[0])

    @property
    def full(self) -> bool:
        """Whether every row is still generating."""
        return self.size == self.tokens.shape[0]

    @property
    def ids(self) -> torch.Tensor:
        """The columns up to every row's last token, `(batch_size, end + 1)` (holes included)."""
        return self.tokens[:, : self.end + 1]

    def write(self, column: int, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Writes `tokens` (`(batch_size, n)`) from `column` on; `valid` (`(batch_size, n)`, default all) marks which
        are a row's tokens (rows that finished write nothing valid)."""
        n = tokens.shape[1]
        self.tokens[:, column : column + n] = tokens
        valid = self.active[:, None].expand(-1, n) if valid is None else valid & self.active[:, None]
        self.table[:, column : column + n] = valid.long()

    def positions(self, column: int, n: int) -> torch.Tensor:
        """Position ids of columns `column .. column + n - 1`, `(batch_size, n)`: each row's count of unmasked
        columns before."""
        # Padded slots (mask 0, past every real query) get the last real position: a position past the real
        # tokens would index past a learned position table, or change a dynamic RoPE scaling that reads the largest.
        before = self.table[:, :column].sum(-1, keepdim=True)
        # A fresh (batch_size, n) tensor: a slice's strides would differ per column, and compiled graphs guard them.
        return (before + self.table[:, column : column + n].cumsum(-1) - 1).clamp_min(0)

    def mask(self) -> torch.Tensor | None:
        """The attention mask over every column (None where the causal mask suffices: one unpadded row)."""
        return self.table if self.masked else None

    def settle(self, accepted: list[int], finished: list[bool], next_tokens: list[int], drafted_to: int) -> None:
        """After a verification: masks each row's rejected candidates, moves `end` past the longest accepted run,
        writes the rows' next tokens there and drops the rows that finished.

        Args:
            accepted: per row still generating (in `rows` order), the candidates it accepted.
            finished: per row still generating, whether it ended at this step.
            next_tokens: per row still generating, the target's token after its accepted run.
            drafted_to: the column after the last one the draft's cache holds.
        """
        start = self.end
        kept = [a for a, done in zip(accepted, finished, strict=True) if not done]
        step = (max(kept) if kept else 0) + 1
        new_end = start + step
        rows = self.rows
        device = self.tokens.device
        runs = torch.zeros(self.tokens.shape[0], dtype=torch.long, device=device)
        runs[rows] = torch.tensor(accepted, dtype=torch.long, device=device)
        columns = torch.arange(start, self.columns, device=device)
        # Columns past each row's accepted run become holes; everything past the new end is stale.
        keep = columns[None, :] <= (start + runs)[:, None]
        self.table[:, start:] *= keep.long()
        done = torch.tensor(finished, dtype=torch.bool, device=device)
        self.active[rows[done]] = False
        self.rows = rows[~done]
        self.draft_end = min(drafted_to, new_end)
        self.end = new_end
        if new_end < self.columns:
            self.tokens[rows, new_end] = torch.tensor(next_tokens, dtype=self.tokens.dtype, device=device)

    def room(self, needed: int) -> bool:
        """Whether a step that writes up to `needed` columns from `end` on fits."""
        return self.end + needed <= self.columns

    def compact(self, caches: list[Any]) -> None:
        """Moves each row's columns to the right end of a common prefix (dropping holes), in place on the tables
        and on every layer of `caches` (static caches in this layout). The caches hold the prompt, every new token
        and a step's padded feed, so a compacted layout always has room for the next step."""
        end = self.end
        # Columns the draft lacks are kept after those it holds, so its cache stays a prefix of every row.
        held = self.table[:, :end].clone()
        unseen = held[:, self.draft_end :].sum(-1)  # per row, its tokens the draft has not fed
        counts = held.sum(-1)
        width = int(counts.max())
        # A stable sort puts each row's holes first and its tokens after, in order.
        order = torch.sort(held, dim=-1, stable=True).indices[:, end - width :]
        for tensor in static_cache_tensors(caches[0]) + (static_cache_tensors(caches[1]) if len(caches) > 1 else []):
            index = order[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3]).to(tensor.device)
            tensor[:, :, :width] = tensor[:, :, :end].gather(2, index)
        self.tokens[:, :width] = self.tokens[:, :end].gather(1, order)
        self.table[:, :width] = held.gather(1, order)
        last = self.tokens[:, end].clone()
        self.table[:, width:] = 0
        self.tokens[:, width] = last
        self.draft_end = width - int(unseen.max()) if self.draft_end else 0
        self.end = width
