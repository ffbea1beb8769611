"""The context's prediction of the next token (`NgramIndex`) and how it reaches the signals and records."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from speckv_hf import SpecKVGenerator
from speckv_hf.core.cost import CostModel
from speckv_hf.core.ngram import NgramIndex


def brute_force(sequence: list[int], verified: int | None = None) -> int | None:
    """The token after the most recent earlier occurrence of the sequence's last two tokens, among the occurrences
    whose following token lies within the first `verified` tokens (all by default)."""
    verified = len(sequence) if verified is None else verified
    if len(sequence) < 3:
        return None
    key = (sequence[-2], sequence[-1])
    for k in range(len(sequence) - 3, -1, -1):
        if k + 2 < verified and (sequence[k], sequence[k + 1]) == key:
            return sequence[k + 2]
    return None


@given(st.lists(st.integers(0, 4), max_size=40), st.integers(0, 40))
def test_lookup_matches_a_backwards_scan(tokens: list[int], split: int) -> None:
    index = NgramIndex(tokens[:split])
    index.extend(tokens[split:])
    assert index.lookup(*index.tail) == brute_force(tokens)
    assert len(index) == len(set(itertools.pairwise(tokens[:-1])))
    assert index.tail == ((tokens[-2] if len(tokens) > 1 else None), (tokens[-1] if tokens else None))


def test_lookup_of_drafted_tokens_uses_the_verified_index() -> None:
    index = NgramIndex([5, 6, 7, 1, 5, 6])
    assert index.lookup(5, 6) == 7  # "5 6" was followed by 7
    assert index.lookup(6, 9) is None
    assert index.lookup(None, 5) is None


def test_generator_records_what_the_context_predicts(llama_pairs) -> None:
    target, draft = llama_pairs["llama-noisy"]
    # A prompt that repeats itself, so the context predicts most positions.
    ids = torch.tensor([[3, 9, 4, 7, 8, 11] * 5])
    generator = SpecKVGenerator("fixed:4")
    out = target.generate(
        ids, assistant_model=draft, candidate_generator=generator, max_new_tokens=24, do_sample=False
    )
    output = out[0].tolist()
    start, checked, found = ids.shape[1], 0, 0
    for step in generator.last_stats.steps:
        for token in step.tokens[: step.accepted]:  # accepted tokens are the output's: their ids are known
            m = start + token.position
            prediction = brute_force(output[:m], verified=start)
            assert token.ngram_found == (prediction is not None)
            assert token.ngram_agrees == (prediction is not None and prediction == output[m])
            checked, found = checked + 1, found + token.ngram_found
        start += step.tokens_produced
    assert checked >= 4 and found >= 1


def test_long_run_throughput_ignores_one_stalled_step() -> None:
    cost = CostModel()
    for _ in range(15):
        cost.observe_step(3, 0.010)
    assert cost.throughput is None  # fewer than 16 steps
    cost.observe_step(3, 0.010)
    assert cost.throughput == 300.0
    cost.observe_step(3, 5.0)  # a stall 500x longer counts as 3x the median step
    assert cost.throughput == pytest.approx(51 / (16 * 0.010 + 3 * 0.010))
