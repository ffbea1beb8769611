"""Cache bookkeeping for the batched loop: one layout for the sequences, the masks and both KV caches.

A batch keeps every row right-aligned: row `b` occupies the last columns of the `(batch, length)` tensors, with
padding (attention mask 0) on the left. Positions come from the mask (`cumsum - 1`), so padding never shifts them.
When rows accept different numbers of drafted tokens, the rows that accepted fewer are shifted right by the
difference, on the sequences, the masks and the caches alike ([`shift_rows`][]); the rejected slots fall off the
end and the shorter rows gain left padding. So there are never holes inside a row: attention, positions and
sliding windows (which transformers applies by cache index) see exactly what target-alone generation sees.

Rows that finish are dropped from the batch ([`select_rows`][]) and columns that every remaining row pads are cut
([`drop_leading`][]), so finished rows stop costing work.

The KV caches are transformers' `DynamicCache` with full-attention layers, built here: cache layers are read
through `cache.layers[i].keys` / `.values` (transformers >= 4.56); [`check_cache`][] refuses anything else with a
clear error after the first forward (the hook refuses models transformers itself lists as needing another cache
before any work).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ._transformers import cache_kwarg, edit_cache_layers

__all__ = [
    "RowLayout",
    "cache_kwarg",
    "cache_length",
    "check_cache",
    "crop",
    "drop_last",
    "drop_leading",
    "new_cache",
    "select_rows",
    "shift_rows",
]


def new_cache() -> DynamicCache:
    """An empty cache of full-attention layers (sliding windows are applied by the model's mask, by cache index)."""
    return DynamicCache()


def check_cache(cache: DynamicCache) -> None:
    """Checks that a cache filled by one forward has the layout this module edits.

    Raises:
        TypeError: naming the cache type, for a cache whose layers do not keep `keys`/`values` tensors.
    """
    layers = getattr(cache, "layers", None)
    if not layers or not all(isinstance(getattr(layer, "keys", None), torch.Tensor) for layer in layers):
        raise TypeError(
            f"the batched speculative loop needs a DynamicCache of key/value layers, got {type(cache).__name__}: "
            "models with recurrent or other cache layers are not supported: generate without candidate_generator=."
        )


def cache_length(cache: DynamicCache) -> int:
    """Columns the cache holds (0 before the first forward)."""
    layers = getattr(cache, "layers", None)
    if not layers or getattr(layers[0], "keys", None) is None or layers[0].keys.dim() < 3:
        return 0
    return int(layers[0].keys.shape[-2])


def crop(cache: DynamicCache, length: int) -> None:
    """Keeps the first `length` columns of every layer."""
    if cache_length(cache) > length:
        edit_cache_layers(cache, lambda t: t[:, :, :length])


def drop_last(cache: DynamicCache, count: int) -> None:
    """Removes the last `count` columns of every layer, through transformers' own `crop` (a negative length means
    "that many fewer" on transformers 4.x and 5.x, for every layer type it knows). The rollback of a cache that this
    module did not lay out: the draft's in transformers' assisted loop, a measurement's."""
    if count > 0:
        cache.crop(-count)


def select_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keeps the rows `rows` (`torch.LongTensor` of shape `(kept,)`), in that order."""
    if cache_length(cache):
        edit_cache_layers(cache, lambda t: t.index_select(0, rows.to(t.device)))


def drop_leading(cache: DynamicCache, columns: int) -> None:
    """Cuts the first `columns` columns of every layer (padding every row shares)."""
    if columns > 0 and cache_length(cache):
        edit_cache_layers(cache, lambda t: t[:, :, columns:])


def shift_index(shifts: torch.Tensor, length: int) -> torch.Tensor:
    """Source columns of a right shift: `index[b, c] = max(c - shifts[b], 0)`.

    Args:
        shifts (`torch.LongTensor` of shape `(batch,)`): columns each row moves right (>= 0).
        length: columns of the result.

    Returns:
        `torch.LongTensor` of shape `(batch, length)`.
    """
    columns = torch.arange(length, device=shifts.device)
    return (columns[None, :] - shifts[:, None]).clamp_min(0)


def shift_rows(cache: DynamicCache, shifts: torch.Tensor, length: int) -> None:
    """Moves each row of every layer right by `shifts[b]` columns and keeps `length` columns.

    The columns a row gains on the left keep what they held: they are padding (mask 0), never read.

    Args:
        cache: the cache to edit in place.
        shifts (`torch.LongTensor` of shape `(batch,)`): columns each row moves right (>= 0).
        length: columns to keep (at most the cache's length plus the smallest shift).
    """
    current = cache_length(cache)
    if not current:
        return
    if not bool(shifts.any()):
        crop(cache, length)
        return
    # A row moved by `length` or more keeps nothing but padding.
    moves = [(row, shift) for row, shift in enumerate(shifts.tolist()) if 0 < shift < length]

    def edit(tensor: torch.Tensor) -> torch.Tensor:
        # One slice copy per moved row: a gather would need an index as large as the cache itself.
        out = tensor[:, :, :length]
        for row, shift in moves:
            out[row, :, shift:] = tensor[row, :, : length - shift].clone()
        return out

    edit_cache_layers(cache, edit)


class RowLayout:
    """The rows still generating: sequences and masks right-aligned, both caches in the same column layout.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`): the prompts, left-padded.
        mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`): 0 on padding.
    """

    def __init__(self, input_ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.ids = input_ids
        self.mask = mask.to(input_ids.device, torch.long)
        self.rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # original index of each row
        self.target_cache = new_cache()
        self.draft_cache = new_cache()
        self.target_len = 0  # columns the target cache holds
        self.draft_len = 0  # columns the draft cache holds
        self.padded = bool((self.mask == 0).any())  # unpadded batches skip masks and positions (the fast path)

    @property
    def size(self) -> int:
        """Rows still generating."""
        return int(self.rows.shape[0])

    @staticmethod
    def positions(mask: torch.Tensor, start: int) -> torch.Tensor:
        """Position ids of the columns from `start` on, counted over the unmasked columns of each row."""
        return (mask.cumsum(-1) - 1).clamp_min(0)[:, start:]

    def advance(
        self, appended: list[list[int]], num_accepted: torch.Tensor, finished: list[bool], pad_token_id: int
    ) -> None:
        """Appends each row's new tokens, drops the rows that finished and re-aligns the others (sequences, masks,
        both caches) so each stays right-aligned and contiguous.

        Args:
            appended: per row, the tokens the step appended (the accepted drafts and the target's own token).
            num_accepted (`torch.LongTensor` of shape `(rows,)`): drafted tokens each row accepted.
            finished: per row, whether it ended at this step.
            pad_token_id: the id written into padding.
        """
        keep = [b for b, done in enumerate(finished) if not done]
        if not keep:
            self.rows = self.rows[:0]
            return
        length = self.ids.shape[1]
        device = self.ids.device
        if len(keep) < self.size:
            index = torch.tensor(keep, device=device)
            self.ids, self.mask, self.rows = self.ids[index], self.mask[index], self.rows[index]
            num_accepted = num_accepted[index]
            select_rows(self.target_cache, index)
            select_rows(self.draft_cache, index)
            appended = [appended[b] for b in keep]
        lengths = [len(a) for a in appended]
        most = min_count = lengths[0]
        for count in lengths:
            most, min_count = max(most, count), min(min_count, count)
        if most == min_count:  # every row advanced alike (always for one row): append and crop, no shifting
            new = torch.tensor(appended, dtype=self.ids.dtype, device=device)
            self.ids = torch.cat((self.ids, new), 1)
            self.mask = torch.cat((self.mask, torch.ones_like(new, dtype=self.mask.dtype)), 1)
            new_length = length + most - 1
            crop(self.target_cache, new_length)
            self.target_len = new_length
            if self.draft_len:
                self.draft_len = min(self.draft_len, length + int(num_accepted.min()), new_length)
                crop(self.draft_cache, self.draft_len)
            self._drop_padding()
            return
        counts = torch.tensor(lengths, device=device)
        shifts = most - counts
        new = torch.full((len(keep), most), pad_token_id, dtype=self.ids.dtype, device=device)
        new_mask = torch.zeros((len(keep), most), dtype=self.mask.dtype, device=device)
        for b, tokens in enumerate(appended):
            new[b, : len(tokens)] = torch.tensor(tokens, dtype=self.ids.dtype, device=device)
            new_mask[b, : len(tokens)] = 1
        index = shift_index(shifts, length + most)
        ids = torch.cat((self.ids, new), 1).gather(1, index)
        mask = torch.cat((self.mask, new_mask), 1).gather(1, index)
        columns = torch.arange(length + most, device=device)[None, :]
        left = columns < shifts[:, None]
        self.ids = torch.where(left, pad_token_id, ids)
        self.mask = torch.where(left, 0, mask)
        # The target cache holds each row's last token and accepted drafts; the draft cache at most that.
        new_length = length + most - 1
        shift_rows(self.target_cache, shifts, new_length)
        self.target_len = new_length
        draft_ends = torch.clamp(length + num_accepted, max=self.draft_len) + shifts
        draft_len = min(int(draft_ends.min()), new_length)
        if self.draft_len:
            shift_rows(self.draft_cache, shifts, draft_len)
        self.draft_len = draft_len if self.draft_len else 0
        self.padded = True
        self._drop_padding()

    def _drop_padding(self) -> None:
        """Cuts the columns every remaining row pads (left behind by finished rows)."""
        if not self.padded:
            return
        lengths = self.mask.sum(-1)
        columns = min(int(self.ids.shape[1] - lengths.max()), self.target_len, self.draft_len or self.target_len)
        if columns <= 0:
            return
        self.ids, self.mask = self.ids[:, columns:], self.mask[:, columns:]
        drop_leading(self.target_cache, columns)
        self.target_len -= columns
        if self.draft_len:
            drop_leading(self.draft_cache, columns)
            self.draft_len -= columns
        self.padded = bool((self.mask == 0).any())
