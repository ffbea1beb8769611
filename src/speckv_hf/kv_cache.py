"""Cache bookkeeping for the batched loop: one layout for the sequences, the masks and both KV caches.

A batch keeps every row right-aligned: row `b` occupies the last columns of the `(batch, length)` tensors, with
padding (attention mask 0) on the left. Positions come from the mask (`cumsum - 1`), so padding never shifts them.
When rows accept different numbers of drafted tokens, the rows that accepted fewer are shifted right by the
difference, on the sequences, the masks and the caches alike ([`shift_rows`]); the rejected slots fall off the
end and the shorter rows gain left padding. So there are never holes inside a row: attention, positions and
sliding windows (which transformers applies by cache index) see exactly what target-alone generation sees.

Rows that finish are dropped from the batch ([`select_rows`]) and columns that every remaining row pads are cut
([`drop_leading`]), so finished rows stop costing work.

The KV caches are transformers' `DynamicCache` with full-attention layers, built here: cache layers are read
through `cache.layers[i].keys` / `.values` (transformers >= 4.56); [`check_cache`] refuses anything else with a
clear error before a call starts.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

__all__ = [
    "cache_kwarg",
    "cache_length",
    "check_cache",
    "crop",
    "drop_leading",
    "new_cache",
    "select_rows",
    "shift_rows",
]


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name under which `model.forward` takes a KV cache: `cache` where transformers renamed it (5.x releases
    that deprecate `past_key_values`), `past_key_values` before.

    Args:
        model: a transformers model.

    Returns:
        The keyword argument name.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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
            "models with recurrent or other cache layers are not supported; generate them one prompt at a time."
        )


def cache_length(cache: DynamicCache) -> int:
    """Columns the cache holds (0 before the first forward)."""
    layers = getattr(cache, "layers", None)
    if not layers or getattr(layers[0], "keys", None) is None or layers[0].keys.dim() < 3:
        return 0
    return int(layers[0].keys.shape[-2])


def _edit(cache: DynamicCache, edit) -> None:
    for layer in cache.layers:
        if isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.dim() == 4:
            layer.keys = edit(layer.keys)
            layer.values = edit(layer.values)


def crop(cache: DynamicCache, length: int) -> None:
    """Keeps the first `length` columns of every layer."""
    if cache_length(cache) > length:
        _edit(cache, lambda t: t[:, :, :length])


def select_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keeps the rows `rows` (`torch.LongTensor` of shape `(kept,)`), in that order."""
    if cache_length(cache):
        _edit(cache, lambda t: t.index_select(0, rows.to(t.device)))


def drop_leading(cache: DynamicCache, columns: int) -> None:
    """Cuts the first `columns` columns of every layer (padding every row shares)."""
    if columns > 0 and cache_length(cache):
        _edit(cache, lambda t: t[:, :, columns:])


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
    moves = [(row, shift) for row, shift in enumerate(shifts.tolist()) if shift > 0]

    def edit(tensor: torch.Tensor) -> torch.Tensor:
        # One slice copy per moved row: a gather would need an index as large as the cache itself.
        out = tensor[:, :, :length]
        for row, shift in moves:
            out[row, :, shift:] = tensor[row, :, : length - shift].clone()
        return out

    _edit(cache, edit)
