"""Cache bookkeeping: per-row shifts, row selection and padding cuts act on every layer as on a plain tensor."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from speckv_hf.decoding import kv_cache


def _cache(batch: int, length: int, layers: int = 2, seed: int = 0) -> tuple[DynamicCache, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    keys = []
    for layer in range(layers):
        key = torch.randn((batch, 2, length, 4), generator=generator)
        cache.update(key, key + 1, layer)
        keys.append(key)
    return cache, keys


@settings(max_examples=40, deadline=None)
@given(
    shifts=st.lists(st.integers(0, 4), min_size=1, max_size=6),
    length=st.integers(5, 12),
    cut=st.integers(0, 4),
)
def test_shift_rows_moves_each_row_right(shifts, length, cut):
    cache, keys = _cache(len(shifts), length)
    keep = length - cut + min(shifts)  # what the loop keeps: at most the length plus the smallest shift
    keep = min(keep, length)
    kv_cache.shift_rows(cache, torch.tensor(shifts), keep)
    assert kv_cache.cache_length(cache) == keep
    for layer, key in zip(cache.layers, keys, strict=True):
        for row, shift in enumerate(shifts):
            if shift >= keep:
                continue  # only padding left in the row
            moved = key[row, :, : keep - shift]
            assert torch.equal(layer.keys[row, :, shift:keep], moved)
            assert torch.equal(layer.values[row, :, shift:keep], moved + 1)


def test_select_rows_and_drop_leading():
    cache, keys = _cache(3, 6)
    kv_cache.select_rows(cache, torch.tensor([2, 0]))
    kv_cache.drop_leading(cache, 2)
    assert kv_cache.cache_length(cache) == 4
    assert torch.equal(cache.layers[0].keys, keys[0][[2, 0], :, 2:])
    kv_cache.crop(cache, 3)
    assert torch.equal(cache.layers[1].values, keys[1][[2, 0], :, 2:5] + 1)


def test_check_cache_names_the_cache_it_cannot_edit():
    kv_cache.check_cache(_cache(1, 3)[0])
    with pytest.raises(TypeError, match="DynamicCache of key/value layers, got object"):
        kv_cache.check_cache(object())


def test_layout_positions_skip_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert kv_cache.RowLayout.positions(mask, 2).tolist() == [[0, 1, 2], [2, 3, 4]]
